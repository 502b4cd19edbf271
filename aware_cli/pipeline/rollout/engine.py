"""The sampling engine: k responses per prompt with one shared prefill and a shrinking decode batch.

Compared with `model.generate` on the B×k repeated prompts it
- runs the prompt (prefill) once per prompt and copies its KV cache k times, instead of k times;
- computes logits only for the last position (`logits_to_keep=1`);
- drops finished sequences from the decode batch (and their KV rows), so a step costs only
  the sequences still running;
- on the CPU, computes a decode step's attention with two small matmuls (`attention.py`) instead of the
  SDPA kernel, which is slow for one query per row;
- samples with temperature / top-p on the model's device from its own seeded generator, so
  sampling does not touch (or depend on) the global RNG; with `row_seeds` (training), each prompt's
  draws come from its own seed (`row_uniforms`), so a prompt's k samples do not depend on the other
  prompts in the batch: the same under torchrun (any rank, any share) as in one process.
The policy's own weights are used (no reload, no second model): with LoRA they are merged into a
sampling copy of each adapted weight, and with `sampling.dtype=bfloat16` cast (`sampling_weights`);
a copy is kept until the weights it came from change, so frozen bases are cast once per run.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, List, Optional, Sequence

import torch

from torch.distributed.fsdp import FSDPModule

from aware_cli.models.loading import sampling_dtype
from aware_cli.models.logprobs import pack_left, position_ids
from aware_cli.pipeline.rollout.attention import cpu_decode_attention
from aware_cli.pipeline.rollout.sampler import draws, sample_next
from aware_cli.pipeline.rollout.static_decode import generate_k_static, supports_static


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def sampling_weights(model, dtype: str = "model", merge_lora: bool = True) -> Iterator[None]:
    """Run the model from sampling weights: LoRA merged into its base (one matmul per linear instead of
    three) and/or every floating-point weight cast to `dtype`; the trained weights are restored after.

    Merging: each adapted linear's weight becomes W + ΔW (peft's `get_delta_weight`) while the adapters
    are disabled, so the forward computes the same function with a third of the matrix products. Copies
    are cached on the module (merged) or parameter (cast) and reused while the version counters of the
    weights they came from are unchanged (optimizer steps and loads bump them), so a frozen base is cast
    once per run and only the merged weights are rebuilt after each update. FSDP2-sharded models are run
    as they are (their gathered weights are refilled in place without a version bump). `dtype="auto"` is
    resolved for the model's device by `models.loading.sampling_dtype`.
    """
    if dtype == "auto":
        device = next(model.parameters()).device
        dtype = sampling_dtype(dtype, device, sharded=isinstance(model, FSDPModule))
    target = DTYPES.get(dtype)
    layers = _mergeable_lora_layers(model) if merge_lora else []
    merged_params = {id(layer.base_layer.weight) for layer in layers}
    adapter_params = {id(p) for layer in layers for p in _adapter_params(layer)}
    params = [p for p in model.parameters() if target is not None and p.is_floating_point()
              and p.dtype != target and type(p.data) is torch.Tensor
              and id(p) not in merged_params and id(p) not in adapter_params]
    swapped = [(layer.base_layer.weight, layer.base_layer.weight.data) for layer in layers]
    swapped += [(p, p.data) for p in params]
    try:
        for layer in layers:
            layer.base_layer.weight.data = _merged_copy(layer, target)
        for p in params:
            cached = getattr(p, "_aware_cast", None)  # lives and dies with the parameter
            key = (p._version, p.data_ptr())
            if cached is None or cached[0] != key:
                cached = (key, p.data.to(target))
                p._aware_cast = cached
            p.data = cached[1]
        with (model.disable_adapter() if layers else contextlib.nullcontext()):
            yield
    finally:
        for p, original in swapped:
            p.data = original


def _mergeable_lora_layers(model) -> list:
    """peft LoRA linears that can be merged exactly (one active plain LoRA adapter, not merged already)."""
    if isinstance(model, FSDPModule) or not hasattr(model, "disable_adapter"):
        return []
    layers = [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_delta_weight")
              and hasattr(m, "base_layer")]
    for layer in layers:
        active = list(layer.active_adapters)
        if (len(active) != 1 or getattr(layer, "merged", False) or layer.disable_adapters
                or any(layer.use_dora.get(a, False) for a in active) or active[0] not in layer.lora_A
                or type(layer.base_layer.weight.data) is not torch.Tensor):
            return []  # anything unusual: sample from the unmerged model
    return layers


def _adapter_params(layer) -> List[torch.nn.Parameter]:
    adapter = layer.active_adapters[0]
    return list(layer.lora_A[adapter].parameters()) + list(layer.lora_B[adapter].parameters())


@torch.no_grad()
def _merged_copy(layer, target: Optional[torch.dtype]) -> torch.Tensor:
    """W + ΔW of a LoRA linear in `target` (or W's dtype), cached until W, A or B change."""
    weight = layer.base_layer.weight
    key = (weight._version, weight.data_ptr(), *((p._version, p.data_ptr()) for p in _adapter_params(layer)),
           target)
    cached = getattr(layer, "_aware_merged", None)
    if cached is None or cached[0] != key:
        delta = layer.get_delta_weight(layer.active_adapters[0])
        merged = (weight.data.float() + delta.float()).to(target or weight.dtype)
        cached = (key, merged)
        layer._aware_merged = cached
    return cached[1]


@torch.no_grad()
def generate_k(model, prompts: Sequence[List[int]], k: int, *, max_new_tokens: int, eos_ids: Sequence[int],
               pad_id: int, device: torch.device, temperature: float = 1.0, top_p: float = 1.0,
               seed: Optional[int] = None, cuda_graphs: bool = True,
               row_seeds: Optional[Sequence[int]] = None) -> List[List[int]]:
    """Token lists (EOS included when produced) for each prompt's k samples, prompt-major: [b*k + j].

    `row_seeds` (one per prompt) replace `seed`: each prompt samples from its own seeded draws.

    On CUDA (with `cuda_graphs`), models that `static_decode.supports_static` accepts decode through
    a CUDA graph (`static_decode.generate_k_static`); if that fails, the model is marked and this
    dynamic engine takes over, with a warning.
    """
    if cuda_graphs and device.type == "cuda" and _static_ok(model):
        try:
            return generate_k_static(model, prompts, k, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                                     pad_id=pad_id, device=device, temperature=temperature, top_p=top_p, seed=seed,
                                     row_seeds=row_seeds)
        except RuntimeError as exc:  # an architecture whose forward cannot be captured
            model._aware_static_failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            warnings.warn(f"sampling: CUDA-graph decoding failed ({model._aware_static_failed}); "
                          f"using the dynamic engine for this model", RuntimeWarning)
    with cpu_decode_attention(model, device):
        return _generate_k_dynamic(model, prompts, k, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                                   device=device, temperature=temperature, top_p=top_p, seed=seed,
                                   row_seeds=row_seeds)


def _static_ok(model) -> bool:
    if getattr(model, "_aware_static_failed", None) or isinstance(model, FSDPModule):
        return False  # fsdp2: its hooks synchronise streams, which a graph capture cannot hold
    return supports_static(model) is None


def _generate_k_dynamic(model, prompts: Sequence[List[int]], k: int, *, max_new_tokens: int, eos_ids: Sequence[int],
                        pad_id: int, device: torch.device, temperature: float, top_p: float,
                        seed: Optional[int], row_seeds: Optional[Sequence[int]] = None) -> List[List[int]]:
    was_training = model.training
    model.eval()
    generator, uniforms = draws(row_seeds, seed, temperature, k, max_new_tokens, device)
    ids, attn = pack_left([list(p) for p in prompts], pad_id, device)
    positions = position_ids(attn)
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True, logits_to_keep=1)
    # transformers ≥ 5.2x names the KV cache `cache` (`past_key_values` before): pass it back as it came
    cache_key = "cache" if "cache" in out else "past_key_values"
    cache = out[cache_key]
    if k > 1:
        cache.batch_repeat_interleave(k)
    logits = out.logits[:, -1, :].repeat_interleave(k, dim=0)
    attn = attn.repeat_interleave(k, dim=0)
    next_position = positions[:, -1:].repeat_interleave(k, dim=0) + 1
    eos = torch.tensor(list(eos_ids), device=device, dtype=torch.long)
    rows = torch.arange(len(prompts) * k, device=device)  # which output each decode row belongs to
    outputs: List[List[int]] = [[] for _ in range(len(prompts) * k)]
    for step in range(max_new_tokens):
        tokens = sample_next(logits, temperature, top_p, generator,
                             None if uniforms is None else uniforms[rows, step])
        for row, token in zip(rows.tolist(), tokens.tolist()):
            outputs[row].append(token)
        running = ~torch.isin(tokens, eos)
        if step == max_new_tokens - 1 or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            rows, tokens, attn, next_position = rows[keep], tokens[keep], attn[keep], next_position[keep]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
        out = model(input_ids=tokens[:, None], attention_mask=attn, position_ids=next_position,
                    use_cache=True, logits_to_keep=1, **{cache_key: cache})
        logits = out.logits[:, -1, :]
        next_position = next_position + 1
    if was_training:
        model.train()
    return outputs
