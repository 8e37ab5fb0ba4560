"""Records of the retrieval engine's trained model versions."""

from __future__ import annotations

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

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="one_active_model"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name}{' (active)' if self.is_active else ''}"
