"""Stored files are reached by the id of their row only (cases/api/files.py): a traversal table
of crafted paths gets nothing, every user other than those who may see the study gets 404, and
storage keys are made of row ids, never of strings from the uploaded DICOM."""

from __future__ import annotations

import http.client
import io
import re
from urllib.parse import urlparse

import numpy as np
import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import InMemoryStorage, default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from cases.models import Series, Slice, Study, series_dicom_dir
from cases.services.ingestion import IngestionError, study_import_uploads
from retrieval.models import ModelVersion, SimilarCase, StudyResult
from tests.dicomgen import ct_series_write
from tests.factories import ReferenceCaseFactory, SliceFactory, UserFactory
from tests.wsgi_server import site_server

pytestmark = pytest.mark.django_db


def npy(value: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full((8, 8), value, dtype=np.int16), allow_pickle=False)
    return buf.getvalue()


def _owned(user, *, tag: str) -> dict:
    """A study of `user` with one slice (pixels + DICOM copy) and a result whose overlays,
    like every stored byte of it, carry `tag` so that a leak is recognisable."""
    slice_ = SliceFactory(
        series__study__uploaded_by=user,
        pixels=ContentFile(npy(1000 + len(tag)) + tag.encode(), name="0000.npy"),
    )
    series = slice_.series
    series.dicom_dir = series_dicom_dir(series=series)
    series.save(update_fields=["dicom_dir"])
    dicom_key = f"{series.dicom_dir}/{slice_.index:04d}.dcm"
    default_storage.save(dicom_key, ContentFile(f"DICM {tag}".encode()))
    reference = ReferenceCaseFactory(state="approved")
    version, _ = ModelVersion.objects.get_or_create(
        name="v1", defaults={"artefact_dir": "x", "backbone": "b"}
    )
    result = StudyResult.objects.create(study=series.study, model_version=version)
    case = SimilarCase(
        result=result,
        rank=1,
        reference_case=reference,
        score=0.9,
        query_slice=slice_,
        reference_slice=SliceFactory(series__study=reference.study),
    )
    case.query_cam.save("q.png", ContentFile(f"PNG query {tag}".encode()), save=False)
    case.reference_cam.save("r.png", ContentFile(f"PNG reference {tag}".encode()), save=False)
    case.save()
    # An old-layout file (UID-named keys of earlier versions) that the old route served.
    legacy = f"slices/{series.series_instance_uid}/0000.npy"
    default_storage.save(legacy, ContentFile(f"LEGACY {tag}".encode()))
    return {
        "slice": slice_.pk,
        "case": case.pk,
        "series_uid": series.series_instance_uid,
        "study_uid": series.study.study_instance_uid,
        "key": slice_.pixels.name,
        "abs": str(default_storage.path(slice_.pixels.name)),
        "tag": tag,
    }


@pytest.fixture
def world(clinician, other_clinician):
    return {
        "alice": clinician,
        "bob": other_clinician,
        "norole": UserFactory(username="norole"),
        "own": _owned(clinician, tag="ALICE-SECRET"),
        "other": _owned(other_clinician, tag="BOB-SECRET"),
    }


