"""trainer.parallel=fsdp2 under torchrun: the model sharded with FSDP2 (`fully_shard`).

Training stays data parallel (distributed.py: each rank samples and back-propagates its share of
the global batch); what changes is where the weights live and how the gradients meet. Each decoder
layer is one FSDP unit and the root module (embeddings, final norm, head) another; parameters,
gradients and AdamW state are kept as 1/world shards (DTensors) between steps.

- `unshard` starts a step: the parameters are all-gathered once, unit by unit. The step's forward
  and backward passes (sampling, reference and policy passes) then run with no collective inside.
  Ranks run different numbers of passes (uneven shares, zero-weight sequences skipped, generation
  stopping at EOS), so FSDP's per-pass all-gathers would not pair up across ranks; and sampling
  needs the whole model on every rank anyway. Weights and the step's gradients are thus whole from
  here to `reduce_gradients`; the AdamW state stays sharded throughout.
- `reduce_gradients` ends the passes: one zero-weight pass that every rank runs makes FSDP
  reduce-scatter the accumulated gradients, summed over ranks (divide factor 1, as
  `distributed.sum_gradients` does for ddp); the parameters go back to their shards, which the
  optimizer then updates.
- `full_model_state` / `UnshardedOptimizer` gather whole tensors for rank 0 to write, in the
  1-process layout: checkpoints and final weights do not depend on the strategy.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from aware_cli.config.schema import AwareConfig
from aware_cli.errors import ConfigError


def check_config(cfg: AwareConfig) -> None:
    """What fsdp2 cannot run, as a ConfigError before any weight is sharded."""
    from aware_cli.pipeline.objectives import get_objective

    if not get_objective(cfg.objective.name).fsdp2:  # e.g. one that shifts and differentiates `policy.params`
        raise ConfigError(f"trainer.parallel=fsdp2: objective {cfg.objective.name} perturbs the trainable weights "
                          f"in place, which FSDP2 keeps sharded; use trainer.parallel=ddp")
    # sampling_weights caches cast copies by (version, address); FSDP2 refills the same gathered
    # Parameter every step without bumping its version, so a cached copy could go stale
    if cfg.sampling.dtype not in ("model", "auto"):
        raise ConfigError("trainer.parallel=fsdp2: sampling.dtype must be model (or auto, which samples as the model "
                          "under fsdp2)")


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


def decoder_layers(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers never splits (`_no_split_modules`),
    else modules whose class name ends in DecoderLayer; outermost matches only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft
    names = set(getattr(base, "_no_split_modules", None) or ())
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ in names] or \
        [(n, m) for n, m in model.named_modules() if type(m).__name__.endswith("DecoderLayer")]
    prefixes = [n + "." for n, _ in found]
    return [m for n, m in found if not any(n.startswith(p) for p in prefixes)]


def shard_model(model: torch.nn.Module, device: torch.device) -> int:
    """fully_shard each decoder layer, then the root, over all ranks; returns the number of layers.

    Every rank calls it, after the model (LoRA included) is built and before the optimizer is.
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum over ranks, as with ddp, not FSDP's mean
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    model.set_reshard_after_backward(False)  # stay gathered between the step's passes (`unshard`)
    model.set_requires_gradient_sync(False)  # gradients accumulate locally until `reduce_gradients`
    model.set_reduce_scatter_unused_params(True)  # a parameter no pass reached reduces as zeros
    # FSDP takes the first module to run forward as its root: make that the root (transformers'
    # generate on a PeftModel would otherwise enter through a decoder layer first).
    with gathered(model), torch.no_grad():
        _zero_token_logits(model, device)
    return len(layers)


def _zero_token_logits(model, device: torch.device) -> torch.Tensor:
    """Logits of one token, in eval mode so that no dropout draws from the global RNG."""
    was_training = model.training
    model.eval()
    try:
        return model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=False).logits
    finally:
        model.train(was_training)


def _units(model) -> List[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def unshard(model) -> None:
    """All-gather every unit's parameters (a collective: every rank calls it)."""
    for unit in _units(model):
        unit.unshard()


def reshard(model) -> None:
    """Back to the shards (local: frees the gathered copies)."""
    for unit in _units(model):
        unit.reshard()


@contextlib.contextmanager
def gathered(model) -> Iterator[None]:
    """Whole parameters inside on every rank (enter on every rank); a no-op for an unsharded model."""
    if not is_sharded(model):
        yield
        return
    unshard(model)
    try:
        yield
    finally:
        reshard(model)


def reduce_gradients(model, device: torch.device) -> None:
    """Sum the gradients the step's passes accumulated over ranks into the shards, then `reshard`.

    Every rank calls it once per step, gathered. The pass adds zero to every gradient; its backward
    is where FSDP reduce-scatters each unit's accumulated gradient.
    """
    model.set_requires_gradient_sync(True)
    try:
        (_zero_token_logits(model, device).sum() * 0.0).backward()
    finally:
        model.set_requires_gradient_sync(False)
    reshard(model)


def full_model_state(model) -> Dict[str, torch.Tensor]:
    """Whole trainable weights on the CPU of rank 0 ({} on the others); every rank calls it.

    Frozen weights (a LoRA base) are left out: `save_model` writes trainable ones only or,
    for full fine-tuning, every weight is trainable.
    """
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                  ignore_frozen_params=True))
    # A tied weight (lm_head = embed_tokens) comes back as two copies, which save_pretrained would
    # both write; keep the first name, as it does for the live model.
    seen, tied = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            tied.add(name)
        seen.add(id(param))
    return {name: value for name, value in state.items() if name not in tied}


class UnshardedOptimizer:
    """The optimizer as rundir saves and restores it: whole tensors, parameters numbered as in
    `optimizer.state_dict()`, so a checkpoint's training state is the same under ddp and fsdp2."""

    def __init__(self, model, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.full: Dict[str, Any] = {}

    def gather(self) -> "UnshardedOptimizer":
        """Collect the whole state on rank 0 (a collective: every rank calls it before saving)."""
        # No update yet (the same on every rank): nothing to gather, and torch's gather would first
        # take a zero-lr step to create the state, which the next real step would then count.
        if not self.optimizer.state:
            self.full = self.optimizer.state_dict()
            return self
        state = get_optimizer_state_dict(self.model, self.optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if state:  # rank 0: parameter names -> the optimizer's own numbering (same order)
            index: Dict[str, int] = {}
            groups = [{**g, "params": [index.setdefault(name, len(index)) for name in g["params"]]}
                      for g in state["param_groups"]]
            state = {"state": {index[name]: value for name, value in state["state"].items()},
                     "param_groups": groups}
        self.full = state
        return self

    def state_dict(self) -> Dict[str, Any]:
        return self.full

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Shard a whole `optimizer.state_dict()` into the optimizer (every rank calls it with the file's state)."""
        if not state["state"]:  # saved before any update: no tensors to shard (see `gather`)
            self.optimizer.load_state_dict(state)
            return
        names = {id(p): name for name, p in self.model.named_parameters()}
        order = [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]
        named = {"state": {order[i]: value for i, value in state["state"].items()},
                 "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(self.model, self.optimizer, named, options=StateDictOptions(full_state_dict=True))
