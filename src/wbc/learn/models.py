"""CNN architectures by name (torchvision), ImageNet weights from the torch cache, checkpoints.

- `MODEL_NAMES`: the names `build_model` accepts (the paper's nine, then three newer ones).
- `build_model(name, num_classes, pretrained, image_size)`: a torchvision model whose last linear
  layer (the classifier head) is replaced by a fresh `num_classes`-way one.
- Pretrained weights are torchvision's `IMAGENET1K_V1` (the weights of the paper's era, 2020),
  read from `torch.hub.get_dir()/checkpoints/<file>`; downloaded there when missing and the
  network allows. Offline with no cached file: a `ConfigError` naming the file and both fixes.
- `vit_b_16` works at any image size divisible by 16 (>= 32): built for that size; with
  pretrained weights the 224-px position embeddings are interpolated (bicubic) to the new grid.
- `norm="group"`: GroupNorm in place of every BatchNorm2d (better across labs: no statistics of
  the training lab's images are stored); the checkpoint's `params.norm` rebuilds it on load.
- `save_checkpoint` / `load_checkpoint`: the docs/design.md checkpoint (plain tensors, strings,
  numbers, lists and dicts only, so `torch.load(..., weights_only=True)` reads it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported inside the functions: `wbc --help` stays fast
    import torch
    import torchvision
    from torch import nn


from wbc.learn import kernels
from wbc.core.errors import ConfigError, WbcError

#: Model names `build_model` accepts: the paper's nine, then efficientnet_b0, convnext_tiny, vit_b_16.
MODEL_NAMES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext50_32x4d",
    "mnasnet1_0",
    "mobilenet_v2",
    "densenet121",
    "shufflenet_v2_x1_0",
    "vgg16",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
)

#: The torchvision weights enum member used for `pretrained=True` (present for every model).
WEIGHTS_TAG = "IMAGENET1K_V1"
#: Smallest input edge every architecture accepts (five stride-2 stages).
MIN_IMAGE_SIZE = 32
#: Normalisation layers (params `train.norm`): torchvision's BatchNorm, or GroupNorm in its place.
NORMS = ("batch", "group")
#: GroupNorm uses the largest of these group counts that divides the channel count.
GROUPS = (32, 16, 8, 4, 2, 1)
#: Keys every checkpoint holds (docs/design.md).
CHECKPOINT_KEYS = ("model_name", "classes", "image_size", "mean", "std", "state_dict", "params",
                   "best_epoch", "val_macro_f1")


def check_model_name(name: str) -> str:
    """Return `name` if it is a known model, else raise ConfigError listing the valid ones."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return name


def check_image_size(name: str, image_size: int) -> int:
    """Validate the input edge for model `name` (ConfigError when impossible)."""
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image size {image_size} px is too small for {name}; need >= {MIN_IMAGE_SIZE}")
    if name == "vit_b_16" and image_size % 16:
        raise ConfigError(f"vit_b_16 needs an image size divisible by 16 (patch size); got {image_size}")
    return image_size


def weights_enum(name: str) -> torchvision.models.WeightsEnum:
    """The torchvision ImageNet weights used for `name` when pretrained."""
    import torchvision  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    return torchvision.models.get_model_weights(check_model_name(name))[WEIGHTS_TAG]


def weights_cache_path(name: str) -> Path:
    """Where torch looks for the pretrained weights file of `name` (follows TORCH_HOME)."""
    import torch  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    filename = os.path.basename(weights_enum(name).url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def ensure_weights(name: str) -> Path:
    """Make sure the ImageNet weights of `name` are in the torch cache; download if possible.

    Raises ConfigError (naming the file, the cache folder and the two fixes) when the file is
    missing and cannot be downloaded (e.g. offline).
    """
    import torch  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    path = weights_cache_path(name)
    if path.is_file():
        return path
    url = weights_enum(name).url
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=False)
    except Exception as exc:  # offline: URLError/OSError/timeouts, all reported the same way
        if path.exists():
            path.unlink()
        raise ConfigError(
            f"pretrained ImageNet weights for {name} are not in the torch cache and could not be "
            f"downloaded ({type(exc).__name__}: {exc}). Either train from scratch "
            f"(`dvc exp run -S train.pretrained=false`, or `wbc train --no-pretrained`), or put the "
            f"file {path.name} (from {url}) into {path.parent}"
        ) from None
    return path


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the model's last nn.Linear (its classifier head) by a new `num_classes` one."""
    from torch import nn  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    last = None
    for qualname, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = qualname
    if last is None:
        raise WbcError(f"{type(model).__name__} has no linear classifier head")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def _build_vit(num_classes: int, pretrained: bool, image_size: int) -> nn.Module:
    """vit_b_16 at `image_size`; pretrained position embeddings interpolated from 224 px."""
    import torchvision  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    from torchvision.models.vision_transformer import interpolate_embeddings

    model = torchvision.models.vit_b_16(weights=None, image_size=image_size)
    if pretrained:
        ensure_weights("vit_b_16")
        state = torchvision.models.vit_b_16(weights=weights_enum("vit_b_16")).state_dict()
        if image_size != 224:
            state = interpolate_embeddings(image_size, 16, state)
        model.load_state_dict(state)
    return replace_head(model, num_classes)


