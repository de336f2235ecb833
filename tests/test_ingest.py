"""wbc.data.ingest: class folders, skip/quarantine rules, manifest + store, summary, CLI, real PBC data."""
from __future__ import annotations

import hashlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wbc import LABELS
from wbc.apps.cli import main as cli_main
from wbc.core.errors import ConfigError
from wbc.data.ingest import (
    MANIFEST_COLUMNS, class_of, ingest_sources, read_manifest, skip_reason, summarize,
)
from wbc.data.sources import get_source
from wbc.data.store import ImageStore

RAABIN_LIKE = {
    "id": "toy", "file": "toy.zip", "role": "pool", "root": None,
    "classes": {"Basophil": "basophil", "Neutrophil": "neutrophil", "Monocyte": "monocyte"},
    "exclude": ["ig"],
}


def image_bytes(seed: int, fmt: str = "JPEG", size=(24, 20)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, fmt)
    return buf.getvalue()


TOY_MEMBERS = {
    "Train/Basophil/b1.jpg": image_bytes(1),
    "Train/Basophil/b2.PNG": image_bytes(2, "PNG"),
    "Train/NEUTROPHIL/n1.jpeg": image_bytes(3),          # case-insensitive class folder
    "Train/Monocyte/empty.jpg": b"",                      # zero bytes
    "Train/Monocyte/cut.jpg": image_bytes(4, size=(200, 160))[:900],  # truncated
    "Train/Monocyte/.DS_1.jpg": b"\x00\x00\x00\x01Bud1" + bytes(100),  # not an image
    "Train/ig/i1.jpg": image_bytes(5),                    # excluded class: decoded, not stored
    "Train/unknown/u1.jpg": image_bytes(6),               # no class folder
    "Train/Basophil/._b1.jpg": b"\x00\x05\x16\x07AppleDouble",
    "__MACOSX/Train/Basophil/._b2.PNG": b"\x00\x05\x16\x07",
    "Train/readme.txt": b"hello",
}


@pytest.fixture()
def toy_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "toy.zip", "w") as zf:
        for name, data in TOY_MEMBERS.items():
            zf.writestr(name, data)
    return raw


def test_class_of_rules():
    assert class_of("Train/Basophil/a.jpg", RAABIN_LIKE) == ("Basophil", "basophil")
    assert class_of("Train/basophil/a.jpg", RAABIN_LIKE) == ("basophil", "basophil")
    assert class_of("Train/ig/a.jpg", RAABIN_LIKE) == ("ig", "excluded")
    assert class_of("a.jpg", RAABIN_LIKE) == ("", "")
    assert class_of("Neutrophil/Basophil/a.jpg", RAABIN_LIKE) == ("Basophil", "basophil")  # deepest
    assert class_of("Basophil/NEUTROPHIL/a.jpg", RAABIN_LIKE) == ("Basophil", "basophil")  # exact first
    rooted = {**RAABIN_LIKE, "root": "Data/cells"}
    assert class_of("Data/cells/Monocyte/a.jpg", rooted) == ("Monocyte", "monocyte")
    assert class_of("data/Cells/monocyte/a.jpg", rooted) == ("monocyte", "monocyte")
    assert class_of("Other/Monocyte/a.jpg", rooted) == ("", "")
    assert class_of("Data/cells/x/Monocyte/a.jpg", rooted) == ("", "")  # only right below the root
    assert class_of("Data/cells/Monocyte", rooted) == ("", "")
    user = {"id": "u", "classes": {x: x for x in LABELS}, "class_from_parent": True}
    assert class_of("mine/Eosinophil/a.png", user) == ("Eosinophil", "eosinophil")
    assert class_of("mine/band/a.png", user) == ("band", "")


def test_skip_rules():
    assert skip_reason("a/b.JPG") == "" and skip_reason("a/b.tiff") == ""
    assert skip_reason("__MACOSX/a/b.jpg").startswith("macOS metadata")
    assert skip_reason("a/._b.jpg").startswith("macOS metadata")
    assert skip_reason("a/Thumbs.db") == "not an image extension: .db"
    assert skip_reason("a/README") == "not an image extension: (none)"


