"""Shared test fixtures.

Tests that need ../shared (the real PBC mirror, the RAR fixtures) use the `shared_dir`
fixture: it fails when CI=true and ../shared is missing, and skips with a reason elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WBC_SHARED", ROOT.parent / "shared")).resolve()


def _need(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"{path} is missing (the ../shared folder beside the checkout)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " and CI=true: real-data tests must run in CI")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def pbc_zip() -> Path:
    """The real PBC archive (five WBC classes complete + 100 of each excluded class)."""
    return _need(SHARED / "data" / "pbc" / "PBC_dataset_normal_DIB.zip")


@pytest.fixture(scope="session")
def rar_fixtures() -> Path:
    return _need(SHARED / "fixtures" / "rar")
