"""SIMD dispatch of the numeric libraries: the same floats from NumPy, OpenCV, OpenBLAS and FAISS
on any x86-64 CPU with AVX2.

Why: like PyTorch (`wbc.learn.kernels`), these libraries pick their vectorised code at run time
from the CPU they find, and the paths differ in the last bits: NumPy's `exp`, `log`, `cos` on an
AVX-512 CPU (its X86_V4 targets) are other implementations than on an AVX2 one, and one ULP in a
rendered stain density moves a JPEG coefficient. Measured here: the synthetic dataset (scale
0.05) rendered with NumPy's X86_V3 (AVX2) targets and with its X86_V2 baseline differs in 49 of 119
images (tests/test_dispatch.py checks it at scale 0.02), so the embedded `dvc.lock` made on an
AVX-512 machine did not reproduce on an AVX2 one, and every stage after `download` differed.

A level names one choice for all four libraries (the same names as `train.cpu_kernels`):
- `avx2` (default): NumPy without its X86_V4 / AVX512_ICL / AVX512_SPR targets, OpenCV without
  its AVX-512 dispatch, OpenBLAS's Haswell kernels, FAISS's avx2 build. Every x86-64 CPU with
  AVX2 and FMA (Intel since 2013, AMD since 2015) then runs the same code.
- `baseline`: NumPy's X86_V2 baseline, OpenCV up to SSE4.2, OpenBLAS's Nehalem kernels, FAISS's
  generic build: any x86-64 CPU, slower.
- `native`: nothing set (the fastest code of this CPU; results are per machine).
On a CPU without AVX2 (or whose flags cannot be read) the `avx2` level sets only NumPy's variable:
forcing AVX2 kernels there would stop the process; results then are that CPU's.

The libraries read their variable once, when they load, so the variables must be in the
environment before NumPy is imported: `import wbc` sets them (`pin_environment`, level from
$WBC_CPU_DISPATCH, default avx2), which every stage script, the `wbc` command and the tests do
first. Worker processes inherit them. `check` (called by every stage through
`wbc.core.params.run_stage`) raises ConfigError when NumPy or OpenCV was loaded before and runs
targets the level excludes. Off x86 nothing is set.

Imports nothing heavy: `import wbc` must stay cheap and must not load NumPy itself.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from wbc.core.errors import ConfigError

LEVELS = ("avx2", "baseline", "native")
DEFAULT_LEVEL = "avx2"
ENV_LEVEL = "WBC_CPU_DISPATCH"  # which level `import wbc` pins

# NumPy 2.4's dispatch targets above each level (requirements.txt pins NumPy; other names warn).
_NUMPY_OFF = {
    "avx2": ("X86_V4", "AVX512_ICL", "AVX512_SPR"),
    "baseline": ("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR"),
}
# OpenCV's names (cv2.getCPUFeaturesLine) with the /proc/cpuinfo flag that makes each present:
# OpenCV warns on stderr for a feature the CPU lacks, so only present ones are listed.
_AVX512_CV = (("AVX512F", "avx512f"), ("AVX512-COMMON", "avx512cd"), ("AVX512-SKX", "avx512bw"),
              ("AVX512-CLX", "avx512_vnni"), ("AVX512-ICL", "avx512_vbmi2"))
_OPENCV_OFF = {
    "avx2": _AVX512_CV,
    "baseline": (("AVX", "avx"), ("FP16", "f16c"), ("FMA3", "fma"), ("AVX2", "avx2")) + _AVX512_CV,
}
_OPENBLAS_CORE = {"avx2": "Haswell", "baseline": "Nehalem"}
_FAISS_LEVEL = {"avx2": "avx2", "baseline": "generic"}
VARIABLES = ("NPY_DISABLE_CPU_FEATURES", "OPENCV_CPU_DISABLE", "OPENBLAS_CORETYPE", "FAISS_OPT_LEVEL")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ConfigError(f"{ENV_LEVEL} must be one of {', '.join(LEVELS)}; got {level!r}")
    return level


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386", "x86")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty where it cannot be read)."""
    info = Path("/proc/cpuinfo")
    try:
        text = info.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def env_for(level: str, flags: set[str] | None = None) -> dict[str, str]:
    """The environment variables a level sets ({} for `native`, or off x86). `flags`: the CPU's
    /proc/cpuinfo flags (this CPU's by default), which decide the OpenCV names listed."""
    check_level(level)
    if level == "native" or not is_x86():
        return {}
    flags = cpu_flags() if flags is None else flags
    out = {"NPY_DISABLE_CPU_FEATURES": " ".join(_NUMPY_OFF[level])}
    if level == "baseline" or {"avx2", "fma"} <= flags:
        # forced AVX2 kernels on a CPU without AVX2 (or one whose flags are unknown) would stop the
        # process with an illegal instruction: there, OpenBLAS and FAISS choose for themselves
        out.update(OPENBLAS_CORETYPE=_OPENBLAS_CORE[level], FAISS_OPT_LEVEL=_FAISS_LEVEL[level])
    cv_off = [name for name, flag in _OPENCV_OFF[level] if flag in flags]
    if cv_off:
        out["OPENCV_CPU_DISABLE"] = ",".join(cv_off)
    return out


def level_from_env(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return check_level(environ.get(ENV_LEVEL, DEFAULT_LEVEL) or DEFAULT_LEVEL)


def pin_environment(level: str | None = None, environ=None) -> dict[str, str]:
    """Write the level's variables into `environ` (os.environ by default), overriding the user's
    values of the same variables; `native` leaves them alone. Returns what was set."""
    environ = os.environ if environ is None else environ
    level = level_from_env(environ) if level is None else check_level(level)
    values = env_for(level)
    environ.update(values)
    return values


def state() -> dict[str, str]:
    """What the already-loaded libraries run now (a library not loaded yet is not loaded here):
    NumPy's highest enabled dispatch target, OpenCV's feature line ('?' marks a disabled one)."""
    out: dict[str, str] = {}
    umath = sys.modules.get("numpy._core._multiarray_umath")
    if umath is not None:
        feats = umath.__cpu_features__
        on = [t for t in umath.__cpu_dispatch__ if feats.get(t)]
        out["numpy"] = on[-1] if on else "baseline"
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "getCPUFeaturesLine"):
        out["opencv"] = cv2.getCPUFeaturesLine()
    return out


def check(level: str | None = None) -> dict[str, str]:
    """Raise ConfigError when NumPy or OpenCV, already loaded in this process, runs a target the
    level excludes (it was imported before `wbc`, or with other variables). Returns `state()`."""
    level = level_from_env() if level is None else check_level(level)
    now = state()
    if level == "native" or not is_x86():
        return now
    bad = []
    umath = sys.modules.get("numpy._core._multiarray_umath")
    if umath is not None:
        on = [t for t in _NUMPY_OFF[level] if umath.__cpu_features__.get(t)]
        if on:
            bad.append(f"NumPy runs {', '.join(on)}")
    if "opencv" in now:
        shown = now["opencv"].split()
        on = [name for name, flag in _OPENCV_OFF[level] if any(s.lstrip("*") == name for s in shown)]
        if on:
            bad.append(f"OpenCV runs {', '.join(on)}")
    if bad:
        wanted = " ".join(f"{k}='{v}'" for k, v in env_for(level).items())
        raise ConfigError(f"cannot pin the numeric libraries to the {level!r} level: {'; '.join(bad)}. They were "
                          f"loaded before wbc: import wbc first, or start Python with {wanted}")
    return now
