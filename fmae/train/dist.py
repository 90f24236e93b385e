"""Rank handling, explicit: who this process is, who writes, and how test outputs are gathered.

A single process is rank 0 of 1. Under `torchrun` (WORLD_SIZE > 1 in the environment) the process group
is initialised here: NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class RankFilter(logging.Filter):
    """Only rank 0 logs below WARNING, so logs are not N copies; warnings say which rank they're from."""

    def __init__(self, info: DistInfo) -> None:
        super().__init__()
        self.info = info

    def filter(self, record: logging.LogRecord) -> bool:
        if self.info.is_main:
            return True
        if record.levelno >= logging.WARNING:
            record.msg = f"[rank {self.info.rank}] {record.msg}"
            return True
        return False


def gather_by_index(info: DistInfo, indices: np.ndarray, outputs: np.ndarray, n: int) -> np.ndarray | None:
    """Reassemble every rank's test outputs in dataset order (padding duplicates dropped). Rank 0 gets
    the full [n, ...] array, so metrics over the whole test set are exact; other ranks get None."""
    if not info.distributed:
        order = np.argsort(indices, kind="stable")
        assert len(order) == n
        return outputs[order]
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, (indices, outputs))
    if not info.is_main:
        return None
    full = np.empty((n, *outputs.shape[1:]), dtype=outputs.dtype)
    for idx, out in parts:
        full[idx] = out  # a padded duplicate writes the same row twice
    return full


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.distributed:
        return value
    on = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=on)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size
