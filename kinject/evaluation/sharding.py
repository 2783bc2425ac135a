"""Evaluation under torch.distributed: every rank scores an equal, padded slice of the items and the slices are
gathered. W times less work per evaluation, and every rank runs the same number of forward passes, which a
sharded (FSDP) model needs to gather its weights."""

from __future__ import annotations

import numpy as np
import torch


def world() -> tuple[int, int]:
    """This process's rank and the world size (0 and 1 outside torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def share(n: int) -> tuple[np.ndarray, int]:
    """This rank's contiguous slice of n things, padded (with index 0) to the same length on every rank,
    and how many of its entries are real."""
    rank, size = world()
    per = -(-n // size)
    mine = np.arange(rank * per, min(n, (rank + 1) * per))
    return np.concatenate([mine, np.zeros(per - len(mine), dtype=int)]), len(mine)


def gathered(part: np.ndarray) -> np.ndarray:
    """The real entries of every rank's slice, in rank order: the unsharded result."""
    _, size = world()
    if size == 1:
        return part
    parts: list[np.ndarray] = [np.empty(0)] * size
    torch.distributed.all_gather_object(parts, part)
    return np.concatenate(parts)
