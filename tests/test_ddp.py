"""wbc.learn.distributed: DistributedDataParallel training under torchrun (CPU, gloo, 2 processes)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import SequentialSampler

from test_train import FAST, make_packed
from wbc.learn.distributed import DistEnv, ShardedSampler, env_from, shard

ROOT = Path(__file__).resolve().parents[1]
#: One training run: the config of tests/test_train.py, a few more epochs; prints a JSON line.
DRIVER = """
import json, os, sys
from wbc.learn.train import TrainConfig, train_model
cfg = TrainConfig(**json.loads(sys.argv[3]))
res = train_model("resnet18", sys.argv[1], cfg, sys.argv[2], log_dir=sys.argv[2] + ".log")
print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "f1": res.val_macro_f1}))
"""


def test_env_from_torchrun_variables() -> None:
    assert env_from({}) == DistEnv(0, 1, 0) and not env_from({}).active
    env = env_from({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert env.active and not env.is_main and env.local_rank == 1


def test_sharded_sampler_splits_the_drawn_stream() -> None:
    base = SequentialSampler(range(7))
    shards = [list(ShardedSampler(base, DistEnv(r, 3, r))) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]   # padded by wrapping: equal lengths
    assert shard(base, DistEnv()) is base
    gen = torch.Generator().manual_seed(3)
    weighted = torch.utils.data.WeightedRandomSampler([1.0] * 10, 10, generator=gen)
    state = gen.get_state()
    drawn = list(weighted)
    gen.set_state(state)
    halves = [list(ShardedSampler(weighted, DistEnv(r, 2, r))) for r in range(1)]
    assert halves[0] == drawn[0::2]


def _run(cmd: list[str], cwd: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # the ranks share stdout: their lines may interleave
    return [json.loads(m) for m in re.findall(r'\{"rank": \d+, "f1": [^}]+\}', res.stdout)]


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one(tmp_path: Path) -> None:
    packed = make_packed(tmp_path / "packed", {"train": 80, "val": 40, "test": 10})
    (tmp_path / "driver.py").write_text(DRIVER)
    cfg = json.dumps({**FAST, "epochs": 5, "optimizer": "adam", "lr": 0.001})  # test_train: learns
    one = _run([sys.executable, "driver.py", str(packed), str(tmp_path / "one.ckpt"), cfg], tmp_path)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "driver.py", str(packed), str(tmp_path / "two.ckpt"), cfg], tmp_path)
    f1_one, f1_two = one[0]["f1"], [r["f1"] for r in sorted(two, key=lambda r: r["rank"])]
    print(f"val macro-F1: 1 process {f1_one:.4f}, 2 processes (DDP, gloo) {f1_two}")
    assert len(two) == 2 and f1_two[0] == f1_two[1]          # identical weights on both ranks
    assert min(f1_one, f1_two[0]) >= 0.6 and abs(f1_two[0] - f1_one) <= 0.25  # chance 0.2; noise of 40 images
    assert (tmp_path / "two.ckpt").is_file() and not list(tmp_path.glob("two.ckpt.*.tmp"))
    ckpts = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert ckpts == ["one.ckpt", "two.ckpt"]                  # exactly one checkpoint from the 2 ranks
    logged = json.loads((tmp_path / "two.ckpt.log" / "metrics.json").read_text())
    assert logged["step"] == 4                                # one dvclive log, 5 epochs
    state = torch.load(tmp_path / "two.ckpt", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in state)
