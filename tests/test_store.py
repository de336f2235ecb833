"""wbc.data.store: decode_image (modes, broken files, bombs) and the shard store."""
from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wbc.data.store import BadImage, ImageStore, StoreError, StoreWriter, decode, decode_image, to_rgb


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(size=(64, 48), seed=0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but holds no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- decode_image


def test_rgb_png_is_lossless():
    im = noise()
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(im))


def test_greyscale_becomes_three_equal_channels():
    grey = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) % 256
    d = decode(encode(Image.fromarray(grey.astype(np.uint8), "L"), "PNG"))
    arr = np.asarray(d.image)
    assert (d.format, d.mode, d.image.mode) == ("PNG", "L", "RGB")
    assert arr.shape == (32, 64, 3) and all(np.array_equal(arr[..., c], grey) for c in range(3))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)   # opaque red
    rgba[0, 1] = (0, 0, 255, 0)     # fully transparent blue -> white
    rgba[0, 2] = (0, 0, 0, 128)     # half black -> mid grey
    d = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    arr = np.asarray(d.image).astype(int)
    assert d.mode == "RGBA"
    assert arr[0, 0].tolist() == [255, 0, 0] and arr[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(arr[0, 2] - 127) <= 1)


def test_la_is_composited_on_white():
    la = Image.new("LA", (3, 3), (0, 0))
    assert np.asarray(decode_image(encode(la, "PNG"))).min() == 255


def test_cmyk_converts_to_rgb():
    cmyk = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan
    d = decode(encode(cmyk, "TIFF"))
    assert d.mode == "CMYK" and np.asarray(d.image)[0, 0].tolist() == [0, 255, 255]
    jpeg = decode(encode(cmyk, "JPEG", quality=95))
    assert jpeg.format == "JPEG" and jpeg.mode == "CMYK"
    assert np.allclose(np.asarray(jpeg.image)[4, 4], [0, 255, 255], atol=8)


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    assert np.asarray(decode_image(encode(pal, "PNG")))[0, 0].tolist() == [200, 100, 50]
    pal.info["transparency"] = 1
    d = decode(encode(pal, "PNG", transparency=1))
    assert d.mode == "P" and np.asarray(d.image)[0, 0].tolist() == [255, 255, 255]


