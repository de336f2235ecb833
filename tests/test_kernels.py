"""CPU kernel pinning (wbc.learn.kernels): another CPU simulated on this one, and emulated.

The kernel dispatch of a machine is imitated with the variables torch's libraries read (ATen's
capability, oneDNN's max ISA, MKL's CBWR branch): a short training run, then its evaluation in a
fresh process, under each setting. With the kernels pinned (`cpu_kernels: avx2`, the default)
the checkpoint bytes and the metrics are identical whatever the environment says; unpinned
(`native`, the behaviour before wbc.learn.kernels) the same settings give other weights, which proves
the settings really change the floats.

A CPU of the other vendor (Intel on an AMD host, AMD on an Intel host) is emulated by qemu's user
mode (`qemu-x86_64 -cpu Haswell|EPYC`: another CPUID, vendor, cache sizes and no AVX-512): a few
pinned training steps there give the same weights and logits as here, while the unpinned ones
differ (the control). Without qemu-user the test is skipped, unless WBC_REQUIRE_QEMU=1 (our CI).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wbc.learn import kernels
from wbc.core.errors import ConfigError
from wbc.learn.train import TrainConfig

TESTS = Path(__file__).resolve().parent

CHILD = r"""
import hashlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
mode, level, root = sys.argv[2], sys.argv[3], Path(sys.argv[4])
packed, ckpt = root / "packed", root / f"model-{level}.ckpt"
if mode == "train":
    from test_train import make_packed
    from wbc.learn.train import TrainConfig, train_model
    if not packed.exists():
        make_packed(packed, {"train": 64, "val": 32, "test": 32})
    cfg = TrainConfig(seed=1, epochs=2, batch_size=16, lr=0.05, threads=2, cpu_kernels=level, max_steps=3)
    train_model("resnet18", packed, cfg, ckpt)
    import torch
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    weights = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    print(json.dumps({"file": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "weights": weights}))
else:
    from wbc.results.evaluate import evaluate_predictor
    from wbc.results.predictors import load_predictor
    out = root / f"eval-{level}-{sys.argv[5]}"
    res = evaluate_predictor(load_predictor(ckpt), packed, out)
    print(json.dumps({"test": res["test"]["accuracy"], "macro_f1": res["test"]["macro_f1"],
                      "metrics": hashlib.sha256((out / "metrics.json").read_bytes()).hexdigest()}))
