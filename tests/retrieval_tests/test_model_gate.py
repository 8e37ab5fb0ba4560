"""A model version must earn activation: the held-out gate's table, the refusal of a worse
version without an override reason, the audit trail, and the bootstrap's frozen fallback."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import call_command

from cases.models import AuditEvent
from retrieval.engine.holdout import gate_verdict, patient_split
from retrieval.models import ModelVersion
from retrieval.services import (
    ModelVersionGateError,
    model_version_activate,
    model_version_gate_check,
)
from tests.factories import diagnosis
from tests.retrieval_tests.pipeline_fixtures import LIBRARY, SIZE


def _table(*, this: float, frozen: float, active: float | None = None, active_name: str = ""):
    rows = {
        "frozen": {"macro_f1": frozen, "accuracy": frozen, "map_at_10": frozen},
        "this": {"macro_f1": this, "accuracy": this, "map_at_10": this},
    }
    if active is not None:
        rows["active"] = {
            "macro_f1": active,
            "accuracy": active,
            "map_at_10": active,
            "version": active_name,
        }
    return {"rows": rows, "n_heldout_slices": 12, "n_heldout_patients": 3}


def _version(name: str, holdout: dict, *, active: bool = False) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name,
        artefact_dir="/nonexistent",
        backbone="efficientnet_lite0",
        holdout=holdout,
        is_active=active,
    )


def test_the_patient_split_holds_whole_patients_out_of_every_class():
    labels = ["A"] * 8 + ["B"] * 8 + ["C"] * 2
    patients = [f"a{i // 2}" for i in range(8)] + [f"b{i // 2}" for i in range(8)] + ["c0", "c0"]

    train, held = patient_split(labels, patients, fraction=0.25, seed=3)

    p = np.asarray(patients)
    assert not set(p[train]) & set(p[held])
    assert sorted(train.tolist() + held.tolist()) == list(range(len(labels)))
    held_labels = {labels[i] for i in held}
    assert held_labels == {"A", "B"}  # C has one patient: it stays in the training part
    with pytest.raises(ValueError, match="two patients"):
        patient_split(["A", "B"], ["p1", "p2"])


def test_gate_verdict_names_every_row_that_beats_the_candidate():
    assert gate_verdict(_table(this=0.8, frozen=0.7, active=0.75)) == []
    reasons = gate_verdict(_table(this=0.6, frozen=0.7, active=0.65))
    assert len(reasons) == 2 and "frozen backbone's 0.700" in reasons[0]


@pytest.mark.django_db
def test_activation_refuses_a_version_worse_than_the_frozen_backbone_without_an_override():
    worse = _version("worse", _table(this=0.61, frozen=0.72))

    with pytest.raises(ModelVersionGateError, match=r"0\.610 .* frozen backbone's 0\.720"):
        model_version_activate(version=worse)

    worse.refresh_from_db()
    assert not worse.is_active
    assert not AuditEvent.objects.filter(verb="model_version.activate").exists()


@pytest.mark.django_db
def test_activation_with_a_written_reason_succeeds_and_the_audit_event_keeps_the_figures(
    admin_user,
):
    worse = _version("worse", _table(this=0.61, frozen=0.72))

    model_version_activate(version=worse, actor=admin_user, override_reason="  needed for a demo ")

    worse.refresh_from_db()
    assert worse.is_active
    event = AuditEvent.objects.get(verb="model_version.activate", object_id=str(worse.pk))
    assert event.actor == admin_user
    assert event.detail["override_reason"] == "needed for a demo"
    assert event.detail["holdout"]["this"]["macro_f1"] == pytest.approx(0.61)
    assert event.detail["holdout"]["frozen"]["macro_f1"] == pytest.approx(0.72)
    assert "frozen backbone" in event.detail["worse_than"][0]


@pytest.mark.django_db
def test_activation_refuses_a_version_worse_than_the_active_one_and_accepts_a_better_one():
    _version("serving", _table(this=0.8, frozen=0.7), active=True)
    worse = _version("worse", _table(this=0.75, frozen=0.7, active=0.8, active_name="serving"))
    better = _version("better", _table(this=0.85, frozen=0.7, active=0.8, active_name="serving"))

    with pytest.raises(ModelVersionGateError, match=r"active version's \(serving\) 0\.800"):
        model_version_activate(version=worse)
    assert model_version_gate_check(version=better)["reasons"] == []
    model_version_activate(version=better)

    assert ModelVersion.objects.get(is_active=True).name == "better"
    event = AuditEvent.objects.get(verb="model_version.activate")
    assert event.detail["override_reason"] == "" and event.detail["worse_than"] == []


@pytest.mark.django_db
def test_a_version_without_a_table_is_not_gated_and_the_audit_event_says_so():
    legacy = _version("legacy", {})
    model_version_activate(version=legacy)
    event = AuditEvent.objects.get(verb="model_version.activate")
    assert "not gated" in event.detail["notes"][0]


# --- with training: the gate's table, the bootstrap's fallback -------------------------------


def _library(experts, *, per_class: int):
    from retrieval.pipeline.synthetic import synthetic_reference_create

    return [
        synthetic_reference_create(
            expert=experts[0],
            approver=experts[1],
            diagnosis=diagnosis(name),
            pattern=pattern,
            slices=2,
            size=SIZE,
            seed=10 * n + j,
        )
        for n, (name, pattern) in enumerate(LIBRARY.items())
        for j in range(per_class)
    ]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_broken_candidate_is_registered_but_the_frozen_backbone_version_is_served(
    experts, pipeline_env, tmp_path
):
    """The recipe deliberately broken (a 1-dimensional radiomics-only embedding, untrained):
    the gate shows it worse than the frozen backbone, so the version to activate serves the
    frozen backbone's vector, and activating the broken one is refused."""
    from retrieval.engine.recipe import RecipeConfig
    from retrieval.engine.training import TrainConfig
    from retrieval.pipeline.bootstrap import library_prepare
    from retrieval.pipeline.gate import library_patients, library_train_gated
    from retrieval.pipeline.runtime import model_load

    cases = _library(experts, per_class=4)
    prepared, labels, class_names, case_ids = library_prepare(cases=cases, size=SIZE)
    config = RecipeConfig(
        weights="random",
        size=SIZE,
        train=TrainConfig(epochs=0, fusion="radiomics", embed_dim=1),
        device="cpu",
        embedding="head",  # the head as configured, no selection that would rescue it
    )

    trained, served = library_train_gated(
        prepared=prepared,
        labels=[class_names[i] for i in labels],
        patients=library_patients(case_ids=case_ids),
        class_names=class_names,
        config=config,
        out_dir=tmp_path / "broken",
        name="broken",
    )

    rows = trained.holdout["rows"]
    assert trained.holdout["n_heldout_patients"] == 3  # one of the four patients per class
    assert rows["this"]["macro_f1"] < rows["frozen"]["macro_f1"]
    assert served.name == "broken-frozen" and served.config["frozen_backbone"] is True
    assert served.holdout["rows"]["this"] == {**rows["frozen"], "title": "this version"}
    with pytest.raises(ModelVersionGateError):
        model_version_activate(version=trained)
    model_version_activate(version=served)
    # The frozen version's embedding is the backbone's GeM vector itself, L2-normalised.
    model = model_load(model_version=served)
    deep = model.backbone.to("cpu")
    from retrieval.engine.features import FeatureExtractor

    gem = FeatureExtractor(deep, model.radiomics, 4).deep([p.image for p in prepared[:3]])
    gem /= np.linalg.norm(gem, axis=1, keepdims=True)
    emb = model.embed_features(gem * 3.0, np.zeros((3, 0)))
    np.testing.assert_allclose(emb, gem, atol=1e-5)


