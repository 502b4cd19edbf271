"""`aware eval SUITE`: generate responses to a benchmark, judge them, compute and write the metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from aware_cli.config.schema import BertScoreConfig, EvalRunConfig
from aware_cli.data import Example, build_prompt_ids, load_examples
from aware_cli.errors import AwareError, DataError
from aware_cli.extras import require
from aware_cli.eval.metrics import HEADLINE, SUITE_METRICS, JudgedRow, task_quality
from aware_cli.models.trained import load_for_eval
from aware_cli.files import write_atomic
from aware_cli.pipeline.rollout.sample import generate

JUDGE_FREE = {"task"}  # suites scored against references, not by a verifier


def select_examples(cfg: EvalRunConfig) -> List[Example]:
    """The benchmark rows to evaluate: loaded, held-out split (task), exclusions, then `limit`."""
    examples = load_examples(cfg.data)
    if cfg.suite == "task" and cfg.held_out_only:
        if not cfg.data.eval_size:
            raise DataError("data.eval_size: the task suite scores the held-out rows; set data.eval_size > 0 "
                            "(or held_out_only=false)")
        examples = examples[: cfg.data.eval_size]  # the same rows `aware train` holds out (same data config)
    if cfg.exclude_ids:
        excluded = _excluded_ids(Path(cfg.exclude_ids))
        examples = [ex for ex in examples if ex.id not in excluded]
    if cfg.limit is not None:
        examples = stratified_sample(examples, cfg.limit, cfg.stratify_by, cfg.seed)
    if not examples:
        raise DataError(f"data.path: no rows left to evaluate in {cfg.data.path}")
    return examples


def stratified_sample(examples: List[Example], limit: int, column: Optional[str], seed: int) -> List[Example]:
    """`limit` rows, each stratum of `column` (a data column or meta key) in proportion to its size and at least
    once while there is room; seeded, and in the examples' own order. Without a column: a seeded sample."""
    import random

    if limit >= len(examples):
        return list(examples)
    strata: Dict[str, List[int]] = {}
    for i, ex in enumerate(examples):
        value = ex.meta.get("columns", {}).get(column, ex.meta.get(column)) if column else None
        strata.setdefault(str(value), []).append(i)
    rng = random.Random(seed)
    for members in strata.values():
        rng.shuffle(members)
    # largest-remainder allocation, at least one row per stratum while the limit allows
    shares = {key: limit * len(members) / len(examples) for key, members in strata.items()}
    take = {key: min(len(strata[key]), max(1, int(share))) for key, share in shares.items()}
    order = sorted(strata, key=lambda key: (shares[key] - int(shares[key]), key), reverse=True)
    while sum(take.values()) > limit:  # more strata than rows: drop the smallest shares
        smallest = min((key for key in take if take[key] > 0), key=lambda key: (shares[key], key))
        take[smallest] -= 1
    for key in order * len(order):
        if sum(take.values()) >= limit:
            break
        if take[key] < len(strata[key]):
            take[key] += 1
    chosen = sorted(i for key, members in strata.items() for i in members[:take[key]])
    return [examples[i] for i in chosen]