def test_16bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    d = decode(encode(Image.fromarray(values), "PNG"))
    assert d.mode.startswith("I")
    assert np.asarray(d.image)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_float_and_int32_modes():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(decode_image(encode(f, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]
    i = Image.fromarray(np.array([[-100, 0, 100]], dtype=np.int32), "I")
    stretched = np.asarray(to_rgb(i))[0, :, 0].astype(int)  # outside 0..65535: stretched min..max
    assert stretched[0] == 0 and abs(stretched[1] - 127.5) <= 0.5 and stretched[2] == 255


def test_unsupported_mode_has_a_reason():
    with pytest.raises(BadImage, match="unsupported mode") as info:
        to_rgb(Image.new("HSV", (2, 2)))
    assert info.value.kind == "unsupported mode" and "HSV" in str(info.value)


def test_truncated_jpeg_fails():
    data = encode(noise((200, 150)), "JPEG", quality=90)
    for cut in (len(data) // 2, len(data) - 200):
        with pytest.raises(BadImage) as info:
            decode_image(data[:cut])
        assert info.value.kind == "truncated" and info.value.format == "JPEG"
    assert decode_image(data).size == (200, 150)


def test_zero_bytes_and_non_image_with_jpg_name():
    with pytest.raises(BadImage, match="^zero bytes"):
        decode_image(b"")
    ds_store = b"\x00\x00\x00\x01Bud1" + bytes(6140)  # a macOS .DS_Store saved as .jpg
    with pytest.raises(BadImage, match="^not an image") as info:
        decode_image(ds_store)
    assert info.value.kind == "not an image"
    with pytest.raises(BadImage, match="not an image"):
        decode_image(b"%PDF-1.4 not a raster image")


def test_decompression_bomb_checked_before_loading():
    with pytest.raises(BadImage, match="decompression bomb.*max_pixels 100") as info:
        decode_image(encode(noise((20, 10)), "PNG"), max_pixels=100)  # 200 pixels
    assert info.value.format == "PNG"
    assert decode_image(encode(noise((10, 10)), "PNG"), max_pixels=100).size == (10, 10)
    # a header-only PNG declaring 100,000 x 100,000 pixels: PIL's own bomb error, even with a huge limit
    for limit in (40_000_000, 10**12):
        with pytest.raises(BadImage, match="decompression bomb"):
            decode_image(png_header_only(100_000, 100_000), max_pixels=limit)
    # 10,000 x 10,000 only triggers PIL's DecompressionBombWarning: it becomes BadImage as well
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_image(png_header_only(10_000, 10_000), max_pixels=10**12)


def test_exif_orientation_is_not_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    d = decode(encode(noise((40, 20)), "JPEG", exif=exif.tobytes()))
    assert d.image.size == (40, 20)


def test_decode_does_not_keep_truncated_loading_on():
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        data = encode(noise((200, 150)), "JPEG")
        with pytest.raises(BadImage, match="truncated"):
            decode_image(data[: len(data) // 2])
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


# ----------------------------------------------------------------------------- store


def test_store_round_trip_across_shards(tmp_path):
    rng = np.random.default_rng(7)
    blobs = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(200, 700, 25)]
    blobs.insert(10, rng.integers(0, 256, 2500, dtype=np.uint8).tobytes())  # larger than a shard
    blobs.append(b"")
    with StoreWriter(tmp_path / "store", shard_bytes=1000) as writer:
        index = [writer.add(b) for b in blobs]
    shards = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert shards == [f"shard-{i:05d}.pack" for i in range(len(shards))] and len(shards) > 5
    sizes = [p.stat().st_size for p in sorted((tmp_path / "store").iterdir())]
    assert max(sizes) == 2500 and sorted(sizes)[-2] <= 1000
    assert index[10][1] == 0 and index[10][2] == 2500  # the big blob starts its own shard
    store = ImageStore(tmp_path / "store")
    for blob, (shard, offset, length) in zip(blobs, index):
        assert length == len(blob) and store.read(shard, offset, length) == blob
    clone = pickle.loads(pickle.dumps(store))
    assert clone.read(*index[3]) == blobs[3]
    store.close()


def test_store_rows_and_rgb(tmp_path):
    png = encode(noise((12, 9), seed=3), "PNG")
    with StoreWriter(tmp_path / "s") as writer:
        writer.add(b"padding")
        shard, offset, length = writer.add(png)
    store = ImageStore(tmp_path / "s")
    row = {"id": "x/a.png", "shard": shard, "offset": offset, "length": length}
    assert store.read_row(row) == png
    assert store.read_row(pd.Series(row)) == png
    assert next(pd.DataFrame([row]).itertuples()) and store.read_row(next(pd.DataFrame([row]).itertuples())) == png
    rgb = store.load_rgb(row)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.asarray(noise((12, 9), seed=3)))


def test_store_errors(tmp_path):
    with pytest.raises(StoreError, match="not found"):
        ImageStore(tmp_path / "missing")
    with StoreWriter(tmp_path / "s") as writer:
        writer.add(b"12345")
    store = ImageStore(tmp_path / "s")
    with pytest.raises(StoreError, match="out of range"):
        store.read(0, 3, 10)
    with pytest.raises(StoreError, match="missing store shard"):
        store.read(4, 0, 1)
    with pytest.raises(StoreError, match="a.jpg.*not in the image store"):
        store.read_row({"id": "s/a.jpg", "shard": -1, "offset": -1, "length": -1})


def test_writer_replaces_an_old_store(tmp_path):
    with StoreWriter(tmp_path / "s", shard_bytes=4) as writer:
        for _ in range(5):
            writer.add(b"abcd")
    with StoreWriter(tmp_path / "s", shard_bytes=4) as writer:
        assert writer.add(b"xy") == (0, 0, 2)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["shard-00000.pack"]