@pytest.mark.slow
@pytest.mark.django_db
def test_bootstrap_model_serves_the_frozen_backbone_when_no_patient_can_be_held_out(
    experts, pipeline_env, settings, capsys
):
    settings.ILDREVIEW_BOOTSTRAP_WEIGHTS = "random"
    settings.ILDREVIEW_BOOTSTRAP_SIZE = SIZE
    settings.ILDREVIEW_BOOTSTRAP_EPOCHS = 1
    settings.ILDREVIEW_MODEL_DIR = pipeline_env.VAR_DIR / "models"
    _library(experts, per_class=1)  # one patient per class: nothing to hold out

    call_command("bootstrap_model")

    out = capsys.readouterr().out
    active = ModelVersion.objects.get(is_active=True)
    assert active.name.endswith("-frozen") and active.config["frozen_backbone"]
    assert "not activated" in out and "not evaluated on held-out patients" in out
    trained = ModelVersion.objects.exclude(pk=active.pk).get()
    assert not trained.is_active and "skipped" in trained.holdout
    assert active.reference_embeddings.count() == 6  # the library is embedded with it


# --- admin and pages ---------------------------------------------------------------------


def _admin_activate(client, version, **extra):
    from django.urls import reverse

    return client.post(
        reverse("admin:retrieval_modelversion_changelist"),
        {"action": "activate_selected", "_selected_action": [version.pk], **extra},
        follow=True,
    )


