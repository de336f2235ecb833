"""wbc.data.archives: real RAR fixtures (../shared/fixtures/rar) and hostile zip/tar archives built here."""
from __future__ import annotations

import io
import random
import re
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest

from wbc.data import archives
from wbc.data.archives import Limits, iter_members, list_entries, safe_extract
from wbc.core.errors import ArchiveError


# ----------------------------------------------------------------------------- helpers


def parse_exp(path: Path) -> dict[str, dict]:
    """The entries of a rarfile `.exp` listing: name -> {kind, size, crc, target}."""
    out = {}
    for block in re.split(r"\n(?=R5_FILE:|FILE:)", path.read_text(encoding="utf-8")):
        name = re.search(r"^\s*name=(.*)$", block, re.M)
        if not name:
            continue
        kind = re.search(r"is=([-A-Z]{3})", block).group(1)
        target = re.search(r"destination=(.*)$", block, re.M)
        out[name.group(1).rstrip("/")] = {
            "kind": {"F--": "file", "-D-": "dir", "--L": "link"}[kind],
            "size": int(re.search(r"\bdec=(\d+)", block).group(1)),
            "crc": int(re.search(r"crc=0x([0-9a-f]+)", block).group(1), 16),
            "target": target.group(1) if target else "",
        }
    return out


def exp_files(exp: dict[str, dict]) -> dict[str, dict]:
    return {name: e for name, e in exp.items() if e["kind"] == "file"}


def read_all(path: Path, limits=None) -> tuple[dict[str, bytes], list]:
    skipped: list = []
    members = list(iter_members(path, limits, on_skip=skipped.append))
    assert [m.name for m in members] == sorted(m.name for m in members)
    return {m.name: m.data for m in members}, skipped


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ----------------------------------------------------------------------------- RAR fixtures


@pytest.mark.parametrize("name", ["rar3-solid.rar", "rar5-solid.rar", "rar5-crc.rar"])
def test_rar_solid_and_crc_members_match_listing(rar_fixtures, name):
    exp = exp_files(parse_exp(rar_fixtures / f"{name}.exp"))
    data, skipped = read_all(rar_fixtures / name)
    assert sorted(data) == sorted(exp) and skipped == []
    for member, content in data.items():
        assert len(content) == exp[member]["size"] == 2048
        assert zlib.crc32(content) == exp[member]["crc"]


def test_rar3_and_rar5_solid_hold_the_same_bytes(rar_fixtures):
    rar3, _ = read_all(rar_fixtures / "rar3-solid.rar")
    rar5, _ = read_all(rar_fixtures / "rar5-solid.rar")
    assert rar3 == rar5


@pytest.mark.parametrize("name", ["rar3-subdirs.rar", "rar5-subdirs.rar"])
def test_rar_subdirs_spaces_and_non_ascii_names(rar_fixtures, name):
    exp = exp_files(parse_exp(rar_fixtures / f"{name}.exp"))
    data, skipped = read_all(rar_fixtures / name)
    assert sorted(data) == sorted(exp)  # directories (incl. the empty one) are not yielded
    assert any(" " in n for n in data) and any(not n.isascii() for n in data)
    for member, content in data.items():
        assert zlib.crc32(content) == exp[member]["crc"]
    assert skipped == []


def test_rar_listing_reports_dirs_and_sizes(rar_fixtures):
    exp = parse_exp(rar_fixtures / "rar5-subdirs.rar.exp")
    entries = {e.name: e for e in list_entries(rar_fixtures / "rar5-subdirs.rar")}
    assert set(entries) == set(exp)
    for name, e in entries.items():
        assert e.kind == exp[name]["kind"]
        if e.kind == "file":
            assert e.size == exp[name]["size"]


def test_rar_symlinks_are_reported_not_followed(rar_fixtures, tmp_path):
    exp = parse_exp(rar_fixtures / "rar5-symlink-unix.rar.exp")
    data, skipped = read_all(rar_fixtures / "rar5-symlink-unix.rar")
    assert sorted(data) == sorted(exp_files(exp))
    assert zlib.crc32(data["data.txt"]) == exp["data.txt"]["crc"]
    links = {name for name, e in exp.items() if e["kind"] == "link"}
    assert {s.name for s in skipped} == links
    assert all(s.kind == "symlink" and exp[s.name]["target"] in s.reason for s in skipped)
    # random_link -> ../random123 leaves the target: safe_extract refuses before writing anything
    target = tmp_path / "out"
    with pytest.raises(ArchiveError, match="random_link"):
        safe_extract(rar_fixtures / "rar5-symlink-unix.rar", target)
    assert not target.exists() or files_under(target) == []


