"""The model behind the Classify page: load a model file, predict files with `wbc.apps.predict.predict_files`.

One thin layer over the project's prediction API, so the page calls exactly what `wbc predict`
calls: `wbc.results.predictors.load_predictor` + `predict_files(predictor, paths, batch_size=...)` (any
model kind of the result table).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wbc.apps.predict import predict_files
from wbc.results.predictors import load_predictor


@dataclass
class PageModel:
    """A loaded model file: what the page shows about it and how it predicts."""

    path: Path
    loaded: Any             # a wbc.results.predictors Predictor
    meta: dict[str, Any]
    device: Any

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.meta["classes"]]

    def describe(self) -> dict[str, Any]:
        """Name, classes and, for a CNN, input size and validation macro-F1 (for the page header)."""
        return {"path": str(self.path), "name": self.meta.get("model_name"), "classes": self.classes,
                "image_size": self.meta.get("image_size"), "val_macro_f1": self.meta.get("val_macro_f1"),
                "device": str(self.device)}

    def predict_files(self, paths: list[Path], batch_size: int = 32) -> pd.DataFrame:
        """`wbc.apps.predict.predict_files` on `paths`, as `wbc predict` calls it."""
        return predict_files(self.loaded, paths, batch_size=batch_size)


def load_page_model(path: Path, device: Any = "cpu") -> PageModel:
    """Load a model file (raises WbcError when it is missing or unreadable)."""
    predictor = load_predictor(path, device=device)
    return PageModel(path, predictor, dict(predictor.meta), device)
