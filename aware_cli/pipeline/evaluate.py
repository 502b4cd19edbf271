"""Stage 5 (in training): greedy responses to held-out prompts, their mean verifier score, and eval SFT loss."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from aware_cli.config.schema import EvalConfig
from aware_cli.data import Example
from aware_cli.models.logprobs import mean_logprob, token_logprobs
from aware_cli.pipeline.rollout.sample import generate
from aware_cli.pipeline.verify import verify


@torch.no_grad()
def evaluate(model, tokenizer, verifier, examples: Sequence[Example], prompt_ids: Dict[str, List[int]],
             target_ids: Dict[str, List[int]], cfg: EvalConfig, device: torch.device,
             batch_size: int = 8) -> Dict[str, Any]:
    """`eval_score`: mean V over greedy responses; `eval_loss_sft`: mean −log π(y*|x)/|y*|."""
    chosen = list(examples)[: cfg.max_prompts]
    if not chosen:
        return {}
    was_training = model.training
    model.eval()
    texts: List[List[str]] = []
    losses: List[float] = []
    for start in range(0, len(chosen), batch_size):
        part = chosen[start:start + batch_size]
        prompts = [prompt_ids[ex.id] for ex in part]
        out = generate(model, tokenizer, prompts, num_return=1, max_new_tokens=cfg.max_new_tokens,
                       do_sample=False, device=device)
        texts.extend(out.texts)
        logp, mask = token_logprobs(model, prompts, [target_ids[ex.id] for ex in part], tokenizer.pad_token_id, device)
        losses.extend((-mean_logprob(logp, mask)).tolist())
    if was_training:
        model.train()
    scores = [s for group in verify(verifier, chosen, texts) for s in group if s is not None]
    return {
        "eval_score": sum(scores) / len(scores) if scores else None,
        "eval_loss_sft": sum(losses) / len(losses),
        "eval_prompts": len(chosen),
    }
