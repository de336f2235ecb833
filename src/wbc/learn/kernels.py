"""CPU kernel pinning: the same floats from training and evaluation on any x86-64 CPU.

Why: PyTorch picks its CPU kernels at run time from the CPU it finds, in three independent layers,
and each changes the last bits of the floats, which 4 epochs from scratch amplify into other
models (issue 24: 97.6 % on one machine, 85.0 % on another of the same kind):
- ATen's own vectorised kernels (`ATEN_CPU_CAPABILITY`: default | avx2 | avx512);
- oneDNN (mkldnn) convolutions and matmuls, which generate code for the widest ISA
  (`ONEDNN_MAX_CPU_ISA`, older name `DNNL_MAX_CPU_ISA`);
- Intel MKL's BLAS (`MKL_CBWR`, Conditional Numerical Reproducibility: the code path and, with
  STRICT, a fixed reduction order).

A level names one choice for all three:
- `avx2` (default): ATen avx2, oneDNN AVX2, MKL `COMPATIBLE`. Every x86-64 CPU with AVX2 (Intel
  since 2013, AMD since 2015) runs the same instructions in the same order. MKL takes its AVX2
  branch (`MKL_CBWR=AVX2,STRICT`) on Intel CPUs only: on an AMD EPYC it reports `AUTO,STRICT` and
  gives other floats, so the level uses MKL's `COMPATIBLE` path, which every vendor honours. In
  these models MKL does only the classifier's matrix products (oneDNN runs the convolutions), so
  it costs little (benchmarks/kernels_bench.py); the same bits on an Intel and an AMD CPU are
  checked by tests/test_kernels.py on a CPU of the other vendor emulated by qemu.
- `baseline`: ATen default, oneDNN SSE4.1, MKL COMPATIBLE: any x86-64 CPU, about 2.6x slower.
- `native`: nothing pinned (the fastest kernels of this CPU; results are per machine).

The three libraries read their setting once, lazily, at their first use, so `pin` sets the
environment of the running process and must run before the first tensor operation: the
training and evaluation entry points call it first. It then checks what can be checked (ATen's
capability, MKL's CBWR mode) and raises ConfigError when a library was already initialised
otherwise (call `wbc.learn.kernels.pin` before any torch work, or set the variables of `env_for`).
oneDNN's ISA cannot be read back; it is set at the same time as the others.

torch is imported inside the functions: importing this module must not initialise torch, and
`wbc --help` stays fast.
"""
from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path
from typing import Any

from wbc.core import dispatch
from wbc.core.errors import ConfigError

LEVELS = ("avx2", "baseline", "native")
DEFAULT_LEVEL = "avx2"

# level -> (ATen capability, oneDNN max ISA, MKL CBWR mode)
_SETTINGS = {
    "avx2": ("avx2", "AVX2", "COMPATIBLE"),  # MKL: the one branch every vendor honours
    "baseline": ("default", "SSE41", "COMPATIBLE"),
}
# MKL's mkl_cbwr_get(MKL_CBWR_ALL) codes (mkl_cbwr.h): branch + 0x10000 for STRICT
_MKL_CODES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
              10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
_MKL_STRICT = 0x10000
_FIXED = {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}  # no run-time change of the thread count


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ConfigError(f"train.cpu_kernels must be one of {', '.join(LEVELS)}; got {level!r}")
    return level


is_x86 = dispatch.is_x86


def cpu_has_avx2() -> bool:
    """True when the CPU has AVX2 and FMA (Linux: /proc/cpuinfo; elsewhere assumed on x86-64)."""
    if not is_x86():
        return False
    flags = dispatch.cpu_flags()
    return not flags or {"avx2", "fma"} <= flags


