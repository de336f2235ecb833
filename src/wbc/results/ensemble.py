"""A seed ensemble: several CNN checkpoints of one input pipeline behind one `Predictor`.

The pipeline trains every model once per seed (params `seeds`); averaging the class probabilities
of those models (a deep ensemble, Lakshminarayanan et al. 2017) is known to hold its accuracy and
calibration under dataset shift better than any one member (Ovadia et al. 2019): here, another lab's
stain, camera and crop (measured on real PBC with the `other_labs` seeds: no gain; README).

    predictor = load_ensemble(["models/headline-1.ckpt", "models/headline-2.ckpt"], adapt="adabn", tta=True)
    p = predictor.adapted(x).predict(x)     # the mean of the members' (adapted) probabilities

The members must agree on everything that shapes an input (classes, image size, crop, normalisation
mean and std): one prepared input then serves them all (`prepare` is the first member's, so are the
crop path counts), and a mismatch is a `ConfigError` naming the file. `adapted` adapts every member
on the same inputs (AdaBN when loaded with adapt="adabn"); stain normalisation and tta apply to each
member as to a single checkpoint. Feature models are refused: an ensemble averages CNNs.
`wbc predict --model A --model B ...` and `wbc evaluate --ensemble NAME A B ...` load one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from wbc.cells.cellcrop import CropSpec
from wbc.core.errors import ConfigError
from wbc.results.predictors import CnnPredictor, Predictor, load_predictor

#: What every member must share (checkpoint meta keys), besides the crop.
SHARED_META = ("classes", "image_size", "mean", "std")


@dataclass
class EnsemblePredictor:
    """The mean of the class probabilities of `members` (CnnPredictors of one input pipeline)."""

    members: list[CnnPredictor]
    kind: str = field(default="cnn", init=False)

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise ConfigError("an ensemble needs two or more checkpoints")

    @property
    def first(self) -> CnnPredictor:
        return self.members[0]

    @property
    def classes(self) -> list[str]:
        return self.first.classes

    @property
    def crop(self) -> CropSpec:
        return self.first.crop

    @property
    def model_name(self) -> str:
        return f"{self.first.model_name} ensemble of {len(self.members)}"

    @property
    def meta(self) -> dict[str, Any]:
        return {**self.first.meta, "model_name": self.model_name}

    @property
    def paths(self) -> dict[str, int]:
        return self.first.paths

    def setting(self) -> dict[str, Any]:
        return {**self.first.setting(), "ensemble": len(self.members)}

    def prepare(self, img: Image.Image) -> np.ndarray:
        """The first member's input (every member prepares alike)."""
        return self.first.prepare(img)

    def predict(self, batch: np.ndarray, batch_size: int = 64, desc: str = "") -> np.ndarray:
        """The mean of the members' probabilities (n, classes)."""
        label = desc or self.model_name
        return np.mean([m.predict(batch, batch_size=batch_size, desc=f"{label} member {i + 1}/{len(self.members)}")
                        for i, m in enumerate(self.members)], axis=0)

    def adapted(self, x: np.ndarray, batch_size: int = 64) -> "EnsemblePredictor":
        """Every member adapted to the inputs `x` (itself when the members do not adapt)."""
        if all(m.adapt == "none" for m in self.members):
            return self
        return EnsemblePredictor([m.adapted(x, batch_size=batch_size) for m in self.members])

    def set_inputs(self, set_name: str, packed_dir: Path, features_dir: Path | None) -> np.ndarray:
        """The packed tensors of one set, checked against the first member (`check_members` made the
        others prepare alike)."""
        return self.first.set_inputs(set_name, packed_dir, features_dir)


def check_members(members: Sequence[Predictor], paths: Sequence[str | Path]) -> list[CnnPredictor]:
    """The members as CnnPredictors, or ConfigError for a feature model or an input pipeline that
    differs from the first member's."""
    for member, path in zip(members, paths):
        if not isinstance(member, CnnPredictor):
            raise ConfigError(f"{path}: a {member.model_name} file; an ensemble averages CNN checkpoints")
    first = members[0]
    for member, path in zip(members[1:], paths[1:]):
        for key in SHARED_META:
            if member.meta.get(key) != first.meta.get(key):
                raise ConfigError(f"{path}: {key} {member.meta.get(key)!r} differs from {paths[0]}'s "
                                  f"{first.meta.get(key)!r}; an ensemble's members must prepare inputs alike")
        if member.crop != first.crop:
            raise ConfigError(f"{path}: crop {member.crop.to_dict()} differs from {paths[0]}'s {first.crop.to_dict()}")
    return list(members)


def load_ensemble(paths: Sequence[str | Path], device: Any = "cpu", *, stain_norm: str = "none",
                  adapt: str = "none", tta: bool = False) -> Predictor:
    """One model file: `load_predictor`; several: their `EnsemblePredictor` (CNN checkpoints of one
    input pipeline, each loaded with the same test-time levers)."""
    paths = list(paths)
    if not paths:
        raise ConfigError("no model file given")
    members = [load_predictor(p, device, stain_norm=stain_norm, adapt=adapt, tta=tta) for p in paths]
    if len(members) == 1:
        return members[0]
    return EnsemblePredictor(check_members(members, paths))
