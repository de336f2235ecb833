"""Other labs' inputs (issue 23): the lab-shift transforms (wbc.cells.labshift), the stress sets
(wbc.dataset.stress, stage `stress`), the training views and their mixing (wbc.dataset.pack,
wbc.learn.packed), the crop paths counted by every evaluation and by `wbc predict`, the named
recipes (wbc.core.params) and the report over seeds (wbc.results.generalization)."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from test_redcells import smear  # noqa: E402  (a drawn smear: red cells around one white cell)
from test_split import build_store  # noqa: E402  (a small image store of drawn cells)
from wbc.cells import labshift
from wbc.cells.cellcrop import CropSpec, crop_with_path, fallback_rate, path_counts
from wbc.core.errors import ConfigError, WbcError
from wbc.core.params import apply_recipe, load_params, recipes
from wbc.dataset import stress
from wbc.dataset.assign import Assignment
from wbc.dataset.pack import VIEW_SEED, pack
from wbc.learn.packed import PackedSet, make_loader
from wbc.results.generalization import seed_markdown, seed_summary


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- transforms


def test_a_tight_crop_leaves_no_red_cells_so_the_rbc_crop_falls_back_to_the_cell_crop() -> None:
    field = smear(360, 26, 40, seed=3)
    _, path = crop_with_path(Image.fromarray(field), 64, CropSpec("rbc"))
    assert path == "rbc"
    tight = labshift.tight_crop(field, rng(), labshift.STRESS)
    assert tight.shape[0] == tight.shape[1] and tight.shape[0] < 0.5 * field.shape[0]
    _, path = crop_with_path(Image.fromarray(tight), 64, CropSpec("rbc"))
    assert path == "cell"
    blank = np.full((50, 50, 3), 230, np.uint8)   # no cell: the image comes back unchanged
    assert labshift.tight_crop(blank, rng()) is blank
    _, path = crop_with_path(Image.fromarray(blank), 32, CropSpec("rbc"))
    assert path == "centre"


def test_downscale_draws_the_side_from_the_range_and_never_enlarges() -> None:
    field = smear(360, 26, 40)
    sides = {min(labshift.downscale(field, rng(s)).shape[:2]) for s in range(30)}
    assert min(sides) >= 80 and max(sides) <= 120 and len(sides) > 5
    small = field[:60, :60]
    assert labshift.downscale(small, rng()) is small


def test_white_balance_scales_each_channel_by_its_own_gain() -> None:
    grey = np.full((20, 20, 3), 160, np.uint8)
    out = labshift.white_balance(grey, rng(5)).astype(float)
    gains = out[0, 0] / 160.0
    assert np.allclose(out, out[0, 0]) and gains.max() <= 1.0 + 1e-6
    assert gains.min() >= 1 / 1.25 ** 2 - 0.01 and np.ptp(gains) > 0.01   # another white point, no clipping


@pytest.mark.parametrize("kind", labshift.KINDS)
def test_encoded_stress_images_decode_to_the_degraded_image(kind: str) -> None:
    field = smear(240, 20, 30, seed=1)
    data, suffix = labshift.degrade_encoded(field, kind, rng(9))
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    expected = labshift.degrade(field, kind, rng(9))
    assert suffix == (".jpg" if kind in ("jpeg", "combined") else ".png")
    assert decoded.shape == expected.shape
    if suffix == ".png":
        assert np.array_equal(decoded, expected)
    else:   # the same JPEG bytes, decoded by two decoders
        assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 2.0
    with pytest.raises(ValueError, match="unknown stress kind"):
        labshift.degrade(field, "sepia", rng())


# ----------------------------------------------------------------------------- stress sets


@pytest.fixture(scope="module")
def drawn_store(tmp_path_factory):
    """(folder, kept rows, splits.csv path): a small store of drawn cells, half of them the test set."""
    root = tmp_path_factory.mktemp("stress_store")
    kept = build_store(root / "store", counts={"synth_raabin_train": {lab: 3 for lab in
                                                                       ("basophil", "eosinophil", "lymphocyte",
                                                                        "monocyte", "neutrophil")}})
    frame = kept[["id", "label"]].copy()
    frame["split"] = ["test" if i % 2 else "train" for i in range(len(frame))]
    frame["index"] = frame.groupby("split").cumcount()
    frame.to_csv(root / "splits.csv", index=False)
    return root, kept, root / "splits.csv"


def test_stress_sets_are_zips_of_class_folders_that_reconcile_and_rebuild_identically(drawn_store, tmp_path) -> None:
    root, kept, splits = drawn_store
    rows = stress.test_rows(splits, kept)
    frame = pd.read_csv(splits)
    assert rows["id"].tolist() == frame[frame["split"] == "test"].sort_values("index")["id"].tolist()
    summary = stress.build_stress_sets(rows, root / "store", tmp_path / "a", seed=4)
    again = stress.build_stress_sets(rows, root / "store", tmp_path / "b", seed=4)
    other = stress.build_stress_sets(rows, root / "store", tmp_path / "c", seed=5)
    assert summary["images"] == len(rows) and not summary["unreadable"]
    assert again == summary and other["sets"] == summary["sets"] and other["seed"] == 5
    for kind in labshift.KINDS:
        entry = summary["sets"][f"stress_{kind}"]
        assert entry["images"] == len(rows)                     # in = written + unreadable
        a, b = (tmp_path / d / f"{kind}.zip" for d in "ab")
        assert a.read_bytes() == b.read_bytes()                  # deterministic
        with zipfile.ZipFile(a) as z:
            names = sorted(z.namelist())
        assert names == sorted(f"{lab}/{i.replace('/', '__')}{'.jpg' if kind in ('jpeg', 'combined') else '.png'}"
                               for i, lab in zip(rows["id"], rows["label"]))
        assert all(n.count("/") == 1 for n in names)             # the class folder is the member's parent
    assert any((tmp_path / "a" / f"{k}.zip").read_bytes() != (tmp_path / "c" / f"{k}.zip").read_bytes()
               for k in labshift.KINDS)                          # the seed matters
    specs = stress.stress_specs(tmp_path / "a")
    assert list(specs) == [f"stress_{k}" for k in labshift.KINDS]
    assert stress.stress_specs(None) == {} and stress.stress_specs(tmp_path / "nothing") == {}


def test_stress_rows_and_kinds_are_checked(drawn_store, tmp_path) -> None:
    root, kept, splits = drawn_store
    with pytest.raises(WbcError, match="no image in the val set"):
        stress.test_rows(splits, kept, split="val")
    with pytest.raises(WbcError, match="not in the kept manifest"):
        stress.test_rows(splits, kept.iloc[:2])
    with pytest.raises(ConfigError, match="stress.kinds"):
        stress.check_kinds(["tight", "tight"])
    with pytest.raises(ConfigError, match="stress.kinds"):
        stress.check_kinds(["blur"])


def test_external_sets_may_not_take_the_stress_sets_names() -> None:
    from wbc.dataset.external import parse_specs

    with pytest.raises(ConfigError, match="stress"):
        parse_specs({"stress_tight": {"path": "x.zip"}})


# ----------------------------------------------------------------------------- training views


@pytest.fixture(scope="module")
def packed_views(drawn_store, tmp_path_factory):
    """(packed dir, meta) of the drawn store with rbc crops and the train set's lab views."""
    root, kept, splits = drawn_store
    frame = pd.read_csv(splits)
    out = tmp_path_factory.mktemp("packed_views")
    meta = pack(Assignment(frame, "stratified", 0, 0, 0), kept, root / "store", out, 32, workers=1,
                crop=CropSpec("rbc"), view_seed=VIEW_SEED)
    return out, meta