def env_for(level: str) -> dict[str, str]:
    """The environment variables a level sets ({} for `native`, or off x86)."""
    check_level(level)
    if level == "native" or not is_x86():
        return {}
    aten, onednn, mkl = _SETTINGS[level]
    return {"ATEN_CPU_CAPABILITY": aten, "ONEDNN_MAX_CPU_ISA": onednn, "DNNL_MAX_CPU_ISA": onednn,
            "MKL_CBWR": mkl, **_FIXED}


def pin_environment(level: str = DEFAULT_LEVEL, environ: Any = None) -> dict[str, str]:
    """Write the level's variables into `environ` (os.environ by default), overriding the user's.
    Use before torch is imported (tests/conftest.py) or for a child process's environment."""
    environ = os.environ if environ is None else environ
    values = env_for(level)
    environ.update(values)
    return values


def _mkl_mode() -> str | None:
    """MKL's CBWR mode as a string (e.g. 'AVX2,STRICT'), None when MKL cannot be asked."""
    import torch

    lib_dir = Path(torch.__file__).parent / "lib"
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib", "torch_cpu.dll"):
        path = lib_dir / name
        if not path.is_file():
            continue
        try:
            fn = getattr(ctypes.CDLL(str(path)), "mkl_serv_cbwr_get")
        except (OSError, AttributeError):
            return None
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
        code = int(fn(-1))  # MKL_CBWR_ALL
        branch = _MKL_CODES.get(code & ~_MKL_STRICT, f"0x{code & ~_MKL_STRICT:x}")
        return branch + (",STRICT" if code & _MKL_STRICT else "")
    return None


def state() -> dict[str, str]:
    """What torch uses now: ATen capability, MKL CBWR mode, oneDNN's requested max ISA."""
    import torch

    out = {"aten": str(torch.backends.cpu.get_cpu_capability()).lower()}
    mkl = _mkl_mode()
    if mkl is not None:
        out["mkl_cbwr"] = mkl
    out["onednn_max_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL"))
    return out


def pin(level: str = DEFAULT_LEVEL, threads: int | None = None) -> dict[str, str]:
    """Pin the CPU kernels to `level` (and torch's thread count to `threads`) in this process.

    Returns the verified state (`state()` plus the level), which the checkpoint records. Raises
    ConfigError when torch already runs other kernels (pin was called after the first tensor
    operation). A CPU without AVX2 cannot run the `avx2` level: a warning, and the state says what
    ran. Off x86 the level is recorded and nothing is pinned (bits then match within one
    architecture only; `wbc verify` compares within tolerances).
    """
    check_level(level)
    wanted = pin_environment(level)
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    now = state()
    out = {"level": level, **now}
    if not wanted:
        return out
    aten, _, mkl = _SETTINGS[level]
    if level == "avx2" and not cpu_has_avx2():
        warnings.warn("this CPU has no AVX2: the avx2 kernel level cannot run here, so results will differ "
                      "from AVX2 machines; use train.cpu_kernels: baseline for CPU-independent results",
                      RuntimeWarning, stacklevel=2)
        return out
    bad = []
    if now["aten"] != aten:
        bad.append(f"ATen CPU capability is {now['aten']}, not {aten}")
    if "mkl_cbwr" in now and now["mkl_cbwr"] != mkl:
        bad.append(f"MKL CBWR is {now['mkl_cbwr']}, not {mkl}")
    if bad:
        raise ConfigError(f"cannot pin the CPU kernels to {level!r}: {'; '.join(bad)}. torch was already used in "
                          "this process: call wbc.learn.kernels.pin() before the first tensor operation, or set "
                          + " ".join(f"{k}={v}" for k, v in wanted.items()) + " before starting Python")
    return out


def pin_for_inference(level: str, threads: int | None = None) -> dict[str, str] | None:
    """`pin` for a model being loaded for inference: the level and threads it was trained with.
    When torch already runs other kernels in this process (a notebook, a test session), a warning:
    the predictions may then differ from the training machine's in the last bits."""
    try:
        return pin(level, threads)
    except ConfigError as exc:
        warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
        return None
