"""A trained model version as a folder: everything needed to embed a slice.

Layout of `DIR`:
- `config.json`: format version, backbone name / weights source / weights SHA-256, whether the
  backbone's own weights are stored, head type and constructor arguments, radiomics feature
  names and parameter SHA-256, standardisation statistics, class names, training config and
  metrics (read without loading weights by `read_artefact_meta`);
- `radiomics_params.yaml`: the radiomics parameters, verbatim;
- `head.pt`: the fusion/projection head's state dict;
- `backbone.pt` (only when the backbone cannot be rebuilt from its source: random init,
  fine-tuned — end-to-end or partially (finetune.py) —, or a user-given weight file): the
  backbone's state dict.

A fine-tuned backbone's `fine_tuned_sha256` (hash of its tensors) and `input_size` (the side
it was tuned at) are recorded; loading checks the hash and the side becomes the model's
`config["input_size"]` when the config does not give one, so serving embeds at that side.

Loading an ImageNet backbone rebuilds it from its source and checks the SHA-256 recorded at
save time; a mismatch raises `ArtefactError` (embeddings would silently change otherwise).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.engine.fusion import head_embed, head_from_spec, head_spec
from retrieval.engine.radiomics import RadiomicsExtractor, Standardizer

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


class ArtefactError(RuntimeError):
    """A model artefact folder cannot be saved or loaded (names the folder and the reason)."""


def read_artefact_meta(path: str | Path) -> dict:
    """The parsed `config.json` of an artefact folder (no weights are loaded)."""
    return json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_torch_save(path: Path, state: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RetrievalModel:
    """Backbone + radiomics extractor + standardiser + head, with provenance.

    Attributes: backbone_name, backbone_weights_sha256, radiomics_params (YAML text),
    standardizer, head, class_names, config (training config plus `size`, `weights`...),
    metrics; and the live `backbone` / `radiomics` objects. `config["fusion"]` selects how the
    head is fed ("ildffn": deep + radiomics, "deep", "radiomics").
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        radiomics: RadiomicsExtractor,
        standardizer: Standardizer | None,
        head: nn.Module,
        class_names: list[str],
        config: dict | None = None,
        metrics: dict | None = None,
    ):
        self.backbone = backbone
        self.radiomics = radiomics
        self.standardizer = standardizer
        self.head = head
        self.class_names = list(class_names)
        self.config = dict(config or {})
        self.config.setdefault("fusion", _fusion_of(head, radiomics))
        tuned_size = getattr(backbone, "input_size", None)
        if self.config.get("input_size") is None and tuned_size:
            self.config["input_size"] = int(tuned_size)  # embed at the side it was tuned at
        self.metrics = dict(metrics or {})

    @property
    def backbone_name(self) -> str:
        return str(getattr(self.backbone, "name", ""))

    @property
    def backbone_weights_sha256(self) -> str:
        return str(getattr(self.backbone, "weights_sha256", ""))

    @property
    def radiomics_params(self) -> str:
        return self.radiomics.params_text

    @property
    def fusion(self) -> str:
        return str(self.config.get("fusion", "ildffn"))

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # --- embedding ------------------------------------------------------------------------

    def embed_features(
        self, deep: np.ndarray, rad: np.ndarray, *, standardized: bool = False
    ) -> np.ndarray:
        """(N, E) float32 L2-normalised embeddings from deep features and *raw* radiomics
        (standardised here with the model's statistics unless `standardized`)."""
        deep = np.asarray(deep, dtype=np.float32)
        rad = np.asarray(rad, dtype=np.float64)
        if rad.ndim == 1:
            rad = rad[None]
        if deep.ndim == 1:
            deep = deep[None]
        if not standardized and self.standardizer is not None and rad.size:
            rad = self.standardizer.transform(rad)
        return head_embed(self.head, self.fusion, deep, rad)

    def embed(
        self, slices: list, *, radiomics: np.ndarray | None = None, batch_size: int = 16
    ) -> np.ndarray:
        """(N, E) float32 L2-normalised embeddings of PreparedSlices: deep features through
        the backbone (`FeatureExtractor.deep`: eval mode, no gradients, `batch_size` slices at
        a time), radiomics computed here unless `radiomics` gives them (raw, (N, Cr)), then
        the head (`embed_features`)."""
        from retrieval.engine.features import FeatureExtractor

        extractor = FeatureExtractor(
            self.backbone, self.radiomics, batch_size, input_size=self.config.get("input_size")
        )
        if radiomics is None:
            deep, radiomics = extractor.extract(list(slices))
        else:
            deep = extractor.deep([s.image for s in slices])
        return self.embed_features(deep, radiomics)

    # --- persistence ----------------------------------------------------------------------

    def _stores_backbone(self) -> bool:
        source = str(getattr(self.backbone, "weights_source", "random"))
        return bool(getattr(self.backbone, "fine_tuned", False)) or source != "imagenet"

    def meta(self) -> dict:
        """What `config.json` holds."""
        return {
            "format_version": FORMAT_VERSION,
            "backbone_name": self.backbone_name,
            "backbone_weights_sha256": self.backbone_weights_sha256,
            "backbone_weights_source": str(getattr(self.backbone, "weights_source", "")),
            "backbone_fine_tuned": bool(getattr(self.backbone, "fine_tuned", False)),
            "backbone_fine_tuned_sha256": str(getattr(self.backbone, "fine_tuned_sha256", "")),
            "backbone_input_size": getattr(self.backbone, "input_size", None),
            "backbone_stored": self._stores_backbone(),
            "deep_dim": int(getattr(self.backbone, "out_dim", 0)),
            "head": head_spec(self.head),
            "fusion": self.fusion,
            "radiomics_params_sha256": self.radiomics.params_sha256,
            "radiomics_feature_names": list(self.radiomics.feature_names),
            "standardizer": None if self.standardizer is None else self.standardizer.to_dict(),
            "class_names": self.class_names,
            "config": self.config,
            "metrics": self.metrics,
        }

    def save(self, path: str | Path) -> None:
        """Write the artefact folder (created if needed; files replaced atomically)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(path / "radiomics_params.yaml", self.radiomics.params_text.encode())
        _atomic_torch_save(path / "head.pt", _cpu_state(self.head))
        if self._stores_backbone():
            _atomic_torch_save(path / "backbone.pt", _cpu_state(self.backbone))
        else:
            (path / "backbone.pt").unlink(missing_ok=True)
        text = json.dumps(self.meta(), indent=2, default=_json_default)
        _atomic_write_bytes(path / CONFIG_FILE, text.encode())

    @classmethod
    def load(
        cls, path: str | Path, *, device=None, imagenet_file: str | Path | None = None
    ) -> RetrievalModel:
        """Rebuild a saved model on `device` (CUDA when available and None); `imagenet_file`
        as in `build_backbone`, for a backbone rebuilt from its ImageNet source.

        Raises ArtefactError when files are missing or unreadable or the backbone weights
        differ from those recorded.
        """
        path = Path(path)
        try:
            return cls._load(path, device=device, imagenet_file=imagenet_file)
        except ArtefactError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            raise ArtefactError(f"{path}: cannot load model artefact ({exc})") from exc

    @classmethod
    def _load(cls, path: Path, *, device, imagenet_file) -> RetrievalModel:
        from retrieval.engine.backbones import build_backbone

        try:
            meta = read_artefact_meta(path)
            params_text = (path / "radiomics_params.yaml").read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise ArtefactError(f"{path}: not a readable model artefact ({exc})") from exc
        name = meta["backbone_name"]
        if meta.get("backbone_stored"):
            backbone = build_backbone(name, weights="random", device="cpu")
            state = torch.load(path / "backbone.pt", map_location="cpu", weights_only=True)
            backbone.load_state_dict(state, strict=True)
            backbone.weights_source = meta.get("backbone_weights_source", "")
            backbone.weights_sha256 = meta.get("backbone_weights_sha256", "")
            backbone.fine_tuned = bool(meta.get("backbone_fine_tuned", False))
            if backbone.fine_tuned:
                from retrieval.engine.backbones import state_sha256

                backbone.fine_tuned_sha256 = state_sha256(backbone.state_dict())
                expected = meta.get("backbone_fine_tuned_sha256") or ""
                if expected and backbone.fine_tuned_sha256 != expected:
                    raise ArtefactError(
                        f"{path}: backbone.pt has SHA-256 {backbone.fine_tuned_sha256}, the "
                        f"model was saved with {expected}"
                    )
            if meta.get("backbone_input_size"):
                backbone.input_size = int(meta["backbone_input_size"])
        else:
            backbone = build_backbone(
                name, weights="imagenet", imagenet_file=imagenet_file, device="cpu"
            )
            expected = meta.get("backbone_weights_sha256", "")
            if expected and backbone.weights_sha256 != expected:
                raise ArtefactError(
                    f"{path}: backbone {name} weights have SHA-256 {backbone.weights_sha256}, "
                    f"the model was trained with {expected}"
                )
        radiomics = RadiomicsExtractor(params_text=params_text)
        saved_names = meta.get("radiomics_feature_names")
        if saved_names and list(saved_names) != radiomics.feature_names:
            raise ArtefactError(
                f"{path}: this pyradiomics gives different radiomics features than the one the "
                "model was trained with"
            )
        head = head_from_spec(meta["head"])
        head.load_state_dict(
            torch.load(path / "head.pt", map_location="cpu", weights_only=True), strict=True
        )
        std = meta.get("standardizer")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(
            backbone=backbone.to(dev).eval(),
            radiomics=radiomics,
            standardizer=None if std is None else Standardizer.from_dict(std),
            head=head.to(dev).eval(),
            class_names=meta.get("class_names", []),
            config=meta.get("config", {}),
            metrics=meta.get("metrics", {}),
        )


def _fusion_of(head: nn.Module, radiomics: RadiomicsExtractor) -> str:
    """Fusion mode implied by the head when the config does not say."""
    from retrieval.engine.fusion import ILDFFN

    if isinstance(head, ILDFFN):
        return "ildffn"
    in_dim = getattr(head, "in_dim", None)
    return "radiomics" if in_dim == len(radiomics.feature_names) else "deep"


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