def test_pack_writes_the_train_views_and_counts_every_crop_path(packed_views) -> None:
    out, meta = packed_views
    n = meta["sets"]["train"]
    views = np.load(out / "train_view_x.npy")
    assert views.shape == (n, 3, 32, 32) and views.dtype == np.uint8
    assert not (out / "test_view_x.npy").exists()                # views of the train set only
    assert sum(meta["view_crop_paths"].values()) == n
    for name, count in meta["sets"].items():
        assert sum(meta["crop_paths"][name].values()) == count
        assert meta["cell_fallback"][name] == count - meta["crop_paths"][name]["rbc"]
    assert not np.array_equal(views, np.load(out / "train_x.npy"))


def test_lab_views_are_mixed_in_with_the_asked_probability_and_the_same_batches_every_run(packed_views) -> None:
    out, _meta = packed_views
    plain, viewed = PackedSet(out, "train"), PackedSet(out, "train", views=True)
    x = np.load(out / "train_x.npy")
    v = np.load(out / "train_view_x.npy")

    def batches(ds, prob):
        loader = make_loader(ds, 4, sampler=range(len(ds)), view_prob=prob, transform_seed=3)
        return [b[0].numpy() for b in loader]

    none = np.concatenate(batches(viewed, 0.0))
    assert np.array_equal(none, x)                               # prob 0: the packed crops as they are
    allv = np.concatenate(batches(viewed, 1.0))
    assert np.array_equal(allv, v)                               # prob 1: every image is its view
    half = np.concatenate(batches(viewed, 0.5))
    swapped = np.array([np.array_equal(h, vv) and not np.array_equal(h, xx) for h, vv, xx in zip(half, v, x)])
    kept = np.array([np.array_equal(h, xx) for h, xx in zip(half, x)])
    assert (swapped | kept).all() and swapped.any() and kept.any()
    assert all(np.array_equal(a, b) for a, b in zip(batches(viewed, 0.5), batches(viewed, 0.5)))
    with pytest.raises(WbcError, match="without its lab views"):
        plain.with_views([0], torch.from_numpy(x[:1]), 1.0, torch.Generator())