# Each row: a crafted URL (placeholders: {own}/{other} slice ids, {own_case}/{other_case}
# similar-case ids, {own_uid}/{other_uid} SeriesInstanceUIDs, {other_study_uid}, {own_key}/
# {other_key} storage keys, {other_abs} the file's absolute path on disk). None of them may
# return a file to anyone: the old route is gone, and the new routes match digits only.
TRAVERSAL = {
    "old route, encoded dot-dot (the reported attack)": (
        "/media/slices/{own_uid}/%2e%2e/{other_uid}/0000.npy"
    ),
    "old route, literal dot-dot": "/media/slices/{own_uid}/../{other_uid}/0000.npy",
    "old route, results dot-dot": "/media/results/{own_study}/%2e%2e/{other_study}/1/x.png",
    "old route, dicom dot-dot": "/media/dicom/{own_study_uid}/%2e%2e/{other_study_uid}/0000.dcm",
    "old route, other's key": "/media/{other_key}",
    "old route, own key": "/media/{own_key}",
    "old route, legacy UID key": "/media/slices/{other_uid}/0000.npy",
    "encoded dot-dot after own id": "/api/files/slices/{own}/%2e%2e/{other}.npy",
    "literal dot-dot after own id": "/api/files/slices/{own}/../{other}.npy",
    "mixed-case encoded dot-dot": "/api/files/slices/{own}/%2E%2e/{other}.npy",
    "encoded slash": "/api/files/slices/{own}%2f..%2f{other}.npy",
    "encoded slash, upper case": "/api/files/slices/{own}%2F..%2F{other}.npy",
    "double-encoded slash": "/api/files/slices/{own}%252f..%252f{other}.npy",
    "double-encoded dot-dot": "/api/files/slices/{own}/%252e%252e/{other}.npy",
    "encoded backslash": "/api/files/slices/{own}%5c..%5c{other}.npy",
    "double-encoded backslash": "/api/files/slices/{own}%255c..%255c{other}.npy",
    "backslash before key": "/api/files/slices/..%5c..%5c{other_key}",
    "overlong UTF-8 dots": "/api/files/slices/{own}/%c0%ae%c0%ae/{other}.npy",
    "absolute path": "/api/files/slices/{other_abs}",
    "encoded absolute path": "/api/files/slices/%2f{other_key}",
    "etc/passwd": "/api/files/slices/%2fetc%2fpasswd",
    "storage key instead of id": "/api/files/slices/{other_key}",
    "null byte after id": "/api/files/slices/{other}.npy%00",
    "null byte between ids": "/api/files/slices/{own}%00{other}.npy",
    "null byte before suffix": "/api/files/slices/{other}%00.npy",
    "id with sign": "/api/files/slices/+{other}.npy",
    "id with decimals": "/api/files/slices/{other}.0.npy",
    "id beyond 64 bits": "/api/files/slices/99999999999999999999999999.npy",
    "negative id": "/api/files/slices/-{other}.npy",
    "trailing slash": "/api/files/slices/{other}.npy/",
    "upper-case suffix": "/api/files/slices/{other}.NPY",
    "other user's slice pixels": "/api/files/slices/{other}.npy",
    "other user's slice, leading zeros": "/api/files/slices/000{other}.npy",
    "other user's DICOM copy": "/api/files/slices/{other}.dcm",
    "other user's query overlay": "/api/files/similar-cases/{other_case}/query.png",
    "other user's reference overlay": "/api/files/similar-cases/{other_case}/reference.png",
    "overlay side traversal": "/api/files/similar-cases/{own_case}/..%2f..%2fslices%2f{other}.png",
    "overlay side as key": "/api/files/similar-cases/{own_case}/{other_key}",
    "overlay of an unknown id": "/api/files/similar-cases/987654321/query.png",
    "files root": "/api/files/",
    "dot-dot out of the API": "/api/files/%2e%2e/%2e%2e/media/{other_key}",
}


def fill(template: str, world: dict) -> str:
    own, other = world["own"], world["other"]
    return template.format(
        own=own["slice"],
        other=other["slice"],
        own_case=own["case"],
        other_case=other["case"],
        own_uid=own["series_uid"],
        other_uid=other["series_uid"],
        own_study_uid=own["study_uid"],
        other_study_uid=other["study_uid"],
        own_study=Slice.objects.get(pk=own["slice"]).series.study_id,
        other_study=Slice.objects.get(pk=other["slice"]).series.study_id,
        own_key=own["key"],
        other_key=other["key"],
        other_abs=other["abs"].lstrip("/"),
    )


def content(response) -> bytes:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content


@pytest.mark.parametrize("user", ["alice", "norole"])
@pytest.mark.parametrize("template", TRAVERSAL.values(), ids=TRAVERSAL.keys())
def test_crafted_paths_get_404_and_no_bytes(client, world, template, user):
    client.force_login(world[user])
    response = client.get(fill(template, world))
    assert response.status_code == 404
    body = content(response)
    assert b"BOB-SECRET" not in body and b"ALICE-SECRET" not in body


