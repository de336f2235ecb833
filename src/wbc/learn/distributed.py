"""Multi-process (multi-GPU) training with PyTorch DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node 4 stages/train.py --model resnet18 --seed 1 ...   # or: -m wbc.apps.cli train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (or with WORLD_SIZE=1) nothing here
does anything and training is the single-process path, bit for bit. With them:
  - process group: gloo on CPU, nccl on CUDA (one GPU per process: cuda:LOCAL_RANK);
  - the model is wrapped in DistributedDataParallel (gradients averaged across processes);
  - `ShardedSampler`: every rank draws the SAME index stream from the training sampler (same seed:
    the class-balancing sampler or the random permutation, unchanged) and keeps every WORLD_SIZE-th
    index from its rank on, padded by wrapping around so all ranks run the same number of batches
    (torch's DistributedSampler semantics, applied to the drawn stream);
  - only rank 0 writes the checkpoint and the dvclive log; all ranks validate on the whole val set
    (the weights are identical on every rank, so they agree on the best epoch).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The DistEnv that torchrun's RANK, WORLD_SIZE, LOCAL_RANK describe (defaults: single process)."""
    environ = os.environ if environ is None else environ
    return DistEnv(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0)))


def setup(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA) and return this rank's device."""
    if not env.active:
        return device
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size)
    return device


def wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """The model in DistributedDataParallel when several processes train, else unchanged."""
    if not env.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (state_dict keys without `module.`)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class ShardedSampler(Sampler[int]):
    """Rank `rank`'s share of the index stream of `base` (see the module docstring)."""

    def __init__(self, base: Sampler[int], env: DistEnv):
        self.base, self.env = base, env

    def __len__(self) -> int:
        return -(-len(self.base) // self.env.world_size)

    def __iter__(self) -> Iterator[int]:
        stream = list(iter(self.base))
        if not stream:
            return iter(())
        total = len(self) * self.env.world_size
        stream = (stream * (-(-total // len(stream))))[:total]  # pad by wrapping around
        return iter(stream[self.env.rank::self.env.world_size])


def shard(sampler: Sampler[int], env: DistEnv) -> Sampler[int]:
    """`sampler` sharded for this rank when several processes train, else unchanged."""
    return ShardedSampler(sampler, env) if env.active else sampler


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in a single process)."""
    if env.active and dist.is_initialized():
        dist.barrier()


def teardown(env: DistEnv) -> None:
    """Leave the process group."""
    if env.active and dist.is_initialized():
        dist.destroy_process_group()


def main_only(env: DistEnv, value: Any) -> Any:
    """`value` on rank 0, None on the other ranks (e.g. the dvclive log folder)."""
    return value if env.is_main else None
