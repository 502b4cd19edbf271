"""Data-parallel training under torchrun: each rank takes a slice of the global batch.

`torchrun --nproc_per_node=N -m aware_cli train recipe=...` (or `aware train ... trainer.nproc=N`,
which launches torchrun for you). Each rank samples, verifies and back-propagates its own share of
the step's B prompts with loss weights normalised by the *global* B; gradients are then summed
across ranks, so every rank applies the gradient one process would compute for the whole batch.
Rank 0 alone writes the run directory (logs, checkpoints); metrics are reduced across ranks.

Objectives whose loss is a mean over pairs (dpo, gapo, shapo) normalise by the *global* pair count
and reduce what couples the pairs (gapo's anchor gradient and pair weights, shapo's perturbation and
saliency mask) with `sum_tensors` / `gather`, so every objective gives the 1-process loss and gradient.

Failures: `agree` is called at fixed points of every step; when one rank failed, every rank raises
there (the failing rank its own error, the others `PeerFailed` with its message), so no rank is
left waiting in a collective and rank 0 prints one message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

from aware_cli.errors import AwareError


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
    """Sum gradients over ranks, in one flat all-reduce.

    A parameter with a gradient on some rank gets the sum (zeros where a rank had none); one with no
    gradient on any rank keeps `grad = None`, as in one process, so AdamW skips it rather than
    moving it by its momentum (a step whose batch formed no preference pair changes nothing).
    """
    if not ranks.enabled:
        return
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    reduced = [p for p, flag in zip(params, flags.tolist()) if flag > 0]
    if not reduced:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in reduced]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(reduced, grads):
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


def sum_tensors(tensors: Sequence[torch.Tensor], ranks: Ranks) -> List[torch.Tensor]:
    """Each tensor summed over ranks (one flat float64 all-reduce); the inputs themselves without torchrun."""
    if not ranks.enabled or not tensors:
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view_as(t).to(device=t.device, dtype=t.dtype))
        offset += t.numel()
    return out


class RankReduce:
    """`objectives.Reduce` over torchrun's ranks: sums by all-reduce, gathers by all-gather."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self.rank = ranks.rank

    def sum(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return sum_tensors(tensors, self.ranks)

    def gather(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return [t.to(tensor.device) for t in gather(tensor.detach().cpu(), self.ranks)]


class PeerFailed(AwareError):
    """Another rank failed: its message and exit code (raised on the ranks that did not fail; one line)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def on_every_rank(error: BaseException) -> BaseException:
    """Mark `error` as raised at the same point on every rank (collectives may still run)."""
    error.aware_every_rank = True  # type: ignore[attr-defined]
    return error


def is_on_every_rank(error: BaseException) -> bool:
    return bool(getattr(error, "aware_every_rank", False))


def agree(error: Optional[BaseException], ranks: Ranks, counts: Sequence[int] = ()) -> List[int]:
    """Raise on every rank if any rank passes an error; else `counts` summed over ranks.

    A collective: every rank must call it at the same point. The failing rank re-raises its own
    error; the others raise `PeerFailed` with the first failing rank's message and exit code.
    Without torchrun: raise `error` if there is one, else return `counts`.
    """
    if not ranks.enabled:
        if error is not None:
            raise error
        return list(counts)
    summary = None if error is None else (describe(error), exit_code(error))
    gathered = gather((summary, list(counts)), ranks)
    failed = [(rank, part[0]) for rank, part in enumerate(gathered) if part[0] is not None]
    if failed:
        if error is not None:
            raise on_every_rank(error)
        rank, (message, code) = failed[0]
        raise on_every_rank(PeerFailed(f"{message} (on rank {rank})", code))
    return [sum(part[1][i] for part in gathered) for i in range(len(counts))]


def describe(error: BaseException) -> str:
    """One line: an AwareError's message, else `Type: message`."""
    return str(error) if isinstance(error, AwareError) else f"{type(error).__name__}: {error}"


def exit_code(error: BaseException) -> int:
    """The exit code the CLI gives `error`: its `exit_code` (AwareError: 2, 3, 130), else 1."""
    return int(getattr(error, "exit_code", 1))


def close(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()