def test_rar_evil_symlink_traversal_writes_nothing_outside(rar_fixtures, tmp_path):
    parent = tmp_path / "parent"
    target = parent / "target"
    target.mkdir(parents=True)
    evil = rar_fixtures / "rar5-evil-symlink-traversal.rar"
    with pytest.raises(ArchiveError, match="link"):
        safe_extract(evil, target)
    with pytest.raises(ArchiveError, match="up/pwned.txt"):
        list(iter_members(evil))
    assert files_under(parent) == ["target"] and files_under(target) == []
    assert not list(tmp_path.rglob("pwned.txt"))


def test_rar_tool_extraction_never_creates_links(rar_fixtures, tmp_path, monkeypatch):
    """Below the listing checks: the single unar run is asked for regular files only (by index),
    so even reading `up/pwned.txt` directly cannot write through the `up -> ..` link."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    evil = rar_fixtures / "rar5-evil-symlink-traversal.rar"
    exp = parse_exp(evil.with_name(evil.name + ".exp"))
    with archives.open_reader(evil) as reader:
        files = [e for e in reader.entries() if e.kind == "file"]
        members = list(reader.read_files(files))
    assert [m.name for m in members] == ["up/pwned.txt"]
    assert zlib.crc32(members[0].data) == exp["up/pwned.txt"]["crc"]
    assert not list(tmp_path.rglob("pwned.txt")) and files_under(scratch) == []  # temp folder removed


def test_rar_password_protected_is_a_clear_error(rar_fixtures, tmp_path):
    path = rar_fixtures / "rar5-psw.rar"
    with pytest.raises(ArchiveError, match=r"^archive is password-protected: .*rar5-psw\.rar$"):
        list(iter_members(path))
    with pytest.raises(ArchiveError, match="password-protected"):
        safe_extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_rar_corrupt_data_fails_the_crc_check(rar_fixtures, tmp_path):
    good, _ = read_all(rar_fixtures / "rar5-crc.rar")
    raw = bytearray((rar_fixtures / "rar5-crc.rar").read_bytes())
    at = raw.find(good["stest2.txt"])  # stest2.txt is stored uncompressed
    assert at > 0
    raw[at + 1000] ^= 0xFF
    bad = tmp_path / "bad.rar"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="bad.rar"):
        list(iter_members(bad))


def test_rar_safe_extract_subdirs(rar_fixtures, tmp_path):
    exp = parse_exp(rar_fixtures / "rar3-subdirs.rar.exp")
    written = safe_extract(rar_fixtures / "rar3-subdirs.rar", tmp_path / "out")
    assert sorted(written) == sorted(exp_files(exp))
    for name in written:
        assert zlib.crc32((tmp_path / "out" / name).read_bytes()) == exp[name]["crc"]
    assert (tmp_path / "out" / "sub" / "empty").is_dir()


def test_rar_declared_size_limit(rar_fixtures):
    with pytest.raises(ArchiveError, match="member too large"):
        list(iter_members(rar_fixtures / "rar5-solid.rar", Limits(max_member_bytes=1000)))


# ----------------------------------------------------------------------------- zip


def test_zip_members_sorted_with_bytes(tmp_path):
    members = {"b/2.txt": b"two", "a/1.txt": b"one", "a/": b"", "./c.txt": b"three"}
    data, skipped = read_all(make_zip(tmp_path / "ok.zip", members))
    assert data == {"a/1.txt": b"one", "b/2.txt": b"two", "c.txt": b"three"} and skipped == []


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_zip_unsafe_names_are_refused(tmp_path, bad_name):
    parent = tmp_path / "parent"
    parent.mkdir()
    archive = make_zip(tmp_path / "evil.zip", {"ok.txt": b"fine", bad_name: b"pwned"})
    with pytest.raises(ArchiveError, match="unsafe member name"):
        list(iter_members(archive))
    with pytest.raises(ArchiveError, match="unsafe member name"):
        safe_extract(archive, parent / "target")
    assert files_under(parent) == []
    assert not list(tmp_path.rglob("evil.txt"))


def _zip_with_symlink(path: Path, target: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cells/a.jpg", b"image bytes")
        info = zipfile.ZipInfo("cells/link.jpg")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)
    return path


def test_zip_symlink_member_is_skipped_and_refused_by_extract(tmp_path):
    archive = _zip_with_symlink(tmp_path / "link.zip", "../../../etc/passwd")
    data, skipped = read_all(archive)
    assert data == {"cells/a.jpg": b"image bytes"}
    assert [(s.name, s.kind) for s in skipped] == [("cells/link.jpg", "symlink")]
    assert "../../../etc/passwd" in skipped[0].reason and "escaping" in skipped[0].reason
    with pytest.raises(ArchiveError, match="leaves the target folder"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def test_zip_symlink_inside_is_not_created(tmp_path):
    archive = _zip_with_symlink(tmp_path / "link.zip", "a.jpg")
    skipped: list = []
    written = safe_extract(archive, tmp_path / "out", on_skip=skipped.append)
    assert written == ["cells/a.jpg"] and [s.name for s in skipped] == ["cells/link.jpg"]
    assert files_under(tmp_path / "out") == ["cells", "cells/a.jpg"]


def _bomb(path: Path, megabytes: int) -> Path:
    chunk = bytes(2**20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("bomb.bin", "w", force_zip64=True) as fh:
            for _ in range(megabytes):
                fh.write(chunk)
    return path


def test_zip_bomb_refused_by_declared_size(tmp_path):
    archive = _bomb(tmp_path / "bomb.zip", 200)
    assert archive.stat().st_size < 2 * 2**20  # ~200 KB for 200 MB of zeros
    limits = Limits(max_member_bytes=10 * 2**20, max_total_bytes=20 * 2**20)
    with pytest.raises(ArchiveError, match="member too large"):
        list(iter_members(archive, limits))
    with pytest.raises(ArchiveError, match="member too large"):
        safe_extract(archive, tmp_path / "out", limits)
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


def _patch_sizes(raw: bytearray, new_size: int) -> bytearray:
    """Make a small deflated zip lie: uncompressed size `new_size` in both headers (no zip64)."""
    local = raw.find(b"PK\x03\x04")
    raw[local + 22 : local + 26] = new_size.to_bytes(4, "little")
    central = raw.find(b"PK\x01\x02")
    raw[central + 24 : central + 28] = new_size.to_bytes(4, "little")
    return raw


def test_zip_lying_sizes_are_caught_while_decompressing(tmp_path):
    archive = make_zip(tmp_path / "ok.zip", {"big.bin": bytes(3 * 2**20)})
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(_patch_sizes(bytearray(archive.read_bytes()), 1000)))
    assert [e.size for e in list_entries(liar)] == [1000]  # passes the declared-size check
    with pytest.raises(ArchiveError, match="big.bin"):
        list(iter_members(liar, Limits(max_member_bytes=2**20)))


def test_zip_total_limit(tmp_path):
    archive = make_zip(tmp_path / "two.zip", {"a.bin": bytes(600), "b.bin": bytes(600)})
    with pytest.raises(ArchiveError, match="archive too large"):
        list(iter_members(archive, Limits(max_member_bytes=1000, max_total_bytes=1000)))
    assert len(read_all(archive, Limits(max_member_bytes=1000, max_total_bytes=1200))[0]) == 2


def test_zip_budget_counts_real_bytes():
    budget = archives.Budget(Limits(max_member_bytes=10, max_total_bytes=15), "x.zip")
    assert budget.read_all(io.BytesIO(b"0123456789"), "a") == b"0123456789"
    with pytest.raises(ArchiveError, match="max_total_bytes"):
        budget.read_all(io.BytesIO(b"0123456789"), "b")
    with pytest.raises(ArchiveError, match="max_member_bytes"):
        archives.Budget(Limits(max_member_bytes=10), "x.zip").read_all(io.BytesIO(bytes(11)), "c")


def test_zip_password_protected(tmp_path):
    raw = bytearray(make_zip(tmp_path / "p.zip", {"a.txt": b"secret"}).read_bytes())
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(sig) + flag_at
        raw[at] |= 0x01
    locked = tmp_path / "locked.zip"
    locked.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"^archive is password-protected: .*locked\.zip$"):
        list(iter_members(locked))


def test_zip_corrupt_data_is_an_archive_error(tmp_path):
    payload = bytes(range(256)) * 8
    raw = bytearray(make_zip(tmp_path / "s.zip", {"a.bin": payload}, zipfile.ZIP_STORED).read_bytes())
    raw[raw.find(payload) + 500] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt data"):
        list(iter_members(bad))
    not_zip = tmp_path / "garbage.zip"
    not_zip.write_bytes(b"this is not an archive at all")
    with pytest.raises(ArchiveError, match="unsupported archive format"):
        list(iter_members(not_zip))


def test_duplicate_members_refused(tmp_path):
    archive = tmp_path / "dup.zip"
    with pytest.warns(UserWarning), zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", b"1")
        zf.writestr("a.txt", b"2")
    with pytest.raises(ArchiveError, match="duplicate"):
        list(iter_members(archive))


# ----------------------------------------------------------------------------- tar


def _tar(path: Path, mode: str, members: list[tuple[str, bytes | None, str]]) -> Path:
    """members: (name, data or None, link kind ''/'sym'/'hard' with the target in place of data)."""
    with tarfile.open(path, mode) as tf:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type = tarfile.SYMTYPE if link == "sym" else tarfile.LNKTYPE
                info.linkname = data.decode()
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_tar_formats_unsorted_order_is_sorted(tmp_path, suffix, mode):
    members = [("z/last.txt", b"zz", ""), ("./a/first.txt", b"aa", ""), ("m/mid.txt", b"mm", "")]
    data, skipped = read_all(_tar(tmp_path / f"t{suffix}", mode, members))
    assert list(data.items()) == [("a/first.txt", b"aa"), ("m/mid.txt", b"mm"), ("z/last.txt", b"zz")]
    assert skipped == []


def test_tar_escaping_symlink_and_hardlink(tmp_path):
    parent = tmp_path / "parent"
    parent.mkdir()
    archive = _tar(tmp_path / "links.tar.gz", "w:gz", [
        ("cells/a.jpg", b"image", ""),
        ("cells/sym.jpg", b"../../outside.jpg", "sym"),
        ("cells/hard.jpg", b"../outside.jpg", "hard"),
    ])
    data, skipped = read_all(archive)
    assert data == {"cells/a.jpg": b"image"}
    assert {(s.name, s.kind) for s in skipped} == {("cells/sym.jpg", "symlink"), ("cells/hard.jpg", "hardlink")}
    assert all("escaping" in s.reason for s in skipped)
    with pytest.raises(ArchiveError, match="leaves the target folder"):
        safe_extract(archive, parent / "target")
    assert files_under(parent) == [] and not list(tmp_path.rglob("outside.jpg"))


def test_tar_member_through_a_link_and_traversal_refused(tmp_path):
    through = _tar(tmp_path / "through.tar", "w", [("up", b"..", "sym"), ("up/pwned.txt", b"x", "")])
    with pytest.raises(ArchiveError, match="goes through the link"):
        list(iter_members(through))
    traversal = _tar(tmp_path / "trav.tar", "w", [("../pwned.txt", b"x", "")])
    with pytest.raises(ArchiveError, match="unsafe member name"):
        safe_extract(traversal, tmp_path / "out")
    assert not list(tmp_path.rglob("pwned.txt"))


@pytest.mark.parametrize("suffix,mode", [(".tar.gz", "w:gz"), (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_tar_corrupt_compressed_data_is_an_archive_error(tmp_path, suffix, mode):
    payload = random.Random(0).randbytes(64 * 1024)  # incompressible: the middle byte is member data
    archive = _tar(tmp_path / f"t{suffix}", mode, [("a.bin", payload, "")])
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="corrupt"):
        list(iter_members(archive))


# ----------------------------------------------------------------------------- folders


def test_folder_reader_skips_symlinks(tmp_path):
    root = tmp_path / "data"
    (root / "Neutrophil").mkdir(parents=True)
    (root / "Neutrophil" / "a.jpg").write_bytes(b"a")
    (root / "Neutrophil" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    data, skipped = read_all(root)
    assert data == {"Neutrophil/a.jpg": b"a"}
    assert [(s.name, s.kind) for s in skipped] == [("Neutrophil/link.jpg", "symlink")]
