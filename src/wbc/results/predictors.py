"""Any trained model of the result table behind one interface: a `Predictor`.

Two model kinds share the pipeline:
- the torchvision CNNs (`wbc.learn.models`): a torch checkpoint, fed uint8 (3, S, S) arrays (the packed
  tensors, or an image cropped and resized with `wbc.cells.cellcrop.crop_with_path` as the checkpoint was
  trained: its params' `crop` and `cell_fraction`); optionally colour-standardised (`stain_norm`,
  `wbc.cells.stainnorm.reinhard` to the training set's Lab target), BatchNorm-adapted to a set of
  images (`adapted`, AdaBN, `wbc.learn.adapt`) and optionally averaged over the 8 rotations and
  reflections of each input (`tta`: a blood cell on a slide has no up, down, left or right);
- the feature-based method of Tavakoli et al. (`tavakoli_svm`, `wbc.learn.tavakoli`): its own safe file
  format, fed the 51-feature vectors of `wbc.cells.features` (the cached per-set feature files, or the
  features of one image computed from its original resolution).

A `Predictor` turns one decoded RGB image into the model's input (`prepare`), a stack of inputs
into class probabilities (`predict`), and names the input array of a packed evaluation set
(`set_inputs`), so that `wbc evaluate`, `wbc predict` and the pipeline treat every model alike.
`load_predictor(path)` tells the kinds apart by the file's content, not by its name.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from wbc.cells import features as feats
from wbc.learn import tavakoli
from wbc.learn.adapt import ADAPTS, BALANCED_DRAWS, adabn, class_balanced_rows
from wbc.learn.models import load_checkpoint
from wbc.cells.cellcrop import PATHS, CropSpec, crop_with_path
from wbc.core.errors import ConfigError, WbcError
from wbc.cells.stainnorm import STAIN_NORMS, reinhard
from wbc.learn.packed import normalise, read_meta


def normaliser(mean: Sequence[float], std: Sequence[float], device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """A function: uint8 NCHW numpy batch -> float tensor on `device`, (x / 255 - mean) / std."""
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)

    def apply(batch: np.ndarray) -> torch.Tensor:
        # memory-mapped input is read-only: torch needs a writable (copied) batch
        x = np.require(batch, dtype=np.uint8, requirements=["C", "W"])
        return normalise(torch.from_numpy(x).to(device), m, s)

    return apply


def predict_batch(model: nn.Module, batch: np.ndarray, norm: Callable[[np.ndarray], torch.Tensor]) -> np.ndarray:
    """Softmax probabilities (float32, shape (n, classes)) of one uint8 NCHW batch."""
    with torch.inference_mode():
        logits = model(norm(batch))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def predict_array(
    model: nn.Module,
    x: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    desc: str = "predict",
) -> np.ndarray:
    """Probabilities for every row of a uint8 (N, 3, S, S) array, read `batch_size` rows at a time."""
    device = torch.device(device)
    model.eval()
    norm = normaliser(mean, std, device)
    if len(x) == 0:
        raise ValueError("predict_array: no images")
    chunks = [predict_batch(model, x[start:start + batch_size], norm)
              for start in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", disable=None)]
    return np.concatenate(chunks)


#: The dihedral group of the square: (quarter turns, mirrored) of each test-time augmentation view.
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral_view(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """A (N, C, S, S) array rotated by k quarter turns, then mirrored left-right if `flip` (a view)."""
    x = np.rot90(x, k, axes=(2, 3))
    return x[..., ::-1] if flip else x


def is_torch_checkpoint(path: str | Path) -> bool:
    """True for a file written by `torch.save` (a zip holding `<name>/data.pkl`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def check_compatible(meta: Mapping[str, Any], packed_meta: Mapping[str, Any], name: str) -> None:
    """A CNN checkpoint must have been trained on the packed classes and image size."""
    if list(meta["classes"]) != list(packed_meta["classes"]):
        raise ConfigError(f"{name}: checkpoint classes {meta['classes']} differ from the packed data's {packed_meta['classes']}")
    if int(meta["image_size"]) != int(packed_meta["image_size"]):
        raise ConfigError(f"{name}: checkpoint image_size {meta['image_size']} differs from the packed "
                          f"data's {packed_meta['image_size']}; re-run the training stages")
    trained = CropSpec.from_meta(meta.get("params"))
    if "crop" in packed_meta and trained != CropSpec.from_meta(packed_meta):
        raise ConfigError(f"{name}: checkpoint trained on {trained.to_dict()} crops, the packed data holds "
                          f"{CropSpec.from_meta(packed_meta).to_dict()}; re-run the training stages")


@dataclass
class CnnPredictor:
    """A torchvision CNN checkpoint (see `wbc.learn.models.load_checkpoint`)."""

    model: Any
    meta: dict[str, Any]
    device: Any
    stain_norm: str = "none"
    adapt: str = "none"
    tta: bool = False
    kind: str = field(default="cnn", init=False)
    fallbacks: int = field(default=0, init=False)  # images whose crop fell back (`paths` other than the crop's own)
    paths: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PATHS, 0), init=False)  # crop path counts

    def __post_init__(self) -> None:
        if self.stain_norm not in STAIN_NORMS:
            raise ConfigError(f"stain_norm must be one of {', '.join(STAIN_NORMS)}; got {self.stain_norm!r}")
        if self.stain_norm == "reinhard" and "lab_target" not in self.params:
            raise WbcError(f"{self.model_name}: the checkpoint has no Lab target (trained before stain "
                           "normalisation existed): retrain it, or use stain_norm none")

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.meta.get("params") or {})

    @property
    def crop(self) -> CropSpec:
        """The crop the checkpoint was trained with (centre for older checkpoints)."""
        return CropSpec.from_meta(self.params)

    def setting(self) -> dict[str, Any]:
        """What shapes this model's inputs and normalisation (the generalization report's columns)."""
        p = self.params
        return {**self.crop.to_dict(), "norm": p.get("norm", "batch"), "stain_augment": bool(p.get("stain_augment")),
                "stain_norm": self.stain_norm, "adapt": self.adapt, "tta": bool(self.tta)}

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    def prepare(self, img: Image.Image) -> np.ndarray:
        """uint8 (3, S, S): the image cropped (`wbc.cells.cellcrop`) and resized as at training time."""
        arr, path = crop_with_path(img, int(self.meta["image_size"]), self.crop)
        self.paths[path] += 1
        self.fallbacks += path != self.crop.mode
        return arr

    def standardise(self, batch: np.ndarray) -> np.ndarray:
        """The inputs colour-standardised as `stain_norm` says (unchanged for none)."""
        return reinhard(batch, self.params["lab_target"]) if self.stain_norm == "reinhard" else batch

    def predict(self, batch: np.ndarray, batch_size: int = 64, desc: str = "") -> np.ndarray:
        """Softmax probabilities (n, classes) of uint8 (n, 3, S, S) inputs; with `tta` the mean of the
        probabilities of the 8 rotated and mirrored views of each input."""
        x = self.standardise(batch)
        label = desc or self.model_name
        views = DIHEDRAL if self.tta else DIHEDRAL[:1]
        probs = [predict_array(self.model, dihedral_view(x, k, flip), self.meta["mean"], self.meta["std"],
                               batch_size=batch_size, device=self.device,
                               desc=f"{label} view {i + 1}/{len(views)}" if self.tta else label)
                 for i, (k, flip) in enumerate(views)]
        return probs[0] if len(probs) == 1 else np.mean(probs, axis=0)

    def adapted(self, x: np.ndarray, batch_size: int = 64) -> "CnnPredictor":
        """This model with its BatchNorm statistics re-estimated on the inputs `x` (AdaBN), or itself
        when `adapt` is none. With `adapt` balanced, re-estimated a second time on a resample of `x` in
        which every class the first adapted model predicts has the same share (`wbc.learn.adapt`)."""
        if self.adapt == "none":
            return self
        xs = self.standardise(x)
        model = adabn(self.model, xs, self.meta["mean"], self.meta["std"], batch_size=batch_size, device=self.device)
        if self.adapt == "balanced" and len(x) > 1:
            first = CnnPredictor(model, self.meta, self.device, self.stain_norm, self.adapt, self.tta)
            labels = first.predict(x, batch_size=batch_size, desc=f"{self.model_name} classes to balance").argmax(axis=1)
            rows = class_balanced_rows(labels, BALANCED_DRAWS * len(x))
            model = adabn(self.model, xs, self.meta["mean"], self.meta["std"], batch_size=batch_size,
                          device=self.device, rows=rows)
        return CnnPredictor(model, self.meta, self.device, self.stain_norm, self.adapt, self.tta)

    def set_inputs(self, set_name: str, packed_dir: Path, features_dir: Path | None) -> np.ndarray:
        """The packed uint8 tensors of one set (memory-mapped)."""
        check_compatible(self.meta, read_meta(packed_dir), self.model_name)
        return np.load(Path(packed_dir) / f"{set_name}_x.npy", mmap_mode="r")