def test_views_missing_give_a_clear_error(tmp_path) -> None:
    np.save(tmp_path / "train_x.npy", np.zeros((2, 3, 8, 8), np.uint8))
    np.save(tmp_path / "train_y.npy", np.zeros(2, np.int64))
    with pytest.raises(WbcError, match="split.lab_views"):
        PackedSet(tmp_path, "train", views=True)


def test_lab_view_prob_is_validated() -> None:
    from wbc.learn.train import TrainConfig

    with pytest.raises(ConfigError, match="lab_view_prob"):
        TrainConfig(lab_view_prob=1.5)


# ----------------------------------------------------------------------------- crop paths


def test_path_counts_and_fallback_rate() -> None:
    counts = path_counts(["rbc", "cell", "cell", "centre"])
    assert counts == {"rbc": 1, "cell": 2, "centre": 1}
    assert fallback_rate(counts, "rbc") == 0.75 and fallback_rate(counts, "cell") == 0.5
    assert fallback_rate({}, "rbc") == 0.0


def test_predict_reports_the_crop_path_of_every_image(tmp_path, capsys) -> None:
    from wbc.apps.cli import main
    from wbc.learn.models import build_model, save_checkpoint

    field = smear(360, 26, 40, seed=5)
    Image.fromarray(field).save(tmp_path / "field.png")
    Image.fromarray(labshift.tight_crop(field, rng())).save(tmp_path / "tight.png")
    Image.fromarray(np.full((40, 40, 3), 230, np.uint8)).save(tmp_path / "blank.png")
    ckpt = save_checkpoint(tmp_path / "m.ckpt", build_model("resnet18", 5, image_size=32), model_name="resnet18",
                           classes=["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"], image_size=32,
                           mean=[0.5] * 3, std=[0.25] * 3, params={"norm": "batch", **CropSpec("rbc").to_dict()},
                           best_epoch=1, val_macro_f1=0.0)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tmp_path / "blank.png"), str(tmp_path / "field.png"), str(tmp_path / "tight.png"),
                 "--model", str(ckpt), "--out", str(out)]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert dict(zip(frame["path"].str.rsplit("/", n=1).str[-1], frame["crop"])) == {
        "blank.png": "centre", "field.png": "rbc", "tight.png": "cell"}
    assert "fell back in 2 of 3 image(s) (66.7 %; rbc 1, cell 1, centre 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- recipes


def test_a_recipe_sets_its_keys_on_top_of_the_params(tmp_path) -> None:
    table = recipes()
    assert {"rbc_stain", "other_labs"} <= set(table)
    params = {"recipe": "other_labs", "model": "resnet50", "split": {"crop": "centre", "seed": 7},
              "train": {"epochs": 4, "lr": 0.01}}
    out = apply_recipe(params)
    assert out["split"] == {"crop": "rbc", "seed": 7, "lab_views": True}
    assert out["train"]["epochs"] == 12 and out["train"]["lr"] == 0.01 and out["train"]["lab_view_prob"] == 0.5
    assert out["evaluate"] == {"adapt": "balanced", "tta": True} and out["model"] == "resnet50"
    assert params["split"]["crop"] == "centre"                  # the input is not changed
    assert apply_recipe({"recipe": "none", "split": {"crop": "cell"}})["split"] == {"crop": "cell"}
    with pytest.raises(ConfigError, match="unknown recipe 'fast'.*other_labs"):
        apply_recipe({"recipe": "fast"})
    path = tmp_path / "params.yaml"
    path.write_text("recipe: rbc_stain\nsplit: {crop: centre}\n")
    assert load_params(path)["split"]["crop"] == "rbc" and load_params(path, recipe=False)["split"]["crop"] == "centre"