def _excluded_ids(path: Path) -> set:
    """A JSON list of ids, or a run's split.json (`{"train_ids": [...]}`)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"exclude_ids: cannot read {path}: {e}") from e
    ids = value.get("train_ids", []) if isinstance(value, dict) else value
    return {str(i) for i in ids}


def generate_responses(model, tokenizer, examples: List[Example], cfg: EvalRunConfig, device: torch.device,
                       console: Console) -> List[str]:
    """Batched generation (greedy unless generation.do_sample) with a progress bar."""
    gen = cfg.generation
    prompts = [build_prompt_ids(tokenizer, ex.prompt, chat_template=cfg.model.chat_template,
                                system_prompt=cfg.model.system_prompt, max_tokens=cfg.data.max_prompt_tokens)[0]
               for ex in examples]
    # shortest prompts first: less padding per batch; answers are put back in order
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    responses: List[str] = [""] * len(prompts)
    columns = (TextColumn("[bold]generate"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("generate", total=len(prompts))
        for start in range(0, len(order), gen.batch_size):
            batch = order[start:start + gen.batch_size]
            out = generate(model, tokenizer, [prompts[i] for i in batch], num_return=1,
                           max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample, temperature=gen.temperature,
                           top_p=gen.top_p, seed=cfg.seed + start if gen.do_sample else None, device=device)
            for i, texts in zip(batch, out.texts):
                responses[i] = texts[0]
            progress.update(task, advance=len(batch))
    return responses


def bertscore_scorer(cfg: BertScoreConfig, device: torch.device):
    """A function (predictions, references) → BERTScore F1 per pair, with the bert-score library."""
    from aware_cli.verifiers.encoder import resolve_encoder_path

    require("bert_score", "eval", "BERTScore (set bertscore.enabled=false to skip it)")
    try:
        model_type = resolve_encoder_path(cfg.model)
    except AwareError as err:
        raise err.with_key("bertscore.model") from err
    num_layers = cfg.num_layers or (6 if "minilm" in model_type.lower() else None)

    def score(predictions: List[str], references: List[str]) -> List[float]:
        import bert_score

        _, _, f1 = bert_score.score(predictions, references, model_type=model_type, num_layers=num_layers,
                                    batch_size=cfg.batch_size, device=str(device), lang="en", verbose=False)
        return f1.tolist()

    return score


def judge(cfg: EvalRunConfig, device: torch.device, examples: List[Example], responses: List[str]) -> List[Optional[float]]:
    """Scores of the suite's verifier (the judge) for every response."""
    from aware_cli.pipeline.verify import verify
    from aware_cli.verifiers import build_verifier

    scores = verify(build_verifier(cfg.verifier, device), examples, [[r] for r in responses])
    return [group[0] for group in scores]


def output_dir_for(cfg: EvalRunConfig, run_dir: Optional[Path]) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir) / "eval" / cfg.suite
    if run_dir is not None:
        return run_dir / "eval" / cfg.suite
    return Path("runs") / f"eval-{cfg.suite}-{time.strftime('%Y%m%d-%H%M%S')}" / "eval" / cfg.suite


def run_eval(cfg: EvalRunConfig, console: Console) -> Tuple[Path, Dict[str, Any]]:
    """Evaluate `cfg.model` on `cfg.suite`; writes metrics.json and responses.jsonl, returns (dir, metrics)."""
    started = time.perf_counter()
    examples = select_examples(cfg)
    model, tokenizer, run_dir = load_for_eval(cfg.model)
    device = next(model.parameters()).device
    console.print(f"{cfg.suite}: {len(examples)} prompts, model {cfg.model.name_or_path} on {device}")
    responses = generate_responses(model, tokenizer, examples, cfg, device, console)
    del model  # free memory for the judge's own model
    if cfg.suite in JUDGE_FREE:
        scores: List[Optional[float]] = [None] * len(examples)
    else:
        scores = judge(cfg, device, examples, responses)
    rows = [JudgedRow(id=ex.id, prompt=ex.prompt, response=r, score=s, harmful=ex.harmful, reference=ex.response,
                      meta=ex.meta) for ex, r, s in zip(examples, responses, scores)]
    if cfg.suite == "task":
        scorer = bertscore_scorer(cfg.bertscore, device) if cfg.bertscore.enabled else None
        metrics = task_quality(rows, scorer)
    else:
        metrics = SUITE_METRICS[cfg.suite](rows)
    metrics = {"suite": cfg.suite, "headline": HEADLINE[cfg.suite], "model": cfg.model.name_or_path,
               "judge": None if cfg.suite in JUDGE_FREE else cfg.verifier.name, **metrics,
               "seconds": time.perf_counter() - started}
    out = output_dir_for(cfg, run_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "responses.jsonl", "".join(json.dumps(_row_record(r), ensure_ascii=False) + "\n" for r in rows))
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return out, metrics


def _row_record(row: JudgedRow) -> Dict[str, Any]:
    record = {"id": row.id, "prompt": row.prompt, "response": row.response, "score": row.score,
              "harmful": row.harmful}
    for key in ("category", "category_name", "task_scores"):
        if key in row.meta:
            record[key] = row.meta[key]
    for key, value in row.meta.get("columns", {}).items():  # short tags (type, label, form, topic, source, …)
        if isinstance(value, (str, int, float, bool)) and len(str(value)) <= 40 and key not in record:
            record[key] = value
    if row.reference:
        record["reference"] = row.reference
    return record
