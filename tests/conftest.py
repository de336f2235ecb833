"""Shared test fixtures.

Tests that need ../shared (the real PBC mirror, the RAR fixtures) use the `shared_dir`,
`pbc_zip` and `rar_fixtures` fixtures. When ../shared (or $WBC_SHARED) is missing they skip with
the reason, except when WBC_REQUIRE_SHARED=1: then they fail. Our own CI (`.ci/run`) sets it, so
the real-data tests cannot silently stop running there; a user's runner (CI=true but no
../shared, e.g. the GitHub workflow in .github/workflows/repro.yml) skips them.

The session fails when the run changed tracked files or left new ones outside the declared DVC
outputs (tests/git_clean.py), and the CPU kernels are pinned before torch loads (wbc.learn.kernels).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from wbc.learn import kernels
from git_clean import pytest_sessionfinish, pytest_sessionstart  # noqa: F401  (hooks: the run leaves git clean)

# Before any test module imports torch: the CPU kernels the training code pins (wbc.learn.kernels), so
# tests that train or load a model in this process run the same kernels as `dvc repro`.
kernels.pin_environment(kernels.DEFAULT_LEVEL)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WBC_SHARED", ROOT.parent / "shared")).resolve()
REQUIRE_ENV = "WBC_REQUIRE_SHARED"  # =1: a missing ../shared fails the tests that need it


def _need(path: Path) -> Path:
    if path.exists():
        return path
    msg = f"{path} is missing (the ../shared folder beside the checkout)"
    if os.environ.get(REQUIRE_ENV, "") == "1":
        pytest.fail(msg + f" and {REQUIRE_ENV}=1: the real-data tests must run here")
    pytest.skip(msg)


#: The fixtures that need ../shared; every test using one (directly or through another fixture) is
#: marked `realdata` at collection, which is how the workflow test selects them (tests/test_workflow.py).
SHARED_FIXTURES = {"shared_dir", "pbc_zip", "rar_fixtures"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory):
    """The GitHub workflow's steps, run once per session in a copy of the checkout without ../shared
    (tests/test_workflow.run_workflow): test_workflow asserts on the outcome, and test_readme runs the
    README's blocks in that copy afterwards, so the embedded pipeline runs twice per session (the
    workflow's `dvc repro` and `dvc repro -f`), not three times."""
    from test_workflow import run_workflow

    return run_workflow(tmp_path_factory.mktemp("workflow"))


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