@pytest.mark.parametrize("template", TRAVERSAL.values(), ids=TRAVERSAL.keys())
def test_crafted_paths_give_anonymous_visitors_nothing(client, world, template):
    url = fill(template, world)
    response = client.get(url)
    if url.startswith("/api/"):
        # The API answers for itself: 403 on a route, 404 off any route.
        assert response.status_code in (403, 404)
    else:
        assert response.status_code == 302
        assert urlparse(response["Location"]).path == reverse(settings.LOGIN_URL)
    body = content(response)
    assert b"BOB-SECRET" not in body and b"ALICE-SECRET" not in body


@pytest.fixture
def app_server(transactional_db):
    """The site's WSGI application alone behind a real socket, as a deployment serves it
    (pytest-django's `live_server` also serves MEDIA_ROOT by itself, which no deployment does:
    that test harness would answer /media/ with any file)."""
    with site_server() as port:
        yield port


def raw_get(port: int, path: str, cookie: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (no client-side normalisation or re-encoding)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Cookie", cookie)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_crafted_paths_get_nothing_from_a_real_server(app_server, client, world):
    """The same table over a socket: the server, not the test client, decodes the path."""
    client.force_login(world["alice"])
    name = settings.SESSION_COOKIE_NAME
    cookie = f"{name}={client.cookies[name].value}"
    seen = {}
    for label, template in TRAVERSAL.items():
        status, body = raw_get(app_server, fill(template, world), cookie)
        seen[label] = status
        assert b"BOB-SECRET" not in body and b"ALICE-SECRET" not in body, label
    assert set(seen.values()) <= {400, 404}, seen
    # The session is good: the owner's own file comes back over the same socket.
    own = reverse("api-file-slice-npy", args=[world["own"]["slice"]])
    status, body = raw_get(app_server, own, cookie)
    assert status == 200 and b"ALICE-SECRET" in body


OWN_FILES = {
    "slice pixels": ("api-file-slice-npy", "slice", (), b"\x93NUMPY", "application/octet-stream"),
    "DICOM copy": ("api-file-slice-dcm", "slice", (), b"DICM ALICE-SECRET", "application/dicom"),
    "query overlay": ("api-file-similar-case-cam", "case", ("query",), b"PNG query", "image/png"),
    "reference overlay": (
        "api-file-similar-case-cam",
        "case",
        ("reference",),
        b"PNG reference",
        "image/png",
    ),
}


@pytest.mark.parametrize("name,key,extra,start,mime", OWN_FILES.values(), ids=OWN_FILES.keys())
def test_the_owner_gets_the_right_bytes_and_others_404(
    client, world, name, key, extra, start, mime
):
    url = reverse(name, args=[world["own"][key], *extra])
    client.force_login(world["alice"])
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == mime
    body = content(response)
    assert body.startswith(start)
    if key == "slice" and name.endswith("npy"):
        with default_storage.open(world["own"]["key"], "rb") as fh:
            assert body == fh.read()
    assert b"BOB-SECRET" not in body
    for user in ("bob", "norole"):
        client.force_login(world[user])
        assert client.get(url).status_code == 404, user
    client.logout()
    assert client.get(url).status_code == 403


def test_query_parameters_name_no_file(client, world):
    url = reverse("api-file-slice-npy", args=[world["own"]["slice"]])
    client.force_login(world["alice"])
    response = client.get(url, {"path": f"../../{world['other']['key']}", "name": "x"})
    assert response.status_code == 200
    assert b"BOB-SECRET" not in content(response)


# ---------------------------------------------------------------- storage keys


ID_KEY = re.compile(r"^studies/\d+/series/\d+/(hu/\d{4}\.npy|dicom/\d{4}\.dcm)$")


def _all_keys(folder: str = "") -> list[str]:
    dirs, files = default_storage.listdir(folder)
    keys = [f"{folder}/{f}".lstrip("/") for f in files]
    for d in dirs:
        keys.extend(_all_keys(f"{folder}/{d}".lstrip("/")))
    return keys


def _upload(folder, user):
    files = [
        SimpleUploadedFile(p.name, p.read_bytes(), content_type="application/dicom")
        for p in sorted(folder.iterdir())
    ]
    return study_import_uploads(files=files, uploader=user)


def test_stored_keys_are_made_of_row_ids_and_name_no_dicom_uid(tmp_path):
    user = UserFactory(role="Clinician")
    generated = ct_series_write(folder=tmp_path / "in", slices=3)
    [study] = _upload(tmp_path / "in", user).studies

    keys = _all_keys()
    assert len(keys) == 6  # 3 HU arrays + 3 DICOM copies
    assert all(ID_KEY.match(k) for k in keys), keys
    series = Series.objects.get(study=study)
    assert {k.split("/")[1] for k in keys} == {str(study.pk)}
    assert {k.split("/")[3] for k in keys} == {str(series.pk)}
    uids = {generated.study_uid, generated.series_uid, *generated.sop_uids}
    uids |= {study.study_instance_uid, series.series_instance_uid}
    uids |= set(series.slices.values_list("sop_instance_uid", flat=True))
    for key in keys:
        assert not any(uid in key for uid in uids), key


@pytest.mark.parametrize("which", ["source", "stored"])
@pytest.mark.parametrize("suffix", ["/.", "/../x", "/"])
def test_an_upload_whose_uids_name_another_studys_folder_changes_none_of_its_files(
    tmp_path, suffix, which
):
    """The reported overwrite: UIDs "<victim UID>/." used to name the victim's folders. The
    victim's UIDs as in its DICOM files, or as stored (they may be remapped), make no
    difference: keys come from the attacker's own new rows (or the upload is refused)."""
    victim, attacker = UserFactory(role="Clinician"), UserFactory(role="Clinician")
    v = ct_series_write(folder=tmp_path / "v", slices=2, seed=1)
    [victim_study] = _upload(tmp_path / "v", victim).studies
    before = {}
    for key in _all_keys():
        with default_storage.open(key, "rb") as fh:
            before[key] = fh.read()
    assert len(before) == 4

    stored_series = Series.objects.get(study=victim_study)
    study_uid, series_uid = (
        (v.study_uid, v.series_uid)
        if which == "source"
        else (victim_study.study_instance_uid, stored_series.series_instance_uid)
    )
    ct_series_write(
        folder=tmp_path / "a",
        slices=2,
        seed=2,
        study_uid=study_uid + suffix,
        series_uid=series_uid + suffix,
    )
    try:
        _upload(tmp_path / "a", attacker)
    except IngestionError:
        pass  # refused (UID grammar) is as good as stored apart
    for key, data in before.items():
        with default_storage.open(key, "rb") as fh:
            assert fh.read() == data, key
    assert Study.objects.filter(uploaded_by=victim).count() == 1


def test_files_are_written_and_served_through_the_storage_api_alone(settings, tmp_path, client):
    """With a storage that has no filesystem at all (as S3 has none that the app could use),
    an upload stores its files and every file view serves them; MEDIA_ROOT stays empty."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    }
    settings.MEDIA_ROOT = str(tmp_path / "unused-media")
    assert isinstance(default_storage, InMemoryStorage)
    user = UserFactory(role="Clinician")
    ct_series_write(folder=tmp_path / "in", slices=2)
    [study] = _upload(tmp_path / "in", user).studies
    client.force_login(user)

    for slice_ in Slice.objects.filter(series__study=study):
        assert default_storage.exists(slice_.pixels.name)
        pixels = client.get(reverse("api-file-slice-npy", args=[slice_.pk]))
        assert content(pixels).startswith(b"\x93NUMPY")
        dicom = client.get(reverse("api-file-slice-dcm", args=[slice_.pk]))
        assert content(dicom)[128:132] == b"DICM"
        png = client.get(reverse("cases:slice_png", args=[slice_.pk]))
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert not (tmp_path / "unused-media").exists()
