"""The admin of model versions and training runs: activation re-embeds the library in the
background, training is launched from the admin and ends with a registered inactive version."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from cases.models import ReferenceCase
from retrieval.models import ModelVersion, ReferenceEmbedding, TrainingRun
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = pytest.mark.django_db


def _activate(client, version: ModelVersion):
    return client.post(
        reverse("admin:retrieval_modelversion_changelist"),
        {"action": "activate_selected", "_selected_action": [version.pk]},
        follow=True,
    )


def test_admin_activation_re_embeds_the_library_in_the_background_before_switching(
    client, admin_user, library, active_version, tiny_artefact, django_capture_on_commit_callbacks
):
    new = ModelVersion.objects.create(
        name="tiny-2", artefact_dir=str(tiny_artefact), backbone="efficientnet_lite0"
    )
    client.force_login(admin_user)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _activate(client, new)

    # The request only queued the task: the old version still answers, nothing embedded yet.
    assert response.status_code == 200
    assert "in the background" in response.content.decode()
    assert len(callbacks) == 1
    active_version.refresh_from_db()
    new.refresh_from_db()
    assert active_version.is_active and not new.is_active
    assert not ReferenceEmbedding.objects.filter(model_version=new).exists()

    callbacks[0]()  # the commit publishes the task; Celery runs it eagerly in tests

    active_version.refresh_from_db()
    new.refresh_from_db()
    assert new.is_active and not active_version.is_active
    approved = set(
        ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).values_list(
            "pk", flat=True
        )
    )
    embedded = set(
        ReferenceEmbedding.objects.filter(model_version=new).values_list(
            "reference_case_id", flat=True
        )
    )
    assert approved and embedded == approved


def test_admin_activation_of_the_active_version_queues_nothing(
    client, admin_user, active_version, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _activate(client, active_version)
    assert "already active" in response.content.decode()
    assert callbacks == []


def test_model_version_list_shows_macro_f1_and_a_link_to_the_report_page(client, admin_user):
    version = ModelVersion.objects.create(
        name="v-metrics",
        artefact_dir="x",
        backbone="resnet50",
        metrics={"macro_f1": 0.8125},
        report_dir="/somewhere",
    )
    client.force_login(admin_user)
    page = client.get(reverse("admin:retrieval_modelversion_changelist")).content.decode()
    assert "0.812" in page
    assert reverse("retrieval:model_detail", args=[version.pk]) in page


def test_only_admins_may_open_the_training_form(client, experts):
    client.force_login(experts[0])
    response = client.get(reverse("admin:retrieval_trainingrun_train"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert not TrainingRun.objects.exists()


def test_training_form_rejects_an_unknown_backbone_and_queues_nothing(client, admin_user):
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:retrieval_trainingrun_train"),
        {"epochs": 1, "backbone": "vgg16", "weights": "random", "size": SIZE},
    )
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not TrainingRun.objects.exists()


def test_training_run_list_shows_the_progress_bar_and_refreshes_while_running(client, admin_user):
    TrainingRun.objects.create(
        state=TrainingRun.State.RUNNING, progress_percent=40, params={"epochs": 3}
    )
    client.force_login(admin_user)
    page = client.get(reverse("admin:retrieval_trainingrun_changelist")).content.decode()
    assert '<progress max="100" value="40"' in page
    assert 'http-equiv="refresh"' in page
    assert reverse("admin:retrieval_trainingrun_train") in page


@pytest.mark.slow
def test_training_launched_from_the_admin_registers_an_inactive_version_with_its_report(
    client,
    admin_user,
    library,
    active_version,
    settings,
    tmp_path,
    django_capture_on_commit_callbacks,
):
    settings.ILDREVIEW_MODEL_DIR = tmp_path / "models"
    client.force_login(admin_user)
    form = client.get(reverse("admin:retrieval_trainingrun_train"))
    assert form.status_code == 200 and b"Start training" in form.content

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("admin:retrieval_trainingrun_train"),
            {"epochs": 1, "backbone": "efficientnet_lite0", "weights": "random", "size": SIZE},
        )

    assert response.status_code == 302
    run = TrainingRun.objects.get()
    assert run.created_by == admin_user
    assert run.params == {
        "epochs": 1,
        "backbone": "efficientnet_lite0",
        "weights": "random",
        "size": SIZE,
    }
    assert run.state == TrainingRun.State.DONE, run.message
    assert run.progress_percent == 100
    version = run.model_version
    assert version is not None and not version.is_active
    active_version.refresh_from_db()
    assert active_version.is_active  # training never switches the model
    assert version.backbone == "efficientnet_lite0"
    assert version.config["epochs"] == 1 and version.config["size"] == SIZE
    report_dir = Path(version.report_dir)
    assert (report_dir / "report.html").is_file() and (report_dir / "report.json").is_file()
    assert 0.0 <= version.metrics["macro_f1"] <= 1.0
    # The held-out gate's table: frozen backbone, the active version and this one, scored on
    # one held-out patient per class.
    assert set(version.holdout["rows"]) == {"frozen", "active", "this"}
    assert version.holdout["rows"]["active"]["version"] == active_version.name
    assert version.holdout["n_heldout_patients"] == 3
    for row in version.holdout["rows"].values():
        assert 0.0 <= row["macro_f1"] <= 1.0 and 0.0 <= row["map_at_10"] <= 1.0
    # The report page of the new version serves its HTML report.
    page = client.get(reverse("retrieval:model_report_file", args=[version.pk, "report.html"]))
    assert page.status_code == 200 and b"Retrieval evaluation" in b"".join(page.streaming_content)
