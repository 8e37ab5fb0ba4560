"""The committed viewer bundle (static/viewer/viewer.js) is built from the committed sources:
frontend/build.mjs writes the hash of its inputs (build.mjs, package.json, package-lock.json,
src/) into static/viewer/BUILD_INFO.json; a source or lockfile change without `npm ci && npm
run build` fails here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
BUNDLE = ROOT / "static" / "viewer"


def source_hash() -> tuple[str, list[str]]:
    """The hash build.mjs computes: each input's path, NUL, bytes, NUL, in path order."""
    inputs = ["build.mjs", "package.json", "package-lock.json"] + [
        p.relative_to(FRONTEND).as_posix() for p in (FRONTEND / "src").rglob("*") if p.is_file()
    ]
    inputs.sort()
    h = hashlib.sha256()
    for rel in inputs:
        h.update(rel.encode() + b"\0")
        h.update((FRONTEND / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest(), inputs


def build_info() -> dict:
    return json.loads((BUNDLE / "BUILD_INFO.json").read_text())


def test_the_committed_bundle_was_built_from_the_committed_sources():
    digest, inputs = source_hash()
    info = build_info()
    assert info["inputs"] == inputs
    assert info["source_sha256"] == digest, (
        "static/viewer/viewer.js is older than frontend/: run `cd frontend && npm ci && "
        "npm run build` and commit static/viewer/"
    )
    assert (BUNDLE / "viewer.js").stat().st_size == info["bundle_bytes"]


def test_the_bundle_pins_the_cornerstone_versions_of_the_lockfile():
    lock = json.loads((FRONTEND / "package-lock.json").read_text())
    versions = build_info()["versions"]
    for name in ("@cornerstonejs/core", "@cornerstonejs/tools"):
        assert versions[name] == lock["packages"][f"node_modules/{name}"]["version"]
    package = json.loads((FRONTEND / "package.json").read_text())
    # Exact versions in package.json too: `npm install` cannot drift from the lockfile.
    assert all(v[0].isdigit() for v in package["dependencies"].values())


def test_the_review_viewer_template_loads_the_bundle_and_its_stylesheet():
    html = (ROOT / "templates" / "retrieval" / "_review_viewer.html").read_text()
    assert "{% static 'viewer/viewer.js' %}" in html
    assert "{% static 'viewer/viewer.css' %}" in html
    assert (BUNDLE / "viewer.css").exists()
