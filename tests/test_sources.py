"""The source registry: the packaged sources.yaml, look-ups and validation errors."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import wbc
from wbc.data import sources
from wbc.core.errors import ConfigError


def test_packaged_registry_is_valid_and_complete():
    reg = sources.load_registry()
    assert sources.validate_registry(reg) == []
    assert reg["labels"] == list(wbc.LABELS)
    assert {"pbc", "raabin_train", "raabin_testa", "raabin_testb", "synth_pbc"} <= set(reg["sources"])
    assert sources.profile_names() == ["synthetic", "pbc", "raabin", "full"]
    for sid in sources.source_ids():
        entry = sources.get_source(sid)
        assert entry["id"] == sid
        assert set(entry["classes"].values()) == set(wbc.LABELS)  # every source covers the 5 classes
        assert entry["generator"] == "synthetic" if sid.startswith("synth_") else sources.source_urls(entry)


def test_get_source_fills_defaults_and_returns_a_copy():
    entry = sources.get_source("pbc")
    assert entry["file"] == "PBC_dataset_normal_DIB.zip"
    assert entry["role"] == "pool" and entry["format"] == "zip"
    assert entry["exclude"] == ["ig", "erythroblast", "platelet"]
    entry["classes"]["basophil"] = "changed"
    entry["file"] = "changed.zip"
    again = sources.get_source("pbc")
    assert again["classes"]["basophil"] == "basophil" and again["file"] == "PBC_dataset_normal_DIB.zip"
    assert sources.get_source("raabin_testb")["role"] == "external"
    assert sources.get_source("raabin_train")["root"] is None


def test_profiles():
    assert [e["id"] for e in sources.profile_sources("full")] == ["pbc", "raabin_train", "raabin_testa",
                                                                  "raabin_testb"]
    assert [e["id"] for e in sources.profile_sources("synthetic")][0] == "synth_pbc"
    assert sources.profile_split("full") == {"val": 3200, "test": 3200}
    assert sources.profile_split("pbc") == {"val": 0.15, "test": 0.15}


def test_unknown_source_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown source 'nope'") as info:
        sources.get_source("nope")
    assert "pbc" in str(info.value) and "raabin_testb" in str(info.value)


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown data profile 'tiny'") as info:
        sources.profile_sources("tiny")
    assert "synthetic, pbc, raabin, full" in str(info.value)
    with pytest.raises(ConfigError, match="valid profiles"):
        sources.profile_split("tiny")


def test_resolve_names_expands_profiles_and_dedups():
    entries = sources.resolve_names(["pbc", "full", "raabin_testa"])
    assert [e["id"] for e in entries] == ["pbc", "raabin_train", "raabin_testa", "raabin_testb"]
    with pytest.raises(ConfigError, match="unknown source or profile 'x'.*profiles: synthetic"):
        sources.resolve_names(["x"])


def _minimal() -> dict:
    return {
        "labels": list(wbc.LABELS),
        "sources": {
            "a": {"title": "A", "url": "https://example.org/a.zip", "file": "a.zip", "format": "zip",
                  "size": 10, "sha256": "ab" * 32, "root": None, "classes": {"Baso": "basophil"},
                  "exclude": ["junk"], "role": "pool", "split": "train"},
            "g": {"title": "G", "generator": "synthetic", "file": "g.zip", "format": "zip",
                  "classes": {"neutrophil": "neutrophil"}, "role": "external", "split": "external"},
        },
        "profiles": {"p": {"sources": ["a", "g"], "split": {"val": 0.1, "test": 5}}},
    }


def _write(tmp_path: Path, reg: dict) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(reg), encoding="utf-8")
    return path


def test_load_registry_from_a_file(tmp_path):
    reg = sources.load_registry(_write(tmp_path, _minimal()))
    assert [e["id"] for e in sources.profile_sources("p", reg)] == ["a", "g"]
    assert sources.get_source("g", reg)["sha256"] is None


def _break(path: str, value):
    """Return a registry with the key at dotted ``path`` set to ``value`` (deleted when value is ...)."""
    reg = _minimal()
    *parents, last = path.split(".")
    node = reg
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return reg


@pytest.mark.parametrize("path, value, message", [
    ("sources.a.role", ..., "sources.a: missing key `role`"),
    ("sources.a.file", ..., "sources.a: missing key `file`"),
    ("sources.a.role", "train", "sources.a: role must be one of pool, external, got 'train'"),
    ("sources.a.split", "dev", "sources.a: split must be one of train, test, external"),
    ("sources.a.classes", {"Baso": "basofil"}, "sources.a: classes.Baso: unknown label 'basofil'"),
    ("sources.a.classes", {}, "classes must be a non-empty mapping"),
    ("sources.a.exclude", ["Baso"], "folders both in classes and exclude"),
    ("sources.a.url", "ftp://example.org/a.zip", "url must be http(s)"),
    ("sources.a.url", ..., "sources.a: needs `url`/`urls` (or `generator`)"),
    ("sources.a.format", "7z", "format must be one of"),
    ("sources.a.file", "../a.zip", "file must be a plain file name"),
    ("sources.a.sha256", "xyz", "sha256 must be null or 64 hex digits"),
    ("sources.a.size", -1, "size must be null or a byte count"),
    ("sources.g.file", "a.zip", "sources.g: file 'a.zip' is also used by a"),
    ("sources.g.generator", "gan", "generator must be one of synthetic"),
    ("profiles.p.sources", ["a", "zz"], "profiles.p: unknown source 'zz'"),
    ("profiles.p.split", {"val": 1.5, "test": 5}, "profiles.p: split.val must be a fraction"),
    ("profiles.p.split", {"val": 0.1}, "`split` must be a mapping with exactly `val` and `test`"),
    ("labels", ["a", "b"], "labels must be"),
    ("profiles", {}, "`profiles` must be a non-empty mapping"),
])
def test_validation_errors(tmp_path, path, value, message):
    reg = _break(path, value)
    assert any(message in p for p in sources.validate_registry(copy.deepcopy(reg))), sources.validate_registry(reg)
    with pytest.raises(ConfigError, match="invalid source registry") as info:
        sources.load_registry(_write(tmp_path, reg))
    assert message in str(info.value)


def test_validation_reports_every_problem(tmp_path):
    reg = _minimal()
    del reg["sources"]["a"]["title"]
    reg["sources"]["g"]["role"] = "both"
    problems = sources.validate_registry(reg)
    assert "sources.a: missing key `title`" in problems
    assert any(p.startswith("sources.g: role must be") for p in problems)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        sources.load_registry(bad)
    with pytest.raises(ConfigError, match="source registry not found"):
        sources.load_registry(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        sources.load_registry(tmp_path / "list.yaml")