@dataclass
class FeaturePredictor:
    """A feature-based model (`wbc.learn.tavakoli`): an SVM on the features its file names (the 51 of
    `wbc.cells.features` for `tavakoli_svm`, those of `wbc.cells.invariant` for `invariant_svm`)."""

    svm: Any
    kind: str = field(default="features", init=False)
    fallbacks: int = field(default=0, init=False)  # never: features come from the whole image

    def setting(self) -> dict[str, Any]:
        """The feature model's inputs: the original image; no crop, colour or BatchNorm lever applies."""
        return {"crop": "original image", "norm": "n/a", "stain_augment": False, "stain_norm": "none", "adapt": "none",
                "tta": False}

    def adapted(self, x: np.ndarray, batch_size: int = 64) -> "FeaturePredictor":
        """No BatchNorm to adapt: itself."""
        return self

    @property
    def classes(self) -> list[str]:
        return list(self.svm.classes)

    @property
    def model_name(self) -> str:
        return self.svm.MODEL_NAME

    @property
    def meta(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "classes": self.classes}

    def prepare(self, img: Image.Image) -> np.ndarray:
        """The model's features of the image at its own resolution (NaN where undefined)."""
        vector, _status = self.svm.extract(np.asarray(img.convert("RGB")))
        return vector

    def predict(self, batch: np.ndarray, batch_size: int = 64, desc: str = "") -> np.ndarray:
        """Class probabilities (n, classes) of (n, features) feature vectors."""
        return self.svm.predict_proba(np.asarray(batch, dtype=np.float64))

    def set_inputs(self, set_name: str, packed_dir: Path, features_dir: Path | None) -> np.ndarray:
        """The cached features of one set, checked against the packed set's labels and order."""
        if features_dir is None:
            raise WbcError(f"{self.model_name} needs the feature files (--features DIR, the features stage)")
        path = feats.set_file(features_dir, set_name, self.svm.FEATURE_KIND)
        table = feats.load_features(path, names=self.svm.FEATURE_NAMES)
        y = np.load(Path(packed_dir) / f"{set_name}_y.npy")
        if len(table["X"]) != len(y) or not np.array_equal(np.asarray(table["y"]), y):
            raise WbcError(f"{path} does not match the packed {set_name} set "
                           "(re-run the features stage: dvc repro features)")
        return table["X"]


Predictor = CnnPredictor | FeaturePredictor


def load_predictor(path: str | Path, device: Any = "cpu", *, stain_norm: str = "none",
                   adapt: str = "none", tta: bool = False) -> Predictor:
    """Load a model file of either kind (a CNN checkpoint or a feature model: `tavakoli_svm`, `invariant_svm`).

    `stain_norm` (none | reinhard), `adapt` (none | adabn | balanced) and `tta` (8 rotated/mirrored views)
    apply to CNNs only."""
    if adapt not in ADAPTS:
        raise ConfigError(f"adapt must be one of {', '.join(ADAPTS)}; got {adapt!r}")
    path = Path(path)
    if not path.is_file():
        raise WbcError(f"model file not found: {path}")
    if is_torch_checkpoint(path):
        model, meta = load_checkpoint(path, device=device)
        return CnnPredictor(model, meta, device, stain_norm, adapt, bool(tta))
    return FeaturePredictor(tavakoli.load_model(path))
