"""The GitHub workflow a user copies (.github/workflows/repro.yml) passes on a plain runner.

`test_workflow_passes_without_shared` runs the job's steps, in order, in a temporary copy of the
repository (`test_readme.copy_checkout`) with NO ../shared beside it, each with the workflow, job
and step `env` and the job's shell (`bash --noprofile --norc -eo pipefail`, GitHub's `shell: bash`).
The rule for steps that only make sense on GitHub:

- `uses:` steps (checkout, setup-python) are skipped: the copy is the checkout, this Python runs it;
- install steps (every command is `apt-get ...` or `pip install ...`) are replaced by a check that
  what they install is here: each pinned `name==version` of the requirements file is installed at
  that version, and each apt package's command of the same name is on PATH;
- $GITHUB_STEP_SUMMARY and $RUNNER_TEMP point into the test's temporary folder, CI=true as on a
  runner; the copy has no `origin`, so `git fetch origin main` fails, which the workflow tolerates;
- the pytest step must not run this test again (forever), nor repeat what this session already
  runs: the test sets PYTEST_ADDOPTS="-m 'realdata and not slow' --junitxml=<tmp>/junit.xml", which
  selects the tests that need ../shared (conftest marks every test using its fixtures `realdata`),
  the only ones whose outcome depends on ../shared being there, and writes a report, from which the
  test asserts that they were skipped with the reason, not failed. The other tests run in this
  session with the same code. WBC_SHARED and WBC_REQUIRE_SHARED are removed from the environment
  (a user's runner has neither).

The steps run once per session (`run_workflow`, the `workflow_run` fixture of tests/conftest.py);
tests/test_readme.py then runs the README's blocks in the reproduced copy.

The copy's own `src/` comes first on PYTHONPATH, as the workflow's `pip install -e .` would do.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_readme import copy_checkout

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "repro.yml"
SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c"]
INSTALL = re.compile(r"^(sudo\s+)?(apt-get|apt|pip3?|python3?\s+-m\s+pip)\s")
DROPPED_ENV = ("WBC_SHARED", "WBC_REQUIRE_SHARED", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")
SHARED_SKIP = "is missing (the ../shared folder beside the checkout)"  # tests/conftest.py's reason


def load_job() -> dict:
    """The workflow's single job, with the workflow-level env merged into the job's."""
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    (job,) = workflow["jobs"].values()
    job["env"] = {**(workflow.get("env") or {}), **(job.get("env") or {})}
    return job


def commands(script: str) -> list[str]:
    """The simple commands of a `run:` script (lines split on `&&`, comments dropped)."""
    parts = (part.strip() for line in script.splitlines() for part in line.split("&&"))
    return [part for part in parts if part and not part.startswith("#")]


def step_kind(step: dict) -> str:
    """`github` (a `uses:` step), `install` (only apt-get/pip commands) or `run`."""
    if "run" not in step:
        return "github"
    return "install" if all(INSTALL.match(cmd) for cmd in commands(step["run"])) else "run"


def missing_installs(script: str, cwd: Path) -> list[str]:
    """What an install step would install that is not here (empty when all present)."""
    missing = []
    for cmd in commands(script):
        words = shlex.split(cmd)
        if "apt-get" in words and "install" in words:
            pkgs = [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
            missing += [f"{p} (apt: not on PATH)" for p in pkgs if shutil.which(p) is None]
        elif "pip" in words and "-r" in words:
            missing += missing_requirements(cwd / words[words.index("-r") + 1])
    return missing


def missing_requirements(path: Path) -> list[str]:
    """The `name==version` pins of a requirements file that are not installed at that version."""
    missing = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;#]+).*", line.strip())
        if not match:
            continue  # comments, options (-e .), unpinned lines
        name, want = match.groups()
        try:
            have = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != want:
            missing.append(f"{name}=={want} (installed: {have})")
    return missing


def runner_env(job: dict, step: dict, tmp: Path, work: Path) -> dict[str, str]:
    """The environment of one step: this one minus ../shared settings, plus the runner's and the
    workflow's variables and the pytest selection (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(CI="true", RUNNER_TEMP=str(tmp / "runner_temp"), GITHUB_WORKSPACE=str(work),
               GITHUB_STEP_SUMMARY=str(tmp / "step_summary.md"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(work / "src"), env.get("PYTHONPATH")])),
               PYTEST_ADDOPTS=f"-m 'realdata and not slow' --junitxml={tmp / 'junit.xml'} -p no:cacheprovider")
    env.update({k: str(v) for k, v in {**job["env"], **(step.get("env") or {})}.items()})
    return env