@pytest.mark.django_db
def test_admin_asks_for_a_reason_before_activating_a_worse_version_and_records_it(
    client, admin_user, library, active_version, tiny_artefact, django_capture_on_commit_callbacks
):
    worse = ModelVersion.objects.create(
        name="tiny-worse",
        artefact_dir=str(tiny_artefact),
        backbone="efficientnet_lite0",
        holdout=_table(this=0.5, frozen=0.9),
    )
    client.force_login(admin_user)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        page = _admin_activate(client, worse).content.decode()
        empty = _admin_activate(client, worse, override="1", override_reason=" ").content.decode()
    assert callbacks == []  # nothing queued without a reason
    assert "frozen backbone&#x27;s 0.900" in page and 'name="override_reason"' in page
    assert "needs a written reason" in empty

    with django_capture_on_commit_callbacks(execute=True):
        done = _admin_activate(client, worse, override="1", override_reason="expert request")

    assert "override recorded in the audit log" in done.content.decode()
    worse.refresh_from_db()
    assert worse.is_active
    event = AuditEvent.objects.get(verb="model_version.activate", object_id=str(worse.pk))
    assert event.actor == admin_user and event.detail["override_reason"] == "expert request"
    assert event.detail["holdout"]["this"]["macro_f1"] == pytest.approx(0.5)


@pytest.mark.django_db
def test_model_pages_show_the_held_out_table_with_the_differences(client, expert):
    from django.urls import reverse

    version = _version(
        "gated",
        _table(this=0.81, frozen=0.76, active=0.79, active_name="older")
        | {
            "deltas": {
                "vs_frozen": {"macro_f1": 0.05, "accuracy": 0.05, "map_at_10": 0.05},
                "vs_active": {"macro_f1": 0.02, "accuracy": 0.02, "map_at_10": 0.02},
            }
        },
    )
    _version("legacy", {})
    client.force_login(expert)

    listing = client.get(reverse("retrieval:model_list")).content.decode()
    detail = client.get(reverse("retrieval:model_detail", args=[version.pk])).content.decode()

    assert "this version 0.810 · frozen backbone 0.760 · active version 0.790" in listing
    assert "not gated" in listing
    assert "<th>active version (older)</th><td>0.790</td>" in detail
    assert "<th>this version − frozen backbone</th><td>+0.050</td>" in detail
    assert "12 held-out slices of 3 patients" in detail


@pytest.mark.django_db
def test_the_admin_change_page_shows_the_held_out_table(client, admin_user):
    from django.urls import reverse

    gated = _version("gated", _table(this=0.81, frozen=0.76))
    legacy = _version("legacy", {})
    client.force_login(admin_user)

    page = client.get(reverse("admin:retrieval_modelversion_change", args=[gated.pk]))
    old = client.get(reverse("admin:retrieval_modelversion_change", args=[legacy.pk]))

    assert page.status_code == 200
    assert "<tr><th>this version</th><td>0.810</td>" in page.content.decode()
    assert "Not evaluated on held-out patients." in old.content.decode()
