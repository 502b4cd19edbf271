"""Benchmark suites during training (`eval.suites`): a few prompts each, on the model in memory.

At every evaluation step each suite generates greedy responses to `eval.suite_limit` of its prompts
with the policy as it is (no reload), judges them with the suite's own judge (as `aware eval SUITE`
does) and returns `eval/<suite>/<metric>` values, e.g. `eval/advbench/asr`, `eval/xstest/over_refusal_rate`,
`eval/task/rouge_l`. `task` scores ROUGE-L on the run's own held-out rows. Rows this run or any run it
continued from trained on (their split.json `train_ids` of the same source) are left out.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set

import torch
from rich.console import Console

from aware_cli.config.schema import AwareConfig, EvalRunConfig
from aware_cli.data import Example
from aware_cli.data.mix import MIX_PREFIX
from aware_cli.errors import ConfigError
from aware_cli.pipeline.best import suite_metric


@dataclass
class _Suite:
    name: str
    examples: List[Example]
    config: Optional[EvalRunConfig] = None  # None: the task suite (held-out rows, no judge)
    verifier: Any = None


def trained_ids(splits: Sequence[Dict[str, Any]], source: str) -> Set[str]:
    """Row ids of `source` (e.g. builtin:advbench) that any of these split.json records trained on."""
    return {str(i) for split in splits if split.get("mix_source") == source for i in split.get("train_ids", [])}


def lineage_splits(split: Dict[str, Any], name_or_path: str) -> List[Dict[str, Any]]:
    """This run's split plus those of the runs it continued from."""
    from aware_cli.models.lineage import ancestor_runs

    splits = [split]
    for run in ancestor_runs(name_or_path):
        try:
            splits.append(json.loads((run / "split.json").read_text()))
        except (OSError, ValueError):
            continue
    return splits


class SuiteEvaluator:
    """Prepared once (data loaded, prompts chosen); called at every evaluation step."""

    def __init__(self, cfg: AwareConfig, tokenizer, held_out: Sequence[Example], prompt_ids: Dict[str, List[int]],
                 split: Dict[str, Any], device: torch.device) -> None:
        from aware_cli.config import compose
        from aware_cli.eval.runner import select_examples

        self.cfg, self.tokenizer, self.prompt_ids, self.device = cfg, tokenizer, prompt_ids, device
        limit = cfg.eval.suite_limit
        splits = lineage_splits(split, cfg.model.name_or_path) if cfg.eval.suites else []
        self.suites: List[_Suite] = []
        for name in cfg.eval.suites:
            if name == "task":
                rows = [ex for ex in held_out if not ex.id.startswith(MIX_PREFIX) and ex.response][:limit]
                if not rows:
                    raise ConfigError("eval.suites: task scores the run's held-out rows against their references; "
                                      "this data holds none out (set data.eval_size > 0)")
                self.suites.append(_Suite(name, rows))
                continue
            run_cfg = compose(name, [f"generation.max_new_tokens={cfg.eval.max_new_tokens}"],
                              schema=EvalRunConfig, subdir="eval").config
            run_cfg = dataclasses.replace(run_cfg, model=cfg.model, limit=None, exclude_ids=None)
            excluded = trained_ids(splits, run_cfg.data.path)
            rows = [ex for ex in select_examples(run_cfg) if ex.id not in excluded][:limit]
            self.suites.append(_Suite(name, rows, run_cfg))

    @property
    def names(self) -> List[str]:
        return [s.name for s in self.suites]

    @torch.no_grad()
    def __call__(self, model) -> Dict[str, Any]:
        if not self.suites:
            return {}
        was_training = model.training
        model.eval()
        try:
            out: Dict[str, Any] = {}
            for suite in self.suites:
                values = self._task(model, suite) if suite.config is None else self._benchmark(model, suite)
                out.update({suite_metric(suite.name, k): v for k, v in values.items()
                            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))})
            return out
        finally:
            if was_training:
                model.train()

    def _benchmark(self, model, suite: _Suite) -> Dict[str, Any]:
        from aware_cli.eval.metrics import SUITE_METRICS, JudgedRow
        from aware_cli.eval.runner import generate_responses
        from aware_cli.pipeline.verify import verify

        quiet = Console(file=io.StringIO())  # no second progress bar inside training's
        responses = generate_responses(model, self.tokenizer, suite.examples, suite.config, self.device, quiet)
        if suite.verifier is None:
            suite.verifier = self._judge(suite.config)
        scores = [group[0] for group in verify(suite.verifier, suite.examples, [[r] for r in responses])]
        rows = [JudgedRow(id=ex.id, prompt=ex.prompt, response=r, score=s, harmful=ex.harmful, reference=ex.response,
                          meta=ex.meta) for ex, r, s in zip(suite.examples, responses, scores)]
        return SUITE_METRICS[suite.name](rows)

    def _judge(self, run_cfg: EvalRunConfig):
        from aware_cli.verifiers import build_verifier

        return build_verifier(run_cfg.verifier, self.device)

    def _task(self, model, suite: _Suite) -> Dict[str, Any]:
        from aware_cli.eval.metrics import JudgedRow, task_quality
        from aware_cli.pipeline.rollout.sample import generate

        texts: List[str] = []
        for start in range(0, len(suite.examples), 8):
            part = suite.examples[start:start + 8]
            result = generate(model, self.tokenizer, [self.prompt_ids[ex.id] for ex in part], num_return=1,
                              max_new_tokens=self.cfg.eval.max_new_tokens, do_sample=False, device=self.device)
            texts.extend(group[0] for group in result.texts)
        rows = [JudgedRow(id=ex.id, prompt=ex.prompt, response=t, score=None, reference=ex.response)
                for ex, t in zip(suite.examples, texts)]
        return task_quality(rows)
