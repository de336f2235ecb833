"""Every model name of the result table, by kind, and the (model, seed) runs that make the table.

- CNNs: the torchvision names of `wbc.learn.models.MODEL_NAMES`;
- feature-based: `tavakoli_svm` (`wbc.learn.tavakoli`: nucleus segmentation, convex hull, 51 shape and
  colour features, polynomial SVM) and `invariant_svm` (the same segmentation, the stain-invariant,
  scale-free features of `wbc.cells.invariant`, RBF SVM).
The table = the headline `model` (first row) and the `compare` models, each trained once per seed;
a run is named `<model>-<seed>` (`headline-<seed>` for the headline), as dvc.yaml names its files.
"""
from __future__ import annotations

from typing import Any, Sequence

from wbc.core.errors import ConfigError
from wbc.learn.models import MODEL_NAMES

#: Models fitted on hand-crafted features instead of pixels.
FEATURE_MODELS: tuple[str, ...] = ("tavakoli_svm", "invariant_svm")
#: Every model name of the result table.
ALL_MODELS: tuple[str, ...] = (*MODEL_NAMES, *FEATURE_MODELS)


def check_name(name: str) -> str:
    """`name` when it is a known model of either kind, else a ConfigError listing them."""
    if name not in ALL_MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(ALL_MODELS)}")
    return name


def check_table(model: Any, compare: Any, seeds: Any) -> tuple[str, list[str], list[int]]:
    """Validate the params that define the result table: the headline `model`, the other models
    `compare` (distinct, without the headline) and `seeds` (distinct integers)."""
    model = check_name(str(model))
    compare = [check_name(str(n)) for n in (compare or [])]
    if len(set(compare)) != len(compare):
        raise ConfigError(f"`compare` lists a model twice: {compare}")
    if model in compare:
        raise ConfigError(f"the headline model {model} is also in `compare`; it is trained by its own stage "
                          f"(train_headline), so remove it from `compare` (it stays the table's first row)")
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"`seeds` must be a non-empty list of integers; got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"`seeds` lists a seed twice: {seeds}")
    return model, compare, list(seeds)


def run_name(model: str, seed: int) -> str:
    """The folder/file stem of one run, as `dvc.yaml` writes it: `<model>-<seed>`."""
    return f"{model}-{seed}"


def table_runs(model: str, compare: Sequence[str], seeds: Sequence[int]) -> dict[str, list[str]]:
    """{model: [run folder names]} in table order; the headline's runs are `headline-<seed>`."""
    runs = {model: [run_name("headline", s) for s in seeds]}
    runs.update({m: [run_name(m, s) for s in seeds] for m in compare})
    return runs
