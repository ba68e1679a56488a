"""Data-parallel runs under `accelerate launch` (DDP over NCCL on GPUs, gloo on CPU).

Every process runs the same loop with the same seeds and holds a full model replica. Training splits each
global batch across processes and all-reduces the gradients (torch DDP); prediction splits the instances
and gathers the answers, so every process sees every prediction; the replay memory is taken from process 0.
Only process 0 writes the run folder. A plain `errwise run` is one process and none of this is active.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def init() -> torch.device | None:
    """Join the process group `accelerate launch` describes (env WORLD_SIZE > 1); returns this process's
    device, or None in a single-process run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState().device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast(obj: T) -> T:
    """Process 0's `obj` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def map_sharded(fn: Callable[[list[Any]], list[Any]], items: Sequence[Any]) -> list[Any]:
    """fn over items, each process taking every world()-th item; every process gets all results, in order."""
    if not active():
        return fn(list(items))
    idx = list(range(rank(), len(items), world()))
    local = list(zip(idx, fn([items[i] for i in idx]))) if idx else []
    parts: list[Any] = [None] * world()
    dist.all_gather_object(parts, local)
    out: list[Any] = [None] * len(items)
    for part in parts:
        for i, value in part:
            out[i] = value
    return out


def all_sum(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())
