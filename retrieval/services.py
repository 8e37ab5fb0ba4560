"""Writes of the retrieval app: registering and activating trained model versions; the review
page's background jobs (CAM overlays and live queries), and its Retry action.

No model runs and no index is built in a web process. The review page asks for what it lacks
with the `*_request` functions, which send a worker job by name (at most one per thing every
`JOB_DEDUP_S` seconds per web process) and return at once; the page shows a "computing"
placeholder and polls. The workers run `review_cam_compute` (a CAM overlay of a slice pair that
the pipeline did not explain, with the same engine calls as the explain jobs) and
`study_live_query_run` (another k or a diagnosis filter, on the study's stored slice
embeddings against the worker's live index), each writing its answer into storage under a
deterministic name that the page's selectors read (`retrieval.selectors.review`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from cases.models import Slice, Study
from cases.services.audit import audit_event_record
from retrieval.models import ModelVersion, SimilarCase
from retrieval.selectors.review import (
    CAM_SIDES,
    library_checksum,
    live_query_name,
    review_cam_name,
)

logger = logging.getLogger(__name__)

__all__ = ["CAM_SIDES", "review_cam_name"]  # re-exported: the views and tests use them here

# A web process sends the same job at most once in this many seconds (pages poll meanwhile).
JOB_DEDUP_S = 60


class ModelVersionError(ValueError):
    """A model version cannot be registered or activated (reason in the message)."""


class ModelVersionGateError(ModelVersionError):
    """Activation refused: the version is worse on held-out patients than the frozen backbone
    or the active version, and no override reason was given."""


def _artefact_summary(artefact_dir: Path) -> dict:
    """Backbone, weights hash, config and metrics of a saved artefact, read from its JSON
    description without loading any weights (registration must stay cheap)."""
    from retrieval.engine.artefact import read_artefact_meta

    try:
        return read_artefact_meta(artefact_dir)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ModelVersionError(f"{artefact_dir}: not a readable model artefact ({exc})") from exc


@transaction.atomic
def model_version_register(
    *,
    artefact_dir: Path | str,
    name: str,
    activate: bool = False,
    report_dir: str = "",
    holdout: dict | None = None,
    actor=None,
    override_reason: str = "",
) -> ModelVersion:
    """Record a saved artefact folder as a model version (optionally making it the active one,
    through the held-out gate of `model_version_activate`).

    `holdout` is the gate's table (`retrieval.engine.holdout.holdout_evaluate`). Raises
    ModelVersionError when the folder is not an artefact or the name is taken, and
    ModelVersionGateError when activation is refused; nothing is saved then.
    """
    artefact_dir = Path(artefact_dir).resolve()
    if not artefact_dir.is_dir():
        raise ModelVersionError(f"{artefact_dir}: artefact folder does not exist")
    if ModelVersion.objects.filter(name=name).exists():
        raise ModelVersionError(f"a model version named {name!r} already exists")
    meta = _artefact_summary(artefact_dir)
    version = ModelVersion.objects.create(
        name=name,
        artefact_dir=str(artefact_dir),
        backbone=meta.get("backbone_name", ""),
        backbone_weights_sha256=meta.get("backbone_weights_sha256", "") or "",
        config=meta.get("config", {}) or {},
        metrics=meta.get("metrics", {}) or {},
        report_dir=report_dir,
        holdout=holdout or {},
    )
    audit_event_record(actor=actor, verb="model_version.register", obj=version)
    if activate:
        model_version_activate(version=version, actor=actor, override_reason=override_reason)
    return version


def model_version_gate_check(*, version: ModelVersion) -> dict:
    """What the held-out gate says about activating `version` now.

    Compares the macro F1 of "this version" in its table with the frozen backbone's in the
    same table, and with the active version's: the table's "active" row when it was measured
    against the version active now (same split), else that version's own "this version"
    figure (its own split: less comparable, said so in `notes`). Returns {"reasons": [why it
    is worse], "figures": {...}, "notes": [...]}; no table means no reasons (the version was
    registered without one, e.g. an artefact trained elsewhere), noted.
    """
    from retrieval.engine.holdout import ROW_TITLES, gate_verdict

    table = version.holdout or {}
    rows = table.get("rows") or {}
    notes: list[str] = []
    if not rows:
        notes.append(table.get("skipped") or "no held-out table: this version was not gated")
        return {"reasons": [], "figures": {}, "notes": notes}
    figures = {
        name: {k: rows[name].get(k) for k in ("macro_f1", "accuracy", "map_at_10")} for name in rows
    }
    reasons = gate_verdict({"rows": {"this": rows["this"], "frozen": rows.get("frozen")}})
    active = ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).first()
    if active is not None:
        this_f1 = rows["this"].get("macro_f1")
        same_split = (rows.get("active") or {}).get("version") == active.name
        if same_split:
            other = rows["active"].get("macro_f1")
        else:
            other = (((active.holdout or {}).get("rows") or {}).get("this") or {}).get("macro_f1")
            figures["active"] = {"macro_f1": other}
            notes.append(
                f"the active version {active.name} was measured on its own held-out split"
                if other is not None
                else f"the active version {active.name} has no held-out figures"
            )
        figures.setdefault("active", {})["version"] = active.name
        if isinstance(other, int | float) and isinstance(this_f1, int | float) and this_f1 < other:
            reasons.append(
                f"macro_f1 {this_f1:.3f} on held-out patients is below the "
                f"{ROW_TITLES['active']}'s ({active.name}) {other:.3f}"
            )
    return {"reasons": reasons, "figures": figures, "notes": notes}


@transaction.atomic
def model_version_activate(
    *, version: ModelVersion, actor=None, override_reason: str = ""
) -> ModelVersion:
    """Make `version` the one active model version (the previous one is deactivated).

    The held-out gate (`model_version_gate_check`): a version whose macro F1 on held-out
    library patients is below the frozen backbone's or the active version's is refused with
    ModelVersionGateError unless `override_reason` says why it should serve anyway. The audit
    event records the figures, the gate's reasons and the override reason.
    """
    check = model_version_gate_check(version=version)
    reason = (override_reason or "").strip()
    if check["reasons"] and not reason:
        raise ModelVersionGateError(
            f"{version.name} is not activated: "
            + "; ".join(check["reasons"])
            + ". Activating it anyway needs an override with a written reason."
        )
    ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
    version.is_active = True
    version.save(update_fields=["is_active"])
    audit_event_record(
        actor=actor,
        verb="model_version.activate",
        obj=version,
        detail={
            "holdout": check["figures"],
            "worse_than": check["reasons"],
            "override_reason": reason if check["reasons"] else "",
            "notes": check["notes"],
        },
    )
    return version


# --- the review page: background jobs, Retry -----------------------------------------------


def _job_publish(*, key: str, task: str, args: tuple) -> None:
    """Send the worker job `task` unless this process sent the same one (`key`) recently.
    In eager mode (tests, no broker) the job runs here at once, every time."""
    from retrieval.pipeline.enqueue import task_publish

    if not settings.CELERY_TASK_ALWAYS_EAGER and not cache.add(
        f"ildreview:job:{key}", 1, timeout=JOB_DEDUP_S
    ):
        return
    task_publish(task, *args)


def review_cam_request(
    *, study: Study, model_version: ModelVersion, query_slice_id: int, reference_slice_id: int
) -> None:
    """Ask a worker for the CAM overlays of one slice pair of the study: the explain job of the
    stored similar case with that pair, or an on-demand job for a pair of a live query."""
    case = (
        SimilarCase.objects.filter(
            result__study=study,
            result__model_version=model_version,
            query_slice_id=query_slice_id,
            reference_slice_id=reference_slice_id,
        )
        .order_by("rank")
        .first()
    )
    if case is not None:
        _job_publish(key=f"cam-case-{case.pk}", task="similar_case_explain", args=(case.pk,))
        return
    args = (study.pk, model_version.pk, query_slice_id, reference_slice_id)
    _job_publish(key="cam-pair-{}-{}-{}-{}".format(*args), task="review_cam_compute", args=args)


def review_cam_compute(
    *, study_id: int, model_version_id: int, query_slice_id: int, reference_slice_id: int
) -> bool:
    """Worker job: both CAM overlays of a slice pair that the pipeline did not explain, stored
    under `review_cam_name`. False when both exist already (a repeated job)."""
    from retrieval.pipeline.runtime import model_image_size, model_load
    from retrieval.pipeline.stages import cam_pair_png

    names = {
        side: review_cam_name(
            study_id=study_id,
            model_version_id=model_version_id,
            query_slice_id=query_slice_id,
            reference_slice_id=reference_slice_id,
            side=side,
        )
        for side in CAM_SIDES
    }
    if all(default_storage.exists(n) for n in names.values()):
        return False
    model = model_load(model_version=ModelVersion.objects.get(pk=model_version_id))
    pngs = cam_pair_png(
        model=model,
        size=model_image_size(model),
        query_slice=Slice.objects.get(pk=query_slice_id),
        reference_slice=Slice.objects.get(pk=reference_slice_id),
        model_version_id=model_version_id,  # the vectors the pipeline stored, not recomputed
    )
    for side, data in zip(CAM_SIDES, pngs, strict=True):
        _storage_put(names[side], data)
    return True


def _storage_put(name: str, data: bytes) -> None:
    """Write `data` under exactly `name` unless it exists (answers are deterministic, so a
    concurrent writer's file is as good as ours)."""
    if default_storage.exists(name):
        return  # another worker wrote the same answer meanwhile
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # a concurrent writer got there first: keep one file
        default_storage.delete(saved)


SEARCH_MODES = ("similar", "hierarchical")  # similar cases; class-first (predict, then search)


def study_live_query_request(
    *,
    study: Study,
    model_version: ModelVersion,
    k: int,
    diagnosis_code: str | None,
    mode: str = "similar",
) -> None:
    """Ask a worker for the review page's answer to (k, diagnosis, search mode) on the current
    library."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    key = f"live-{study.pk}-{model_version.pk}-{k}-{diagnosis_code or ''}-{mode}"
    args = (study.pk, model_version.pk, k, diagnosis_code or "")
    # The task's original signature for the similar-case search (messages of older web
    # processes still match); the mode only when it is not the default.
    _job_publish(
        key=key, task="study_live_query", args=args + ((mode,) if mode != "similar" else ())
    )


def study_live_query_run(
    *,
    study_id: int,
    model_version_id: int,
    k: int,
    diagnosis_code: str = "",
    mode: str = "similar",
) -> str:
    """Worker job: rank the library for the study's stored slice embeddings with another k, a
    diagnosis filter or the class-first search (`mode` "hierarchical": the class whose
    centroid is closest, then cases of that class only;
    `retrieval.pipeline.selectors.study_similar_search`), and store the answer as JSON under
    `live_query_name` for the library as it is now. Returns the name.

    The answer holds, per case in rank order, (reference case id, score, hits, query slice id,
    reference slice id), the votes, the abstain decision under the version's thresholds
    (`abstained`, `abstain_reason`, `top_similarity`, `vote_margin`), `mode` and
    `predicted_class` (class-first: the class searched within); `"cases": null` says the study
    has no stored embeddings for the version (the page then falls back to the stored answer)."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    from retrieval.pipeline.selectors import study_similar_search

    study = Study.objects.get(pk=study_id)
    version = ModelVersion.objects.get(pk=model_version_id)
    code = diagnosis_code or None
    # The library as the query sees it: taken before the query, so a case approved meanwhile
    # makes the page ask again rather than trust an older answer.
    name = live_query_name(
        study_id=study_id,
        model_version_id=model_version_id,
        k=k,
        diagnosis_code=code,
        checksum=library_checksum(model_version=version),
        mode=mode,
    )
    found = study_similar_search(
        study=study,
        model_version=version,
        k=k,
        diagnosis_code=code,
        hierarchical=mode == "hierarchical",
    )
    if found is None:
        answer = {"cases": None, "votes": {}, "mode": mode}
    else:
        result, meta, query_slice_ids = found
        answer = {
            "cases": [
                [
                    int(hit.case_id),
                    float(hit.score),
                    int(hit.n_hits),
                    int(query_slice_ids[hit.query_slice_index]),
                    int(meta[hit.best_slice_id][2]),
                ]
                for hit in result.cases
            ],
            "votes": {str(c): float(v) for c, v in result.votes.items()},
            "abstained": bool(result.abstained),
            "abstain_reason": result.abstain_reason,
            "top_similarity": result.top_similarity,
            "vote_margin": result.vote_margin,
            "mode": mode,
            "predicted_class": result.predicted_label,
        }
    _storage_put(name, json.dumps(answer).encode())
    return name


def study_retry(*, study: Study, actor) -> None:
    """Queue a failed (or never processed) study again through the pipeline's enqueue service,
    with an audit event. Raises ValueError with the reason when the status does not allow it.
    """
    from retrieval.pipeline.enqueue import study_enqueue_processing

    previous = study.status_message
    if study.status not in (Study.Status.FAILED, Study.Status.UPLOADED):
        raise ValueError(
            f"study {study.pk} is {study.get_status_display().lower()}; only failed or "
            "unprocessed studies can be retried"
        )
    with transaction.atomic():
        study_enqueue_processing(study=study)
        audit_event_record(
            actor=actor, verb="study.retry", obj=study, detail={"previous_error": previous}
        )
