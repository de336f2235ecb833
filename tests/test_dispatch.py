"""SIMD dispatch of the numeric libraries (wbc.core.dispatch): `import wbc` pins NumPy, OpenCV,
OpenBLAS and FAISS before they load, the pin reaches their floats, and a process that loaded NumPy
first is refused by the stages' check.

An AVX-512 CPU cannot be emulated here (qemu's TCG has no AVX-512), so the level that differs on
every x86-64 CPU is used to prove the mechanism: `baseline` (NumPy's X86_V2, OpenCV up to SSE4.2)
against `avx2`, which render the synthetic dataset differently; the `avx2` level then removes the
AVX-512 targets the same way on a machine that has them.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from wbc.core import dispatch
from wbc.core.errors import ConfigError

needs_x86 = pytest.mark.skipif(not dispatch.is_x86(), reason="the dispatch levels pin x86-64 code only")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (*dispatch.VARIABLES, dispatch.ENV_LEVEL)}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=300)


STATE = """
import json, os, wbc, numpy, cv2, scipy.linalg, threadpoolctl
from wbc.core import dispatch
blas = sorted({i.get("architecture") for i in threadpoolctl.threadpool_info() if i.get("architecture")})
print(json.dumps({**dispatch.check(), "blas": blas, "env": {k: os.environ.get(k) for k in dispatch.VARIABLES}}))
"""


@needs_x86
def test_import_wbc_pins_numpy_opencv_and_openblas_before_they_load() -> None:
    runs = {}
    for level in ("avx2", "baseline"):
        proc = _run(STATE, WBC_CPU_DISPATCH=level)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[level] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert runs["avx2"]["env"]["NPY_DISABLE_CPU_FEATURES"] == "X86_V4 AVX512_ICL AVX512_SPR"
    assert runs["avx2"]["env"]["FAISS_OPT_LEVEL"] == "avx2"
    assert runs["avx2"]["blas"] == ["Haswell"]
    if {"avx2", "fma"} <= dispatch.cpu_flags():
        assert runs["avx2"]["numpy"] == "X86_V3"
        assert "*AVX2 " in runs["avx2"]["opencv"] + " "
    # the lower level really reaches the libraries: NumPy's baseline, OpenCV's AVX2 off, OpenBLAS's Nehalem
    assert runs["baseline"]["numpy"] == "baseline"
    assert "AVX2?" in runs["baseline"]["opencv"] or "AVX2" not in runs["baseline"]["opencv"]
    assert runs["baseline"]["blas"] == ["Nehalem"]
    # native: nothing set, the user's variables are left alone
    proc = _run("import os, wbc; print(os.environ.get('OPENBLAS_CORETYPE'))", WBC_CPU_DISPATCH="native",
                OPENBLAS_CORETYPE="Zen")
    assert proc.stdout.strip() == "Zen"


RENDER = """
import hashlib, sys
from wbc.data.synthetic.archive import build
files, rows = build(scale=0.02, workers=int(sys.argv[1]))
print(hashlib.sha256(b"".join(k.encode() + v for s in sorted(files) for k, v in sorted(files[s].items()))).hexdigest(),
      sum(len(m) for m in files.values()))
