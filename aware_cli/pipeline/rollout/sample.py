"""Stage 1: sample k responses per prompt from the current policy, all B×k in one batched call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from aware_cli.config.schema import SamplingConfig, VllmConfig
from aware_cli.pipeline.rollout.engine import generate_k, sampling_weights
from aware_cli.models.logprobs import pack_left


@dataclass
class Samples:
    """k responses for each of B prompts: `ids[b][j]` (ending at EOS if generated) and `texts[b][j]`."""

    ids: List[List[List[int]]]
    texts: List[List[str]]
    num_tokens: int  # generated tokens, EOS included


def cut_at_eos(tokens: List[int], eos_ids: Sequence[int], pad_id: int) -> List[int]:
    """Keep tokens up to and including the first EOS; drop trailing padding."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    while tokens and tokens[-1] == pad_id:
        tokens = tokens[:-1]
    return tokens


def eos_token_ids(model, tokenizer) -> List[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if isinstance(ids, list) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[List[int]], *, num_return: int, max_new_tokens: int,
             do_sample: bool, temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = None,
             device: torch.device, engine: str = "aware", ignore_eos: bool = False, dtype: str = "model",
             cuda_graphs: bool = True, vllm: Optional[VllmConfig] = None,
             max_prompt_tokens: Optional[int] = None, merge_lora: bool = True,
             row_seeds: Optional[Sequence[int]] = None) -> Samples:
    """`num_return` responses for each prompt, all in one batch (greedy unless `do_sample`).

    engine=aware: `engine.generate_k` (one prefill per prompt, finished rows leave the batch; on CUDA
    with `cuda_graphs`, a static KV cache and a CUDA-graph decode step: `static_decode.py`);
    engine=hf: transformers' `generate` on the repeated, left-padded prompts;
    engine=vllm: the policy's vLLM engine (`vllm_sampler.py`; settings `vllm`, context from
    `max_prompt_tokens` + `max_new_tokens` unless `vllm.max_model_len` is set).
    row_seeds: one seed per prompt (engine=aware): each prompt's draws come from its own seed, so its
    samples do not depend on the rest of the batch (engine=hf and vllm use `seed` for the batch).
    dtype / merge_lora: the weights while sampling (`engine.sampling_weights`: a LoRA-merged and/or cast
    copy; not for vllm, which runs its own copy of the weights at `vllm.dtype`).
    """
    if engine == "vllm":
        return _generate_vllm(model, tokenizer, prompts, num_return=num_return, max_new_tokens=max_new_tokens,
                              do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed,
                              ignore_eos=ignore_eos, cfg=vllm or VllmConfig(), max_prompt_tokens=max_prompt_tokens)
    with sampling_weights(model, dtype, merge_lora):
        return _generate(model, tokenizer, prompts, num_return=num_return, max_new_tokens=max_new_tokens,
                         do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed, device=device,
                         engine=engine, ignore_eos=ignore_eos, cuda_graphs=cuda_graphs, row_seeds=row_seeds)


def _generate(model, tokenizer, prompts, *, num_return, max_new_tokens, do_sample, temperature, top_p, seed, device,
              engine, ignore_eos, cuda_graphs, row_seeds=None) -> Samples:
    if engine == "aware":
        flat = generate_k(model, prompts, num_return, max_new_tokens=max_new_tokens,
                          eos_ids=[] if ignore_eos else eos_token_ids(model, tokenizer),
                          pad_id=tokenizer.pad_token_id, device=device,
                          temperature=temperature if do_sample else 0.0, top_p=top_p, seed=seed,
                          cuda_graphs=cuda_graphs, row_seeds=row_seeds)
        return _group(tokenizer, flat, num_return)
    return _generate_hf(model, tokenizer, prompts, num_return=num_return, max_new_tokens=max_new_tokens,
                        do_sample=do_sample, temperature=temperature, top_p=top_p, seed=seed, device=device,
                        ignore_eos=ignore_eos)


def _generate_vllm(model, tokenizer, prompts, *, num_return, max_new_tokens, do_sample, temperature, top_p, seed,
                   ignore_eos, cfg: VllmConfig, max_prompt_tokens: Optional[int]) -> Samples:
    from aware_cli.pipeline.rollout.vllm_sampler import sampler_for  # vllm itself is imported there, on first use

    sampler = sampler_for(model, cfg, max_prompt_tokens=max_prompt_tokens)
    flat = sampler.generate(model, prompts, num_return, max_new_tokens=max_new_tokens,
                            eos_ids=[] if ignore_eos else eos_token_ids(model, tokenizer),
                            temperature=temperature if do_sample else 0.0, top_p=top_p, seed=seed,
                            ignore_eos=ignore_eos)
    return _group(tokenizer, flat, num_return)


def _group(tokenizer, flat: List[List[int]], num_return: int) -> Samples:
    """[B·k] token lists → Samples grouped per prompt, with decoded texts."""
    texts = tokenizer.batch_decode(flat, skip_special_tokens=True)
    count = len(flat) // num_return
    return Samples([flat[b * num_return:(b + 1) * num_return] for b in range(count)],
                   [[t.strip() for t in texts[b * num_return:(b + 1) * num_return]] for b in range(count)],
                   sum(len(t) for t in flat))


def _generate_hf(model, tokenizer, prompts, *, num_return, max_new_tokens, do_sample, temperature, top_p, seed,
                 device, ignore_eos=False) -> Samples:
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id
    repeated = [list(p) for p in prompts for _ in range(num_return)]
    ids, attn = pack_left(repeated, pad_id, device)
    eos = eos_token_ids(model, tokenizer)
    if seed is not None:
        torch.manual_seed(seed)  # sampling depends only on (seed, step): exact resume
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else dict(
        do_sample=False, temperature=None, top_p=None, top_k=None)
    if ignore_eos:
        sampling["min_new_tokens"] = max_new_tokens
    out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                         eos_token_id=eos, **sampling)
    if was_training:
        model.train()
    new = out[:, ids.shape[1]:].tolist()
    return _group(tokenizer, [cut_at_eos(t, eos, pad_id) for t in new], num_return)


def sample(model, tokenizer, prompts: Sequence[List[int]], k: int, cfg: SamplingConfig, *, seed: int,
           device: torch.device, max_prompt_tokens: Optional[int] = None,
           row_seeds: Optional[Sequence[int]] = None) -> Samples:
    """ŷ_1..ŷ_k ~ π_θ(·|x) for every prompt (temperature / top-p / engine from the recipe).

    `max_prompt_tokens` (data.max_prompt_tokens) sizes vLLM's context when sampling.engine=vllm.
    `row_seeds`: one seed per prompt (see `generate`).
    """
    return generate(model, tokenizer, prompts, num_return=k, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                    temperature=cfg.temperature, top_p=cfg.top_p, seed=seed, device=device, engine=cfg.engine,
                    ignore_eos=cfg.ignore_eos, dtype=cfg.dtype, cuda_graphs=cfg.cuda_graphs, vllm=cfg.vllm,
                    max_prompt_tokens=max_prompt_tokens, merge_lora=cfg.merge_lora, row_seeds=row_seeds)