def run_step(job: dict, step: dict, tmp: Path, work: Path) -> str | None:
    """Run one `run:` step like the runner does; its failure (with its output), None when it passed."""
    cwd = work / step.get("working-directory", ".")
    proc = subprocess.run([*SHELL, step["run"]], cwd=cwd, env=runner_env(job, step, tmp, work),
                          capture_output=True, text=True, timeout=job.get("timeout-minutes", 90) * 60)
    if proc.returncode == 0:
        return None
    return (f"workflow step {step.get('name', step['run'])!r} failed ({proc.returncode}):\n{step['run']}"
            f"\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")


@dataclass
class WorkflowRun:
    """The outcome of the job's steps in a copy of the checkout (`work`; reports under `tmp`)."""
    work: Path
    tmp: Path
    failure: str | None = None  # the first step that failed, with its output
    skipped: str | None = None  # why the steps did not run


def run_workflow(tmp: Path) -> WorkflowRun:
    """Run the workflow's steps in order in a copy of this checkout under `tmp`, without ../shared,
    stopping at the first failing step."""
    work = tmp / "clone" / "wbc-repro"
    elsewhere = installed_elsewhere()
    if elsewhere is not None:
        return WorkflowRun(work, tmp, skipped=(
            f"the wbc package is installed from another checkout ({elsewhere}), not this one's src/: "
            "install this checkout as the README says (pip install -e .) to run the workflow test"))
    job = load_job()
    work.mkdir(parents=True)
    (tmp / "runner_temp").mkdir()
    copy_checkout(work)
    if (work.parent / "shared").exists():
        return WorkflowRun(work, tmp, failure=f"{work.parent / 'shared'} exists beside the copy")
    for step in job["steps"]:
        kind = step_kind(step)
        if kind == "install":
            missing = missing_installs(step["run"], work)
            if missing:
                return WorkflowRun(work, tmp, failure=f"step {step.get('name')!r}: not installed here: {missing}")
        elif kind == "run":
            failure = run_step(job, step, tmp, work)
            if failure is not None:
                return WorkflowRun(work, tmp, failure=failure)
    return WorkflowRun(work, tmp)


def junit_outcomes(path: Path) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, message) from a pytest junit XML report."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        result = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        out[name] = ("passed", "") if result is None else (result.tag, result.get("message", ""))
    return out


def test_workflow_steps_are_classified():
    """The rule above applied to the workflow: GitHub-only, install, and the steps that run."""
    kinds = [(step.get("name") or step.get("uses"), step_kind(step)) for step in load_job()["steps"]]
    assert [k for _, k in kinds[:3]] == ["github", "github", "install"], kinds
    run_steps = [step["run"] for step in load_job()["steps"] if step_kind(step) == "run"]
    assert run_steps[0].strip() == "pytest"  # the README's test command, selected through PYTEST_ADDOPTS
    assert sum("dvc repro" in s for s in run_steps) == 3


def test_install_rule():
    assert step_kind({"run": "sudo apt-get update -qq && sudo apt-get install -y unar\npip install -r r.txt"}) \
        == "install"
    assert step_kind({"run": "pip install -r r.txt\npytest"}) == "run"
    assert step_kind({"uses": "actions/checkout@v4"}) == "github"


def installed_elsewhere() -> str | None:
    """Where `wbc` is imported from when it is not this checkout's src/ (None when it is)."""
    import wbc

    here = Path(wbc.__file__).resolve()
    return None if (ROOT / "src") in here.parents else str(here.parent)


@pytest.mark.slow
def test_workflow_passes_without_shared(workflow_run):
    if workflow_run.skipped is not None:
        pytest.skip(workflow_run.skipped)
    assert workflow_run.failure is None, workflow_run.failure
    tmp_path, work = workflow_run.tmp, workflow_run.work
    outcomes = junit_outcomes(tmp_path / "junit.xml")
    bad = {name: res for name, res in outcomes.items() if res[0] in ("failure", "error")}
    assert not bad, bad
    shared = {name: msg for name, (kind, msg) in outcomes.items() if kind == "skipped" and SHARED_SKIP in msg}
    assert shared, f"the pytest step selected no test that needs ../shared: {sorted(outcomes)}"
    assert "test_download::test_real_pbc_entry_resolves_in_the_shared_mirror" in {
        n.split(".")[-1] for n in shared}, sorted(shared)
    assert all(str((work.parent / "shared").resolve()) in msg for msg in shared.values())
    assert not any("test_workflow" in name and "without_shared" in name for name in outcomes)  # no recursion
    summary = (tmp_path / "step_summary.md").read_text()
    assert summary.startswith("# wbc verify: PASS") and "## Params vs main" in summary
