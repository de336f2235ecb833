"""wbc.learn.zoo: the model names of both kinds and the params that define the result table."""
from __future__ import annotations

import pytest

from wbc.core.errors import ConfigError
from wbc.learn.zoo import ALL_MODELS, check_table, run_name, table_runs


def test_both_kinds_are_model_names() -> None:
    assert "resnet18" in ALL_MODELS and "tavakoli_svm" in ALL_MODELS


@pytest.mark.parametrize(("model", "compare", "seeds", "message"), [
    ("lenet", [], [1], "unknown model 'lenet'"),
    ("resnet18", ["vgg16", "vgg16"], [1], "lists a model twice"),
    ("resnet18", ["resnet18"], [1], "also in `compare`"),
    ("resnet18", [], [], "non-empty list of integers"),
    ("resnet18", [], [1, "2"], "non-empty list of integers"),
    ("resnet18", [], [3, 3], "lists a seed twice"),
])
def test_bad_tables_are_clear_errors(model, compare, seeds, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_table(model, compare, seeds)


def test_runs_are_named_as_dvc_yaml_names_them() -> None:
    assert check_table("resnet18", ["tavakoli_svm"], [1, 2]) == ("resnet18", ["tavakoli_svm"], [1, 2])
    assert run_name("vgg16", 3) == "vgg16-3"
    assert table_runs("resnet18", ["tavakoli_svm"], [1, 2]) == {
        "resnet18": ["headline-1", "headline-2"], "tavakoli_svm": ["tavakoli_svm-1", "tavakoli_svm-2"]}
