"""wbc.dataset.inputs: images from files, folders and zip archives, read safely (hostile files built here)."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wbc import LABELS
from wbc.data.archives import Limits
from wbc.apps.cli import main
from wbc.dataset.inputs import InputItem, InputLimits, collect_inputs, iter_images, read_items
from wbc.learn.models import build_model, save_checkpoint
from wbc.dataset.pack import IMAGENET_MEAN, IMAGENET_STD, square_resize
from wbc.data.store import DEFAULT_MAX_PIXELS, decode_image

MiB = 2**20
#: Small limits so that hostile files stay small and fast to build.
LIMITS = InputLimits(archive=Limits(max_member_bytes=1 * MiB, max_total_bytes=4 * MiB),
                     max_pixels=1_000_000, max_members=20)


def _image_bytes(seed: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _zeros_zip(path: Path, name: str, size: int) -> Path:
    """A zip bomb: one member of `size` zero bytes, written in chunks (never whole in memory)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w", force_zip64=True) as fh:
        for _ in range(size // MiB):
            fh.write(bytes(MiB))
    return path


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height black pixels: huge dimensions, tiny file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, comp = bytes(1 + (width + 7) // 8), zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _read_all(paths: list[Path], limits: InputLimits = LIMITS) -> dict[str, tuple[Image.Image | None, str]]:
    return {it.name: (im, err) for it, im, err in iter_images(collect_inputs(paths, limits), limits)}


@pytest.fixture()
def spy_zip_open(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the zip members opened for reading (to prove a member was refused unread)."""
    opened: list[str] = []
    original = zipfile.ZipFile.open

    def spy(self, name, mode="r", *args, **kwargs):
        if mode == "r":
            opened.append(getattr(name, "filename", name))
        return original(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return opened


# ----------------------------------------------------------------------------- collecting


def test_collect_inputs_files_folders_zips(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(_image_bytes(1, (40, 30)))
    (folder / "sub" / "b.jpg").write_bytes(_image_bytes(2, (50, 64), "JPEG"))
    (folder / "notes.txt").write_text("not an image: skipped inside folders")
    archive = _zip(tmp_path / "batch.zip", {"slide/z.png": _image_bytes(4, (33, 45)), "slide/y.jpg": b"x",
                                            "__MACOSX/slide/._z.png": b"\x00\x05", "slide/readme.txt": b"skipped"})
    items = collect_inputs([folder, archive, tmp_path / "missing.png"], LIMITS)
    assert [i.name for i in items] == [str(folder / "a.png"), str(folder / "sub" / "b.jpg"),
                                       f"{archive}:slide/y.jpg", f"{archive}:slide/z.png", str(tmp_path / "missing.png")]
    assert items[-1].error == "no such file or folder" and all(not i.error for i in items[:-1])


def test_read_items_is_the_packing_path(tmp_path: Path) -> None:
    data = _image_bytes(3, (50, 36), "JPEG")
    archive = _zip(tmp_path / "a.zip", {"c.jpg": data})
    (tmp_path / "d.jpg").write_bytes(data)
    items = collect_inputs([archive, tmp_path / "d.jpg"], LIMITS)
    rows = list(read_items(items, 24, LIMITS))
    expected = square_resize(decode_image(data), 24)
    assert [err for _, _, err in rows] == ["", ""]
    for _, arr, _ in rows:
        assert arr.dtype == np.uint8 and arr.shape == (3, 24, 24)
        np.testing.assert_array_equal(arr, expected)
    (_, image, _), = iter_images(items[:1], LIMITS)
    assert image.mode == "RGB" and image.size == (50, 36)


def test_limits_from_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert InputLimits.coerce(None) == InputLimits()  # no params.yaml: the defaults
    assert InputLimits().max_pixels == DEFAULT_MAX_PIXELS
    (tmp_path / "params.yaml").write_text("ingest:\n  max_pixels: 1000\n  max_member_bytes: 2048\n  max_members: 7\n")
    limits = InputLimits.coerce(None)
    assert (limits.max_pixels, limits.archive.max_member_bytes, limits.max_members) == (1000, 2048, 7)
    assert limits.archive.max_total_bytes == Limits().max_total_bytes
    assert InputLimits.coerce({"max_pixels": 5}).max_pixels == 5


# ----------------------------------------------------------------------------- hostile archives


def test_zip_bomb_refused_from_its_declared_size(tmp_path: Path, spy_zip_open: list[str]) -> None:
    bomb = _zeros_zip(tmp_path / "bomb.zip", "cells/bomb.png", 64 * MiB)
    assert bomb.stat().st_size < 256 * 1024  # 64 MiB declared, a few KiB on disk
    tracemalloc.start()
    try:
        items = collect_inputs([bomb], LIMITS)
        rows = list(iter_images([InputItem(bomb, "cells/bomb.png")], LIMITS))  # even when asked directly
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(items) == 1 and items[0].member is None
    assert items[0].error == (f"unreadable archive: member too large: cells/bomb.png in {bomb} "
                              f"({64 * MiB} bytes > max_member_bytes {MiB})")
    assert rows[0][1] is None and rows[0][2] == items[0].error
    assert spy_zip_open == []  # refused from the listing: not a byte decompressed
    assert peak < 4 * MiB


def test_member_inflating_past_its_declared_size(tmp_path: Path) -> None:
    good = _image_bytes(5, (20, 20))
    path = _zip(tmp_path / "liar.zip", {"a.png": bytes(8 * MiB), "b.png": good})
    data = bytearray(path.read_bytes())  # a.png claims 1000 bytes in both headers
    struct.pack_into("<I", data, data.index(b"PK\x03\x04") + 22, 1000)
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, 1000)
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        rows = _read_all([path], InputLimits(archive=Limits(max_member_bytes=16 * MiB)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows[f"{path}:a.png"][0] is None
    assert rows[f"{path}:a.png"][1] == f"unreadable: corrupt data in {path}: a.png (Bad CRC-32 for file 'a.png')"
    assert rows[f"{path}:b.png"][1] == ""  # the next member is still read
    assert peak < 4 * MiB  # stopped at the declared size, never the 8 MiB it inflates to


def test_too_many_members(tmp_path: Path) -> None:
    path = _zip(tmp_path / "many.zip", {f"m{i:03d}.png": b"x" for i in range(21)})
    items = collect_inputs([path], LIMITS)
    assert [(i.name, i.error) for i in items] == [
        (str(path), f"unreadable archive: too many members in {path}: 21 > max_members 20")]


def test_path_traversal_member(tmp_path: Path) -> None:
    path = _zip(tmp_path / "trav.zip", {"ok.png": _image_bytes(6, (10, 10)), "../x.png": _image_bytes(7, (10, 10))})
    rows = _read_all([path])
    assert rows == {str(path): (None, f"unreadable archive: unsafe member name '../x.png' in {path} (path traversal)")}


def test_total_size_limit(tmp_path: Path) -> None:
    path = _zip(tmp_path / "big.zip", {f"m{i}.png": bytes(MiB) for i in range(5)})
    (item,) = collect_inputs([path], LIMITS)
    assert item.error == f"unreadable archive: archive too large: {path} ({5 * MiB} bytes > max_total_bytes {4 * MiB})"


def test_nested_zip_is_listed_not_opened(tmp_path: Path, spy_zip_open: list[str]) -> None:
    inner = _zeros_zip(tmp_path / "inner.zip", "huge.png", 64 * MiB).read_bytes()
    path = _zip(tmp_path / "outer.zip", {"cells/inner.zip": inner, "cells/ok.png": _image_bytes(8, (12, 12))})
    rows = _read_all([path])
    assert rows[f"{path}:cells/inner.zip"] == (None, "nested archive: not opened (extract it and pass the folder)")
    assert rows[f"{path}:cells/ok.png"][0].size == (12, 12)
    assert spy_zip_open == ["cells/ok.png"]


# ----------------------------------------------------------------------------- hostile images


def test_png_decompression_bomb(tmp_path: Path) -> None:
    bomb = _png_bomb(20000, 20000)  # 400 M pixels in ~50 KB
    assert len(bomb) < 100_000
    (tmp_path / "bomb.png").write_bytes(bomb)
    (tmp_path / "big.png").write_bytes(_image_bytes(9, (1200, 1000)))  # 1.2 M pixels > LIMITS.max_pixels
    path = _zip(tmp_path / "b.zip", {"bomb.png": bomb})
    tracemalloc.start()
    try:
        rows = _read_all([tmp_path / "bomb.png", tmp_path / "big.png", path], InputLimits(max_pixels=1_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for name in (str(tmp_path / "bomb.png"), f"{path}:bomb.png"):
        assert rows[name][0] is None and rows[name][1].startswith("bad image: decompression bomb: ")
    assert rows[str(tmp_path / "big.png")] == (None, "bad image: decompression bomb: 1200x1000 pixels > max_pixels 1000000")
    assert peak < 16 * MiB


def test_truncated_jpeg_and_fake_png(tmp_path: Path) -> None:
    jpeg = _image_bytes(10, (64, 64), "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "fake.png").write_bytes(b"hello, I am not a PNG")
    rows = _read_all([tmp_path])
    assert rows[str(tmp_path / "trunc.jpg")][1].startswith("bad image: truncated: ")
    assert rows[str(tmp_path / "fake.png")] == (None, "bad image: not an image: not a recognised image file (21 bytes)")


def test_plain_file_above_member_limit(tmp_path: Path) -> None:
    (tmp_path / "huge.png").write_bytes(bytes(2 * MiB))
    rows = _read_all([tmp_path / "huge.png"])
    assert rows[str(tmp_path / "huge.png")] == (
        None, f"unreadable: file too large: {tmp_path / 'huge.png'} ({2 * MiB} bytes > max_member_bytes {MiB})")


def test_cli_predict_lists_a_hostile_zip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`wbc predict` takes its limits from params.yaml; the bomb is a listed row, the good image predicted."""
    torch.manual_seed(0)
    model = build_model("shufflenet_v2_x1_0", len(LABELS), image_size=32)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, model_name="shufflenet_v2_x1_0", classes=list(LABELS),
                           image_size=32, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), params={},
                           best_epoch=0, val_macro_f1=0.0)
    bomb = _zeros_zip(tmp_path / "bomb.zip", "cells/bomb.png", 8 * MiB)
    (tmp_path / "ok.png").write_bytes(_image_bytes(11, (40, 40)))
    (tmp_path / "params.yaml").write_text(f"ingest:\n  max_member_bytes: {MiB}\n")
    monkeypatch.chdir(tmp_path)
    code = main(["predict", "bomb.zip", "ok.png", "--model", str(ckpt), "--out", "p.csv", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0
    frame = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    expected = f"unreadable archive: member too large: cells/bomb.png in bomb.zip ({8 * MiB} bytes > max_member_bytes {MiB})"
    assert frame["error"].tolist() == [expected, ""]
    assert f"unreadable: bomb.zip: {expected}" in err
    assert frame["label"].tolist()[1] in LABELS
