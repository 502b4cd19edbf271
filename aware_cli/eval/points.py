"""(μ, σ) points of any model without training: sample k responses per prompt, verify, gate.

The "before" picture of an align-plot, and the calibration set of `aware calibrate`.
"""

from __future__ import annotations

from typing import Any, Dict, List

from rich.console import Console

from aware_cli.config.schema import AwareConfig
from aware_cli.data import build_prompt_ids
from aware_cli.data.mix import load_training_data
from aware_cli.eval.align_plot import points_from_scores
from aware_cli.models.trained import load_for_eval
from aware_cli.pipeline.rollout.sample import sample
from aware_cli.pipeline.verify import verify
from aware_cli.verifiers import build_verifier


def compute_points(cfg: AwareConfig, limit: int, console: Console) -> List[Dict[str, Any]]:
    """Points for the first `limit` training prompts of the recipe (mixed-in rows included) under its gate."""
    data = load_training_data(cfg.data)
    examples = (data.train + data.held_out)[:limit]
    model, tokenizer, _ = load_for_eval(cfg.model)
    device = next(model.parameters()).device
    verifier = build_verifier(cfg.verifier, device)  # on the model's device unless verifier.device says
    console.print(f"sampling k={cfg.k} responses for {len(examples)} prompts with {cfg.model.name_or_path}")
    texts: List[List[str]] = []
    batch = cfg.trainer.batch_size
    for start in range(0, len(examples), batch):
        part = examples[start:start + batch]
        prompts = [build_prompt_ids(tokenizer, ex.prompt, chat_template=cfg.model.chat_template,
                                    system_prompt=cfg.model.system_prompt, max_tokens=cfg.data.max_prompt_tokens)[0]
                   for ex in part]
        out = sample(model, tokenizer, prompts, cfg.k, cfg.sampling, seed=cfg.trainer.seed + start, device=device,
                     max_prompt_tokens=cfg.data.max_prompt_tokens)
        texts.extend(out.texts)
    scores = verify(verifier, examples, texts)
    return points_from_scores(scores, cfg.gate, step=0, ids=[ex.id for ex in examples],
                              prompts=[ex.prompt for ex in examples], responses=texts)
