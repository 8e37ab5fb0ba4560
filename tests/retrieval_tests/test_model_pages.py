"""The model version pages: who may see them, and the evaluation report served from the
version's report folder only."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from retrieval.engine.report import write_report
from retrieval.models import ModelVersion
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _report() -> dict:
    row = {
        "macro_f1": 0.75,
        "accuracy": 0.8,
        "map_at_10": 0.7,
        "precision_at_10": 0.65,
        "recall_at_k": {"1": 0.8, "8": 1.0},
    }
    return {
        **row,
        "per_class": {
            "normal": {"precision": 0.9, "recall": 0.7, "f1": 0.7875, "support": 10},
            "ipf": {"precision": 0.6, "recall": 0.8, "f1": 0.6857, "support": 5},
        },
        "labels": ["ipf", "normal"],
        "confusion_matrix": [[4, 1], [3, 7]],
        "headline": "fused_contrastive",
        "ablation": {"fused_contrastive": row},
        "meta": {"folds": 1},
    }


@pytest.fixture
def report_version(tmp_path) -> ModelVersion:
    """A version whose report folder was written by the engine (HTML, JSON, PNG), with a
    secret file beside the folder that must never be served."""
    folder = tmp_path / "reports" / "v1"
    write_report(_report(), folder)
    (tmp_path / "reports" / "secret.json").write_text('{"secret": "outside"}')
    (folder / "notes.py").write_text("SECRET = 'not a report file type'")
    (folder / "escape.json").symlink_to(tmp_path / "reports" / "secret.json")
    return ModelVersion.objects.create(
        name="v1",
        artefact_dir=str(tmp_path / "artefact"),
        backbone="efficientnet_lite0",
        metrics={"macro_f1": 0.75, "final_loss": 0.1},
        config={"epochs": 3, "fusion": "ildffn"},
        report_dir=str(folder),
        is_active=True,
    )


def test_experts_and_admins_see_the_model_list_with_the_active_version_marked(
    client, expert, report_version
):
    inactive = ModelVersion.objects.create(name="v0", artefact_dir="x", backbone="resnet50")
    for user in (expert, UserFactory(role="Admin")):
        client.force_login(user)
        response = client.get(reverse("retrieval:model_list"))
        assert response.status_code == 200
        page = response.content.decode()
        active_row = page[page.index(f'id="model-{report_version.pk}"') :]
        inactive_row = page[page.index(f'id="model-{inactive.pk}"') :]
        assert active_row.split("</tr>")[0].count('class="active-mark"') == 1
        assert 'class="active-mark"' not in inactive_row.split("</tr>")[0]
        assert "macro F1 0.750" in page
        assert reverse("retrieval:model_list") in page  # the nav link


def test_clinicians_get_403_on_every_model_page(client, report_version):
    client.force_login(UserFactory(role="Clinician"))
    urls = [
        reverse("retrieval:model_list"),
        reverse("retrieval:model_detail", args=[report_version.pk]),
        reverse("retrieval:model_report_file", args=[report_version.pk, "report.html"]),
    ]
    for url in urls:
        assert client.get(url).status_code == 403, url
    worklist = client.get(reverse("cases:worklist")).content.decode()
    assert reverse("retrieval:model_list") not in worklist  # no nav link either


def test_detail_page_shows_config_metrics_and_frames_the_html_report(
    client, expert, report_version
):
    client.force_login(expert)
    response = client.get(reverse("retrieval:model_detail", args=[report_version.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    report_url = reverse("retrieval:model_report_file", args=[report_version.pk, "report.html"])
    assert f'src="{report_url}"' in page
    assert "fusion" in page and "ildffn" in page and "final_loss" in page


def test_report_html_and_its_images_are_served_with_a_restrictive_policy(
    client, expert, report_version
):
    client.force_login(expert)
    html = client.get(
        reverse("retrieval:model_report_file", args=[report_version.pk, "report.html"])
    )
    assert html.status_code == 200
    assert html["Content-Type"].startswith("text/html")
    assert "sandbox" in html["Content-Security-Policy"]
    assert html["X-Frame-Options"] == "SAMEORIGIN"  # the detail page frames it
    assert b"Retrieval evaluation" in b"".join(html.streaming_content)
    png = client.get(
        reverse("retrieval:model_report_file", args=[report_version.pk, "confusion_matrix.png"])
    )
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert b"".join(png.streaming_content).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "name",
    [
        "../secret.json",
        "..%2Fsecret.json",
        "%2E%2E/secret.json",
        "sub/../../secret.json",
        "escape.json",  # a symlink out of the folder
        "notes.py",  # inside, but not a report file type
        "%2Fetc%2Fpasswd",
        "missing.html",
    ],
)
def test_report_files_outside_the_folder_or_of_other_types_are_refused(
    client, expert, report_version, name
):
    client.force_login(expert)
    url = f"/retrieval/models/{report_version.pk}/report/{name}"
    response = client.get(url)
    assert response.status_code == 404, url
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert b"outside" not in body and b"SECRET" not in body and b"root:" not in body


def test_a_version_without_an_html_report_shows_its_report_json_as_tables(
    client, expert, report_version, tmp_path
):
    folder = tmp_path / "json-only"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps(_report()))
    version = ModelVersion.objects.create(
        name="json-only", artefact_dir="x", backbone="resnet50", report_dir=str(folder)
    )
    client.force_login(expert)
    page = client.get(reverse("retrieval:model_detail", args=[version.pk])).content.decode()
    assert 'data-testid="report-per-class"' in page
    assert "<th>normal</th><td>0.900</td><td>0.700</td><td>0.787</td><td>10</td>" in page
    assert "<iframe" not in page


def test_a_version_without_report_folder_says_so_and_serves_no_file(client, expert):
    version = ModelVersion.objects.create(name="bare", artefact_dir="x", backbone="resnet50")
    client.force_login(expert)
    page = client.get(reverse("retrieval:model_detail", args=[version.pk])).content.decode()
    assert "No evaluation report" in page
    url = reverse("retrieval:model_report_file", args=[version.pk, "report.html"])
    assert client.get(url).status_code == 404
    assert client.get(reverse("retrieval:model_detail", args=[version.pk + 999])).status_code == 404