def test_every_recipe_key_is_a_param_of_the_pipeline() -> None:
    from pathlib import Path

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", recipe=False)
    for name, sections in recipes().items():
        for section, values in sections.items():
            unknown = set(values) - set(params[section])
            assert not unknown, f"recipe {name}: {section}.{sorted(unknown)} are not in params.yaml"


# ----------------------------------------------------------------------------- report over seeds


def _metrics(folder, acc_test, acc_ext, fallback):
    folder.mkdir(parents=True)
    res = {"model": "resnet18", "setting": {"crop": "rbc", "rbc_span": 2.5, "adapt": "adabn"},
           "test": {"n": 10, "accuracy": acc_test, "macro_f1": acc_test,
                    "crop": {"paths": {}, "fallback_rate": 0.0}},
           "stress_tight": {"n": 8, "accuracy": acc_ext, "macro_f1": acc_ext - 0.1,
                            "crop": {"paths": {}, "fallback_rate": fallback}}}
    (folder / "metrics.json").write_text(json.dumps(res))
    return folder


def test_the_report_over_seeds_gives_mean_interval_and_fallback_rate(tmp_path) -> None:
    runs = [_metrics(tmp_path / f"s{i}", t, e, f) for i, (t, e, f) in enumerate([(0.9, 0.5, 0.9), (0.8, 0.7, 0.7)])]
    summary = seed_summary({"recipe": runs, "one seed": runs[:1]})
    row = summary[(summary["group"] == "recipe") & (summary["set"] == "stress_tight")].iloc[0]
    assert row["seeds"] == 2 and row["accuracy"] == pytest.approx(60.0) and row["fallback"] == pytest.approx(80.0)
    assert row["accuracy_ci"] == pytest.approx(12.706 * 10.0, rel=1e-3)   # t(0.975, 1) * s / sqrt(n), s / sqrt(2) = 10
    text = seed_markdown(summary, "T")
    assert "| recipe | 2 | 85.0 ± 63.5 | 60.0 ± 127.1 |" in text and "| one seed | 1 | 90.0 | 50.0 |" in text
    assert "| recipe | 2 | 0.0 | 80.0 |" in text


def test_every_evaluation_counts_the_crop_paths_of_each_set(packed_views, drawn_store, tmp_path) -> None:
    from wbc.learn.models import build_model, save_checkpoint
    from wbc.results.evaluate import evaluate_predictor
    from wbc.results.predictors import load_predictor

    out, meta = packed_views
    root, kept, splits = drawn_store
    stress.build_stress_sets(stress.test_rows(splits, kept), root / "store", tmp_path / "stress", seed=1,
                             kinds=["tight", "lowres"])
    ckpt = save_checkpoint(tmp_path / "m.ckpt", build_model("resnet18", 5, image_size=32), model_name="resnet18",
                           classes=meta["classes"], image_size=32, mean=meta["mean"], std=meta["std"],
                           params={"norm": "batch", **CropSpec("rbc").to_dict()}, best_epoch=1, val_macro_f1=0.0)
    prepared: dict = {}
    specs = stress.stress_specs(tmp_path / "stress")
    first = evaluate_predictor(load_predictor(ckpt), out, tmp_path / "ev1", external=specs, prepared=prepared)
    assert first["test"]["crop"]["paths"] == meta["crop_paths"]["test"]
    for name in ("stress_tight", "stress_lowres"):
        crop = first[name]["crop"]
        assert sum(crop["paths"].values()) == first[name]["n"]
        assert crop["fallback_rate"] == pytest.approx(1 - crop["paths"]["rbc"] / first[name]["n"], abs=1e-4)
        assert first[name]["external_folder"]["cell_crop_fallback"] == first[name]["n"] - crop["paths"]["rbc"]
    assert len(prepared) == 2
    again = load_predictor(ckpt)
    second = evaluate_predictor(again, out, tmp_path / "ev2", external=specs, prepared=prepared)
    assert sum(again.paths.values()) == 0                       # served from the cache: nothing prepared again
    assert {k: v["crop"] for k, v in second.items() if isinstance(v, dict) and "crop" in v} == \
        {k: v["crop"] for k, v in first.items() if isinstance(v, dict) and "crop" in v}
