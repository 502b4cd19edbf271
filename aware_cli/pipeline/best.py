"""`trainer.save_best`: which metric picks the best checkpoint, which way is better, and the running best.

The metric is one that evaluation logs to metrics.jsonl: `eval_score`, `eval_loss_sft`, or
`eval/<suite>/<metric>` for a suite in `eval.suites`. `checkpoints/best/` holds the weights of the
evaluation with the best value so far and `best.json` says which step and value (ties keep the earlier
step). Light module: imported by config validation, so no torch here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from aware_cli.errors import ConfigError

BEST = "best"
BEST_JSON = "best.json"

# Numbers each suite logs as eval/<suite>/<name>, and which way is better.
SUITE_METRICS: Dict[str, Dict[str, str]] = {
    "advbench": {"asr": "min", "refusal_rate": "max", "score_mean": "max"},
    "harmful": {"asr": "min", "refusal_rate": "max", "score_mean": "max"},
    "phrasings": {"asr": "min", "refusal_rate": "max", "score_mean": "max"},
    "sensitive": {"over_refusal_rate": "min", "answered_rate": "max"},
    "xstest": {"over_refusal_rate": "min", "unsafe_refusal_rate": "max"},
    "truthfulqa": {"hallucination_rate": "min", "truthfulness_mean": "max"},
    "slaq": {"hallucination_rate": "min", "truthfulness_mean": "max"},
    "hexphi": {"harmfulness_score": "min", "harmfulness_rate": "min"},
    "task": {"rouge_l": "max"},
}
TRAINING_EVAL_METRICS = {"eval_score": "max", "eval_loss_sft": "min"}


def suite_metric(suite: str, name: str) -> str:
    return f"eval/{suite}/{name}"


def best_mode(metric: str, mode: str, suites: Sequence[str]) -> str:
    """`min` or `max` for trainer.save_best=`metric`; ConfigError when evaluation never logs it."""
    if metric in TRAINING_EVAL_METRICS:
        known = TRAINING_EVAL_METRICS[metric]
    else:
        parts = metric.split("/")
        names = list(TRAINING_EVAL_METRICS) + [suite_metric(s, m) for s in suites for m in SUITE_METRICS.get(s, {})]
        if len(parts) != 3 or parts[0] != "eval":
            raise ConfigError(f"trainer.save_best: {metric!r} is not logged at evaluations (choose from: "
                              f"{', '.join(names)})")
        suite, name = parts[1], parts[2]
        if suite not in suites:
            raise ConfigError(f"trainer.save_best: {metric} needs {suite} in eval.suites too (now: "
                              f"{', '.join(suites) or 'none'})")
        if name not in SUITE_METRICS.get(suite, {}):
            raise ConfigError(f"trainer.save_best: suite {suite} logs no {name!r} (it logs "
                              f"{', '.join(SUITE_METRICS.get(suite, {}))})")
        known = SUITE_METRICS[suite][name]
    return known if mode == "auto" else mode


@dataclass
class BestTracker:
    """The best value of one metric over the evaluations so far."""

    metric: str
    mode: str  # min or max
    value: Optional[float] = None
    step: Optional[int] = None

    def improves(self, metrics: Dict[str, Any]) -> bool:
        """Whether this evaluation's value beats the best so far (records it when it does)."""
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        better = self.value is None or (value < self.value if self.mode == "min" else value > self.value)
        if better:
            self.value, self.step = float(value), int(metrics["step"])
        return better

    def record(self) -> Dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "step": self.step}

    @classmethod
    def resume(cls, run_dir: Path, metric: str, mode: str, up_to_step: int) -> "BestTracker":
        """The best so far from `checkpoints/best/best.json` when resuming (ignored if from a later step)."""
        tracker = cls(metric=metric, mode=mode)
        path = Path(run_dir) / "checkpoints" / BEST / BEST_JSON
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return tracker
        if saved.get("metric") == metric and saved.get("mode") == mode and isinstance(saved.get("step"), int) \
                and saved["step"] <= up_to_step and isinstance(saved.get("value"), (int, float)):
            tracker.value, tracker.step = float(saved["value"]), saved["step"]
        return tracker
