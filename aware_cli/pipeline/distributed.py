"""Data-parallel training under torchrun: each rank takes a slice of the global batch.

`torchrun --nproc_per_node=N -m aware_cli train recipe=...` (or `aware train ... trainer.nproc=N`,
which launches torchrun for you). Each rank samples, verifies and back-propagates its own share of
the step's B prompts with loss weights normalised by the *global* B; gradients are then summed
across ranks, so every rank applies the gradient one process would compute for the whole batch.
Rank 0 alone writes the run directory (logs, checkpoints); metrics are reduced across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_ranks() -> Ranks:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def shard(items: List[Any], ranks: Ranks) -> List[Any]:
    """This rank's share of a list (every world-th item)."""
    return items[ranks.rank::ranks.world] if ranks.enabled else items


def sum_gradients(params: List[torch.nn.Parameter], ranks: Ranks) -> None:
    """Sum gradients over ranks (missing ones count as zero), in one flat all-reduce."""
    if not ranks.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(p).to(p.dtype)
        offset += g.numel()


def sum_value(value: float, ranks: Ranks) -> float:
    if not ranks.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def gather(obj: Any, ranks: Ranks) -> List[Any]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not ranks.enabled:
        return [obj]
    out: List[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ranks.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ranks: Ranks) -> None:
    if ranks.enabled:
        dist.barrier()


def close(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()
