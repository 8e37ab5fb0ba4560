"""Records of the retrieval engine's trained model versions."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ModelVersion(models.Model):
    """A trained retrieval model: an artefact folder written by the engine (backbone id and
    weights hash, radiomics parameters and standardisation, fusion weights, config, training
    metrics). Exactly one version is active at a time; queries use the active one."""

    name = models.CharField(max_length=100, unique=True)
    artefact_dir = models.CharField(max_length=500, help_text="Folder of the saved artefact")
    backbone = models.CharField(max_length=50)
    backbone_weights_sha256 = models.CharField(max_length=64, blank=True, default="")
    config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    report_dir = models.CharField(max_length=500, blank=True, default="")
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # How the workers' reference index of this version was last built: backend, tuned LSH
    # parameters, recall measured on held-out library vectors, or why it fell back
    # (`VectorIndex.build_info`, written by retrieval/pipeline/index_store.py).
    index_info = models.JSONField(default=dict, blank=True)
    # The held-out gate's table (`retrieval.engine.holdout`, written when the version is
    # trained): macro F1, top-1 accuracy and mAP@10 on held-out library patients of the frozen
    # backbone, the version active at the time and this version; activation compares them.
    holdout = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="one_active_model"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}{' (active)' if self.is_active else ''}"


# --------------------------------------------------------------------------------------------
# Pipeline records (retrieval/pipeline/): per-slice features, the reference index's source of
# truth, per-study processing jobs and stored results.
# --------------------------------------------------------------------------------------------


def _result_cam_upload_to(instance: SimilarCase, filename: str) -> str:
    # Ids only, like every storage key (the explain stage names its files with
    # `retrieval.pipeline.stages.cam_name`, under the same folder).
    return f"results/{instance.result.study_id}/{instance.result.model_version_id}/{filename}"


class SliceFeatures(models.Model):
    """What the pipeline computed for one slice under one model version.

    `lung_fraction` repeats `Slice.lung_fraction` for the image size of this version;
    `radiomics` is the raw (unstandardised) pyradiomics vector as float64 bytes (the order of
    the version's `RadiomicsExtractor.feature_names`); `radiomics_main` is a small JSON
    {feature name: value} of the main features for the review page's side-by-side table;
    `usable` is False for slices under `ILDREVIEW_MIN_LUNG_FRACTION` or whose radiomics failed
    (e.g. a degenerate mask): they are never queried.
    `embedding` is the fused, L2-normalised embedding as float32 bytes (query slices; reference
    slices keep theirs in `ReferenceEmbedding`). Written by the prepare/embed stages with
    `update_or_create` on (slice, model_version), so re-running a stage never duplicates rows.
    """

    slice = models.ForeignKey("cases.Slice", on_delete=models.CASCADE, related_name="features")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="slice_features"
    )
    lung_fraction = models.FloatField()
    usable = models.BooleanField(
        default=False, help_text="Enough lung and radiomics computed: used for retrieval"
    )
    radiomics = models.BinaryField(blank=True, default=b"")
    radiomics_main = models.JSONField(default=dict, blank=True)
    embedding = models.BinaryField(blank=True, null=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "slice features"
        constraints = [
            models.UniqueConstraint(
                fields=["slice", "model_version"], name="unique_slice_features_per_version"
            ),
        ]

    def __str__(self) -> str:
        return f"features of slice {self.slice_id} ({self.model_version_id})"


class ReferenceEmbedding(models.Model):
    """One embedded slice of an approved reference case under one model version.

    The source of truth of the similar-case index: every worker's in-memory `VectorIndex` is
    synchronised from these rows incrementally (`retrieval.pipeline.index_store`), using the
    row id as the vector id. Rows are created when a case is approved (or a model version is
    re-embedded) and deleted when a case is retired or rejected; slices under
    `ILDREVIEW_MIN_LUNG_FRACTION` are not stored.
    """

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="reference_embeddings"
    )
    reference_case = models.ForeignKey(
        "cases.ReferenceCase", on_delete=models.CASCADE, related_name="embeddings"
    )
    slice = models.ForeignKey(
        "cases.Slice", on_delete=models.CASCADE, related_name="reference_embeddings"
    )
    vector = models.BinaryField(help_text="float32 bytes, L2-normalised")
    lung_fraction = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model_version", "slice"], name="unique_reference_embedding_slice"
            ),
        ]
        indexes = [models.Index(fields=["model_version", "id"])]

    def __str__(self) -> str:
        return (
            f"slice {self.slice_id} of reference {self.reference_case_id} ({self.model_version_id})"
        )


class StudyJob(models.Model):
    """The processing job of one study: which run is current, its stage and a heartbeat.

    `run_id` changes on every enqueue; stage tasks carry it and do nothing when it is no longer
    the study's current run, so a message redelivered after a worker died cannot overwrite a
    newer run. `heartbeat_at` is refreshed while a stage runs; a job `running` on a worker that
    died (stale heartbeat, or the same hostname restarting) is re-enqueued by
    `retrieval.pipeline.recovery`.

    A new run starts `waiting` (not yet sent to the broker) when its uploader already has
    `ILDREVIEW_QUEUE_PER_USER` runs sent and unfinished; it is sent (`queued`) when one of them
    ends (fair order across users, see `retrieval.pipeline.enqueue`). `stage_seconds` holds the
    time each stage of the run took; the queue estimate uses it.
    """

    class State(models.TextChoices):
        WAITING = "waiting", "Waiting (not sent yet)"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    study = models.OneToOneField("cases.Study", on_delete=models.CASCADE, related_name="job")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    run_id = models.CharField(max_length=32)
    stage = models.CharField(max_length=20, blank=True, default="")
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.QUEUED, db_index=True
    )
    worker = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0, help_text="Times this study was enqueued")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(
        null=True, blank=True, help_text="When this run was queued (its place in its user's line)"
    )
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="When this run was sent to the broker"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    stage_started_at = models.DateTimeField(null=True, blank=True)
    stage_seconds = models.JSONField(
        default=dict, blank=True, help_text="Seconds each stage of this run took"
    )
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"job of study {self.study_id}: {self.stage} {self.state}"


class StudyResult(models.Model):
    """The similar-case answer for one study under one model version.

    `votes` is {diagnosis code: share} of the retrieved cases (similarity-weighted, class-
    balanced), `suggested_diagnosis` its argmax unless the query abstained, `key_slice` the
    query slice that drives the top match (where the viewer opens). Re-created (delete +
    insert in one transaction) by the retrieve stage.
    """

    study = models.ForeignKey("cases.Study", on_delete=models.CASCADE, related_name="results")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="study_results"
    )
    suggested_diagnosis = models.ForeignKey(
        "cases.Diagnosis", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    votes = models.JSONField(default=dict, blank=True)
    key_slice = models.ForeignKey(
        "cases.Slice", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    query_slice_count = models.PositiveIntegerField(default=0)
    excluded_slice_count = models.PositiveIntegerField(default=0)
    # "No close match": the best similarity or the vote margin fell below the model's abstain
    # thresholds (`retrieval.engine.query`); `suggested_diagnosis` is then empty.
    abstained = models.BooleanField(default=False)
    abstain_reason = models.CharField(max_length=300, blank=True, default="")
    top_similarity = models.FloatField(null=True, blank=True)
    vote_margin = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "model_version"], name="unique_result_per_version"
            ),
        ]

    def __str__(self) -> str:
        return f"result of study {self.study_id} ({self.model_version_id})"


class SimilarCase(models.Model):
    """One retrieved reference case of a `StudyResult`, best first (`rank` 1..k).

    `query_slice` / `reference_slice` are the best-matching pair; `query_cam` and
    `reference_cam` are PNG overlays of the similarity CAM on each (filled by the explain
    stage, deterministic file names so re-runs overwrite instead of adding files).
    """

    result = models.ForeignKey(StudyResult, on_delete=models.CASCADE, related_name="cases")
    rank = models.PositiveSmallIntegerField()
    reference_case = models.ForeignKey(
        "cases.ReferenceCase", on_delete=models.CASCADE, related_name="+"
    )
    score = models.FloatField(help_text="Cosine similarity of the best slice pair")
    n_hits = models.PositiveIntegerField(default=0)
    query_slice = models.ForeignKey("cases.Slice", on_delete=models.CASCADE, related_name="+")
    reference_slice = models.ForeignKey("cases.Slice", on_delete=models.CASCADE, related_name="+")
    query_cam = models.FileField(upload_to=_result_cam_upload_to, max_length=255, blank=True)
    reference_cam = models.FileField(upload_to=_result_cam_upload_to, max_length=255, blank=True)

    class Meta:
        ordering = ["result", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["result", "rank"], name="unique_similar_case_rank"),
        ]

    def __str__(self) -> str:
        return f"#{self.rank} reference {self.reference_case_id} ({self.score:.3f})"


class TrainingRun(models.Model):
    """A model training launched from the admin and run as a task on the `gpu` queue.

    Trains a head-only model on the approved reference library (`retrieval.pipeline.training`),
    registers it as a new, inactive `ModelVersion` and records progress for the admin; an admin
    then activates the version (which re-embeds the library in the background).
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    params = models.JSONField(default=dict, blank=True, help_text="epochs, backbone, weights, size")
    progress_percent = models.PositiveSmallIntegerField(default=0)
    message = models.TextField(blank=True, default="")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.state})"
