"""Any trained model of the result table behind one interface: a `Predictor`.

Two model kinds share the pipeline:
- the torchvision CNNs (`wbc.models`): a torch checkpoint, fed uint8 (3, S, S) arrays (the packed
  tensors, or an image squared and resized with `wbc.split.square_resize`);
- the feature-based method of Tavakoli et al. (`tavakoli_svm`, `wbc.tavakoli`): its own safe file
  format, fed the 51-feature vectors of `wbc.features` (the cached per-set feature files, or the
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
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from wbc import features as feats
from wbc import tavakoli
from wbc.errors import WbcError
from wbc.train import normalise


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


def is_torch_checkpoint(path: str | Path) -> bool:
    """True for a file written by `torch.save` (a zip holding `<name>/data.pkl`)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


@dataclass
class CnnPredictor:
    """A torchvision CNN checkpoint (see `wbc.models.load_checkpoint`)."""

    model: Any
    meta: dict[str, Any]
    device: Any
    kind: str = field(default="cnn", init=False)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    def prepare(self, img: Image.Image) -> np.ndarray:
        """uint8 (3, S, S): the image squared and resized as at training time."""
        from wbc.split import square_resize

        return square_resize(img, int(self.meta["image_size"]))

    def predict(self, batch: np.ndarray, batch_size: int = 64, desc: str = "") -> np.ndarray:
        """Softmax probabilities (n, classes) of uint8 (n, 3, S, S) inputs."""
        return predict_array(self.model, batch, self.meta["mean"], self.meta["std"], batch_size=batch_size,
                             device=self.device, desc=desc or self.model_name)

    def set_inputs(self, set_name: str, packed_dir: Path, features_dir: Path | None) -> np.ndarray:
        """The packed uint8 tensors of one set (memory-mapped)."""
        from wbc.evaluate import check_compatible
        from wbc.train import read_meta

        check_compatible(self.meta, read_meta(packed_dir), self.model_name)
        return np.load(Path(packed_dir) / f"{set_name}_x.npy", mmap_mode="r")


@dataclass
class FeaturePredictor:
    """The feature-based method (`wbc.tavakoli`): SVM on the 51 features of `wbc.features`."""

    svm: Any
    kind: str = field(default="features", init=False)

    @property
    def classes(self) -> list[str]:
        return list(self.svm.classes)

    @property
    def model_name(self) -> str:
        return tavakoli.MODEL_NAME

    @property
    def meta(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "classes": self.classes}

    def prepare(self, img: Image.Image) -> np.ndarray:
        """The 51 features of the image at its own resolution (NaN where undefined)."""
        vector, _status = feats.extract(np.asarray(img.convert("RGB")))
        return vector

    def predict(self, batch: np.ndarray, batch_size: int = 64, desc: str = "") -> np.ndarray:
        """Class probabilities (n, classes) of (n, 51) feature vectors."""
        return self.svm.predict_proba(np.asarray(batch, dtype=np.float64))

    def set_inputs(self, set_name: str, packed_dir: Path, features_dir: Path | None) -> np.ndarray:
        """The cached features of one set, checked against the packed set's labels and order."""
        if features_dir is None:
            raise WbcError(f"{self.model_name} needs the feature files (--features DIR, the features stage)")
        table = feats.load_features(Path(features_dir) / f"{set_name}.npz")
        y = np.load(Path(packed_dir) / f"{set_name}_y.npy")
        if len(table["X"]) != len(y) or not np.array_equal(np.asarray(table["y"]), y):
            raise WbcError(f"{features_dir}/{set_name}.npz does not match the packed {set_name} set "
                           "(re-run the features stage: dvc repro features)")
        return table["X"]


Predictor = CnnPredictor | FeaturePredictor


def load_predictor(path: str | Path, device: Any = "cpu") -> Predictor:
    """Load a model file of either kind (a CNN checkpoint or a `tavakoli_svm` model)."""
    path = Path(path)
    if not path.is_file():
        raise WbcError(f"model file not found: {path}")
    if is_torch_checkpoint(path):
        from wbc.models import load_checkpoint

        model, meta = load_checkpoint(path, device=device)
        return CnnPredictor(model, meta, device)
    return FeaturePredictor(tavakoli.TavakoliSVM.load(path))