def group_norm(bn: nn.Module) -> nn.Module:
    """A GroupNorm over `bn`'s channels (groups: the largest of GROUPS dividing them), affine
    parameters copied from `bn` (ImageNet weights keep their scale and shift)."""
    from torch import nn  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    channels = bn.num_features
    groups = next(g for g in GROUPS if channels % g == 0)
    gn = nn.GroupNorm(groups, channels, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        gn.weight.data.copy_(bn.weight.data)
        gn.bias.data.copy_(bn.bias.data)
    return gn


def replace_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of `model` by `group_norm` of it, in place (models without
    BatchNorm, e.g. vgg16, convnext_tiny, vit_b_16, are unchanged)."""
    from torch import nn  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    for qualname, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            parent_name, _, attr = qualname.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, group_norm(module))
    return model


def check_norm(norm: str) -> str:
    """Return `norm` if it is one of NORMS, else raise ConfigError."""
    if norm not in NORMS:
        raise ConfigError(f"train.norm must be one of {', '.join(NORMS)}; got {norm!r}")
    return norm


def build_model(name: str, num_classes: int, pretrained: bool = False, image_size: int = 224,
                norm: str = "batch") -> nn.Module:
    """Build torchvision model `name` with a fresh `num_classes`-way head.

    `pretrained=True` loads torchvision's IMAGENET1K_V1 weights (everything but the new head).
    `norm="group"` puts GroupNorm in place of every BatchNorm2d (`replace_batchnorm`).
    Raises ConfigError for unknown names, impossible sizes, or missing weights offline.
    """
    model = _build(name, num_classes, pretrained, image_size)
    return replace_batchnorm(model) if check_norm(norm) == "group" else model


def _build(name: str, num_classes: int, pretrained: bool, image_size: int) -> nn.Module:
    """`build_model` with torchvision's own normalisation layers."""
    import torchvision  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    check_model_name(name)
    check_image_size(name, image_size)
    if num_classes < 2:
        raise ConfigError(f"need at least 2 classes, got {num_classes}")
    if name == "vit_b_16":
        return _build_vit(num_classes, pretrained, image_size)
    weights = None
    if pretrained:
        ensure_weights(name)
        weights = weights_enum(name)
    model = torchvision.models.get_model(name, weights=weights)
    return replace_head(model, num_classes)


def save_checkpoint(path: str | Path, model: nn.Module, *, model_name: str, classes: list[str],
                    image_size: int, mean: list[float], std: list[float], params: dict[str, Any],
                    best_epoch: int, val_macro_f1: float) -> Path:
    """Write the docs/design.md checkpoint (weights as contiguous CPU tensors)."""
    import torch  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    ckpt = {
        "model_name": model_name,
        "classes": [str(c) for c in classes],
        "image_size": int(image_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "state_dict": state,
        "params": params,
        "best_epoch": int(best_epoch),
        "val_macro_f1": float(val_macro_f1),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint (weights_only=True) -> (model in eval mode on `device`, meta).

    `meta` holds every checkpoint key except `state_dict`.
    """
    import torch  # lazy: `wbc --help` reaches this module through wbc.learn.zoo
    path = Path(path)
    if not path.is_file():
        raise WbcError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WbcError(f"cannot read checkpoint {path}: {exc}") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise WbcError(f"checkpoint {path} lacks {', '.join(missing)}")
    params = ckpt.get("params") or {}
    # the kernels and threads it was trained with, before the first tensor operation (wbc.learn.kernels)
    kernels.pin_for_inference(str(params.get("cpu_kernels") or "native"), params.get("threads"))
    norm = str(params.get("norm") or "batch")
    model = build_model(ckpt["model_name"], len(ckpt["classes"]), pretrained=False,
                        image_size=int(ckpt["image_size"]), norm=norm)
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model, meta