def test_ingest_toy_zip(toy_raw, tmp_path):
    manifest_path, store_dir = tmp_path / "interim" / "manifest.csv", tmp_path / "interim" / "store"
    df = ingest_sources([RAABIN_LIKE], toy_raw, manifest_path, store_dir, {"workers": 1})
    assert list(df.columns) == MANIFEST_COLUMNS
    assert df["id"].tolist() == sorted(f"toy/{m}" for m in TOY_MEMBERS)
    rows = df.set_index("member")

    def row(name):
        return rows.loc[name]

    assert row("Train/Basophil/b1.jpg")[["status", "label", "format", "mode", "width", "height"]].tolist() == [
        "ok", "basophil", "JPEG", "RGB", 24, 20]
    assert row("Train/NEUTROPHIL/n1.jpeg")[["class_folder", "label"]].tolist() == ["NEUTROPHIL", "neutrophil"]
    assert row("Train/Monocyte/empty.jpg")["reason"].startswith("zero bytes")
    assert row("Train/Monocyte/cut.jpg")["reason"].startswith("truncated")
    assert row("Train/Monocyte/.DS_1.jpg")["reason"].startswith("not an image")
    assert pd.isna(row("Train/Monocyte/cut.jpg")["width"])
    assert row("Train/ig/i1.jpg")[["status", "label", "shard"]].tolist() == ["ok", "excluded", -1]
    assert row("Train/unknown/u1.jpg")[["status", "label", "class_folder", "shard"]].tolist() == ["ok", "", "", -1]
    for skipped in ("Train/Basophil/._b1.jpg", "__MACOSX/Train/Basophil/._b2.PNG", "Train/readme.txt"):
        assert row(skipped)["status"] == "skipped" and row(skipped)["reason"]
    # every stored row reads back as its original bytes; sha256 and sizes match
    store = ImageStore(store_dir)
    stored = df[df["shard"] >= 0]
    assert sorted(stored["member"]) == ["Train/Basophil/b1.jpg", "Train/Basophil/b2.PNG", "Train/NEUTROPHIL/n1.jpeg"]
    for r in stored.itertuples():
        data = store.read_row(r)
        assert data == TOY_MEMBERS[r.member] and hashlib.sha256(data).hexdigest() == r.sha256 and r.bytes == len(data)
    # the CSV round-trips with its types
    back = read_manifest(manifest_path)
    pd.testing.assert_frame_equal(back, df)


def test_summary_reconciles(toy_raw, tmp_path):
    df = ingest_sources([RAABIN_LIKE], toy_raw, tmp_path / "m.csv", tmp_path / "s", {"workers": 1})
    s = summarize(df)
    toy = s["sources"]["toy"]
    for counts in [s["totals"], toy["totals"], *toy["classes"].values()]:
        assert counts["files"] == counts["ok"] + counts["quarantined"] + counts["skipped"]
    assert s["totals"]["files"] == len(TOY_MEMBERS)
    assert toy["classes"]["Monocyte"]["quarantined_reasons"] == {"not an image": 1, "truncated": 1, "zero bytes": 1}
    assert toy["classes"]["ig"]["excluded"] == 1 and toy["classes"]["ig"]["stored"] == 0
    assert toy["labels"] == {"basophil": 2, "eosinophil": 0, "lymphocyte": 0, "monocyte": 0, "neutrophil": 1}
    assert s["totals"]["skipped_reasons"] == {"macOS metadata": 2, "not an image extension": 1}


def test_parallel_decoding_is_deterministic(toy_raw, tmp_path):
    one = ingest_sources([RAABIN_LIKE], toy_raw, tmp_path / "1.csv", tmp_path / "s1", {"workers": 1})
    two = ingest_sources([RAABIN_LIKE], toy_raw, tmp_path / "2.csv", tmp_path / "s2", {"workers": 2})
    pd.testing.assert_frame_equal(one, two)
    assert (tmp_path / "1.csv").read_bytes() == (tmp_path / "2.csv").read_bytes()
    assert (tmp_path / "s1" / "shard-00000.pack").read_bytes() == (tmp_path / "s2" / "shard-00000.pack").read_bytes()