"""

# imitations of other CPUs: no AVX kernels in ATen, oneDNN limited to SSE4.1, MKL's AVX2 branch (Intel's)
OTHER_CPUS = {
    "this machine": {},
    "ATEN_CPU_CAPABILITY=default": {"ATEN_CPU_CAPABILITY": "default"},
    "ONEDNN_MAX_CPU_ISA=SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"},
    "MKL_CBWR=AVX2,STRICT": {"MKL_CBWR": "AVX2,STRICT"},
}

needs_avx2 = pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the avx2 kernel level needs an x86-64 CPU with AVX2")


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in kernels.env_for("avx2")}  # no pin inherited
    return {**env, **extra}


def _child(mode: str, level: str, root: Path, extra: dict[str, str], tag: str = "") -> dict[str, str]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(TESTS), mode, level, str(root), tag],
                          env=_clean_env(extra), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_avx2
def test_pinned_training_and_evaluation_are_the_same_bytes_under_other_cpu_dispatch(tmp_path: Path) -> None:
    runs = {}
    for name, extra in OTHER_CPUS.items():
        root = tmp_path / name.replace("=", "_").replace(" ", "_")
        trained = _child("train", "avx2", root, extra)
        # evaluated in a fresh process under yet another setting: load_checkpoint pins the kernels it was trained with
        evaluated = _child("evaluate", "avx2", root, {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO"}, "x")
        runs[name] = {**trained, **evaluated}
    first = runs["this machine"]
    for name, got in runs.items():
        assert got == first, f"{name}: {got} differs from this machine's {first}"


@pytest.mark.slow
@needs_avx2
def test_unpinned_kernels_differ_under_the_same_settings(tmp_path: Path) -> None:
    """The control: without pinning (the code before wbc.learn.kernels) the imitated CPUs give other weights."""
    native = _child("train", "native", tmp_path / "native", {})["weights"]
    for name in ("ATEN_CPU_CAPABILITY=default", "ONEDNN_MAX_CPU_ISA=SSE41"):
        other = _child("train", "native", tmp_path / name.split("=")[0], OTHER_CPUS[name])["weights"]
        assert other != native, f"{name} did not change the unpinned weights: the simulation tests nothing"


def test_pin_refuses_after_torch_ran_other_kernels() -> None:
    code = ("import torch; torch.ones(8) + 1; torch.ones(4, 4) @ torch.ones(4, 4)\n"
            "from wbc.learn import kernels\n"
            "try:\n    kernels.pin('baseline')\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env({}), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ConfigError") and "before the first tensor operation" in proc.stdout
    assert "ATEN_CPU_CAPABILITY=default" in proc.stdout  # says how to set it instead


def test_pin_after_import_overrides_the_users_environment() -> None:
    code = "import torch\nfrom wbc.learn import kernels\nimport json\nprint(json.dumps(kernels.pin('baseline', 1)))\n"
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env({"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    if kernels.is_x86():
        assert got["aten"] == "default" and got.get("mkl_cbwr", "COMPATIBLE") == "COMPATIBLE"
        assert got["onednn_max_isa"] == "SSE41"
    assert got["level"] == "baseline"


def test_levels_and_config() -> None:
    assert kernels.env_for("native") == {}
    if kernels.is_x86():
        env = kernels.env_for("avx2")
        assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "COMPATIBLE"
        assert env["ONEDNN_MAX_CPU_ISA"] == env["DNNL_MAX_CPU_ISA"] == "AVX2"
    fake: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx512"}
    kernels.pin_environment("baseline", fake)
    assert fake["ATEN_CPU_CAPABILITY"] == ("default" if kernels.is_x86() else "avx512")
    with pytest.raises(ConfigError, match="cpu_kernels must be one of avx2, baseline, native"):
        TrainConfig(cpu_kernels="avx512")
    assert TrainConfig().cpu_kernels == "avx2"


def test_checkpoint_records_the_kernels(tmp_path: Path) -> None:
    """In this process (conftest pinned the avx2 environment before torch): the checkpoint says what ran."""
    import torch

    from test_train import make_packed
    from wbc.learn.train import train_model

    packed = make_packed(tmp_path / "packed", {"train": 20, "val": 10, "test": 10})
    train_model("mobilenet_v2", packed, TrainConfig(epochs=1, batch_size=10, threads=1, max_steps=1),
                tmp_path / "m.ckpt")
    params = torch.load(tmp_path / "m.ckpt", weights_only=True)["params"]
    assert params["cpu_kernels"] == "avx2" and params["threads"] == 1
    assert params["kernels"]["level"] == "avx2"
    if kernels.cpu_has_avx2():
        assert params["kernels"]["aten"] == "avx2"
        assert params["kernels"]["onednn_max_isa"] == "AVX2"


# -- an emulated CPU of the other vendor ---------------------------------------------------------

PROBE = r"""
import ctypes, hashlib, json, sys
from pathlib import Path
from wbc.learn import kernels
state = kernels.pin(sys.argv[1], threads=2)
import torch
from wbc.learn.models import build_model
lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
out = {"intel": int(lib.mkl_serv_intel_cpu_true()), "aten": state["aten"], "mkl": state.get("mkl_cbwr")}
for name in ("mobilenet_v2", "resnet18"):  # 1x1 + depthwise convs + MKL's matmul; oneDNN's brgemm convs
    torch.manual_seed(0)
    # small (emulation runs every instruction in software), yet every layer kind and the classifier run
    model = build_model(name, 5, image_size=32)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        logits = model.eval()(x)
    blob = b"".join(p.detach().numpy().tobytes() for p in model.parameters()) + logits.numpy().tobytes()
    out[name] = hashlib.sha256(blob).hexdigest()
print(json.dumps(out))
"""
QEMU = shutil.which("qemu-x86_64")
OTHER_VENDOR = {"AuthenticAMD": "Haswell", "GenuineIntel": "EPYC"}  # an AVX2 CPU model of the other vendor


def cpu_vendor() -> str:
    info = Path("/proc/cpuinfo")
    for line in (info.read_text(errors="replace").splitlines() if info.is_file() else []):
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return ""


def _probe(prefix: list[str], level: str) -> dict:
    proc = subprocess.run([*prefix, sys.executable, "-c", PROBE, level], env=_clean_env({}), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_avx2
def test_same_bits_on_an_emulated_cpu_of_the_other_vendor() -> None:
    vendor = cpu_vendor()
    if vendor not in OTHER_VENDOR:
        pytest.skip(f"CPU vendor {vendor!r}: no emulated counterpart")
    if QEMU is None:
        if os.environ.get("WBC_REQUIRE_QEMU"):
            pytest.fail("WBC_REQUIRE_QEMU is set but qemu-x86_64 is missing (Debian package qemu-user)")
        pytest.skip("qemu-x86_64 (Debian package qemu-user) is not installed")
    emulated = [QEMU, "-cpu", OTHER_VENDOR[vendor]]
    here, there = _probe([], "avx2"), _probe(emulated, "avx2")
    assert here["intel"] != there["intel"], f"the emulated CPU is not of the other vendor: {here} vs {there}"
    assert here == {**there, "intel": here["intel"]}, f"pinned: this CPU {here} vs emulated {there}"
    # the control: unpinned, the emulated CPU runs other kernels and gives other floats
    native_here, native_there = _probe([], "native"), _probe(emulated, "native")
    assert native_here["mobilenet_v2"] != native_there["mobilenet_v2"], "the emulation changes nothing: it tests nothing"