"""


@needs_x86
def test_the_level_decides_the_rendered_bytes() -> None:
    """The floats depend on the dispatched code (so a lock made on one CPU needs the pin elsewhere),
    and under one level they do not depend on the worker count or the run."""
    out = {}
    for level, workers in (("avx2", 1), ("avx2", 2), ("baseline", 2)):
        proc = subprocess.run([sys.executable, "-c", RENDER, str(workers)], capture_output=True, text=True, timeout=600,
                              env={**{k: v for k, v in os.environ.items() if k not in dispatch.VARIABLES},
                                   dispatch.ENV_LEVEL: level})
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[(level, workers)] = proc.stdout.split()
    assert int(out[("avx2", 1)][1]) > 20
    assert out[("avx2", 1)] == out[("avx2", 2)]
    if {"avx2", "fma"} <= dispatch.cpu_flags():
        assert out[("baseline", 2)][0] != out[("avx2", 2)][0], "the dispatch level changed no float: it pins nothing"


@needs_x86
def test_a_process_that_loaded_numpy_first_is_refused() -> None:
    code = ("import numpy, cv2\nimport wbc\nfrom wbc.core.params import run_stage\n"
            "run_stage('probe', lambda: 0)\n")
    proc = _run(code, WBC_CPU_DISPATCH="baseline")
    assert proc.returncode == 2
    assert "probe: error: cannot pin the numeric libraries to the 'baseline' level: NumPy runs X86_V3" in proc.stderr
    assert "import wbc first" in proc.stderr and "NPY_DISABLE_CPU_FEATURES=" in proc.stderr
    # imported in the right order, the same stage runs
    proc = _run("import wbc, numpy, cv2\nfrom wbc.core.params import run_stage\nrun_stage('probe', lambda: 0)\n",
                WBC_CPU_DISPATCH="baseline")
    assert proc.returncode == 0, proc.stderr


def test_levels_and_opencv_names_follow_the_cpu() -> None:
    assert dispatch.env_for("native") == {}
    with pytest.raises(ConfigError, match="WBC_CPU_DISPATCH must be one of avx2, baseline, native"):
        dispatch.check_level("avx512")
    with pytest.raises(ConfigError, match="got 'fast'"):
        dispatch.pin_environment(environ={dispatch.ENV_LEVEL: "fast"})
    if not dispatch.is_x86():
        return
    # OpenCV warns on stderr for each listed feature the CPU lacks: only present ones are named
    assert "OPENCV_CPU_DISABLE" not in dispatch.env_for("avx2", flags={"avx2", "fma"})
    skx = dispatch.env_for("avx2", flags={"avx2", "fma", "avx512f", "avx512cd", "avx512bw"})
    assert skx["OPENCV_CPU_DISABLE"] == "AVX512F,AVX512-COMMON,AVX512-SKX"
    # no AVX2 (or unknown flags): no forced AVX2 kernels, which would stop the process
    old_cpu = dispatch.env_for("avx2", flags={"sse4_2", "avx"})
    assert set(old_cpu) == {"NPY_DISABLE_CPU_FEATURES"}
    assert "OPENBLAS_CORETYPE" in dispatch.env_for("baseline", flags=set())
    base = dispatch.env_for("baseline", flags={"avx", "f16c", "fma", "avx2"})
    assert base["OPENCV_CPU_DISABLE"] == "AVX,FP16,FMA3,AVX2" and base["OPENBLAS_CORETYPE"] == "Nehalem"
    fake = {"NPY_DISABLE_CPU_FEATURES": "", dispatch.ENV_LEVEL: "baseline"}
    dispatch.pin_environment(environ=fake)  # overrides the user's value of the same variable
    assert fake["NPY_DISABLE_CPU_FEATURES"] == "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"


NUMERIC = {"numpy", "cv2", "scipy", "sklearn", "skimage", "torch", "torchvision", "pandas", "faiss", "imagehash",
           "matplotlib", "pywt"}


def _first_import(path) -> str | None:
    """'wbc' or the numeric library a script imports first at its top level (None: neither)."""
    import ast

    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            tops = {n.split(".")[0] for n in names}
            if "wbc" in tops:
                return "wbc"
            if tops & NUMERIC:
                return sorted(tops & NUMERIC)[0]
    return None


def test_every_script_imports_wbc_before_the_numeric_libraries(tmp_path) -> None:
    """A stage or benchmark that imports NumPy first runs NumPy's native dispatch: its floats would
    be this CPU's (a stage would also be refused by run_stage's check)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = sorted([*root.glob("stages/*.py"), *root.glob("benchmarks/*.py"), root / "tests" / "conftest.py"])
    assert len(scripts) > 10
    late = {str(p.relative_to(root)): first for p in scripts if (first := _first_import(p)) not in ("wbc", None)}
    assert not late, f"import wbc before {late}"
    # the check sees a late import, through pandas too
    bad = tmp_path / "late.py"
    bad.write_text("import argparse\nimport pandas as pd\nfrom wbc.core import params\n", encoding="utf-8")
    assert _first_import(bad) == "pandas"