def test_bad_sources_are_config_errors(toy_raw, tmp_path):
    with pytest.raises(ConfigError, match="unknown labels"):
        ingest_sources([{**RAABIN_LIKE, "classes": {"Basophil": "baso"}}], toy_raw, tmp_path / "m.csv", tmp_path / "s")
    with pytest.raises(ConfigError, match="duplicate source ids"):
        ingest_sources([RAABIN_LIKE, RAABIN_LIKE], toy_raw, tmp_path / "m.csv", tmp_path / "s")


def test_cli_ingests_folders_and_archives(toy_raw, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "Lymphocyte").mkdir(parents=True)
    (folder / "Lymphocyte" / "l.png").write_bytes(image_bytes(9, "PNG"))
    (folder / "band").mkdir()
    (folder / "band" / "x.jpg").write_bytes(image_bytes(10))
    out, store = tmp_path / "cli.csv", tmp_path / "cli-store"
    assert cli_main(["ingest", str(folder), str(toy_raw / "toy.zip"), "--out", str(out), "--store", str(store),
                     "--summary", str(tmp_path / "sum.json"), "--workers", "1"]) == 0
    df = read_manifest(out)
    assert set(df["source"]) == {"mine", "toy"}
    mine = df[df["source"] == "mine"].set_index("member")
    assert mine.loc["Lymphocyte/l.png", "label"] == "lymphocyte" and mine.loc["Lymphocyte/l.png", "shard"] >= 0
    assert mine.loc["band/x.jpg", ["class_folder", "label", "status"]].tolist() == ["band", "", "ok"]
    assert "mine: 2 files" in capsys.readouterr().out and (tmp_path / "sum.json").is_file()
    assert cli_main(["ingest", str(tmp_path / "nope.zip"), "--out", str(out), "--store", str(store)]) == 2
    assert "archive not found" in capsys.readouterr().err


def test_cli_password_rar_is_one_line_error(rar_fixtures, tmp_path, capsys):
    code = cli_main(["ingest", str(rar_fixtures / "rar5-psw.rar"), "--out", str(tmp_path / "m.csv"),
                     "--store", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().endswith("rar5-psw.rar") and "password-protected" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.csv").exists()


# ----------------------------------------------------------------------------- real data


def readme_counts(readme: Path) -> tuple[dict[str, int], int]:
    """Per-folder image counts of the PBC mirror README table, and its total file count."""
    counts = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[a-z]+", cells[0]) and re.match(r"\d", cells[1]):
            images = re.search(r"\(([\d,]+) images", cells[1]) or re.match(r"([\d,]+)", cells[1])
            counts[cells[0]] = int(images.group(1).replace(",", ""))
    total = int(re.search(r"([\d,]+) files,", readme.read_text(encoding="utf-8")).group(1).replace(",", ""))
    return counts, total


@pytest.mark.slow
@pytest.mark.realdata
def test_real_pbc_ingest(pbc_zip, tmp_path):
    counts, total = readme_counts(pbc_zip.parent / "README.md")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / pbc_zip.name).symlink_to(pbc_zip)
    source = get_source("pbc")
    df = ingest_sources([source], raw, tmp_path / "manifest.csv", tmp_path / "store", {"workers": 0})
    s = summarize(df)["sources"]["pbc"]
    assert len(df) == total == 10_599
    assert s["totals"]["files"] == s["totals"]["ok"] + s["totals"]["quarantined"] + s["totals"]["skipped"]
    assert s["labels"] == {label: counts[label] for label in LABELS}
    assert sum(s["labels"].values()) == 10_298 == s["totals"]["stored"]
    excluded = set(source["exclude"])
    assert s["totals"]["excluded"] == sum(counts[c] for c in excluded) == 300
    assert all(s["classes"][c]["ok"] == counts[c] and s["classes"][c]["stored"] == 0 for c in excluded)
    bad = df[df["status"] != "ok"]
    assert bad["member"].tolist() == ["PBC_dataset_normal_DIB/neutrophil/.DS_169665.jpg"]
    assert bad["status"].iloc[0] == "quarantined" and bad["reason"].iloc[0].startswith("not an image")
    # a sample of stored rows holds exactly the zip's bytes
    store = ImageStore(tmp_path / "store")
    with zipfile.ZipFile(pbc_zip) as zf:
        for r in df[df["shard"] >= 0].iloc[::997].itertuples():
            assert store.read_row(r) == zf.read(r.member)
    assert set(df.loc[df["status"] == "ok", "format"]) == {"JPEG"}
