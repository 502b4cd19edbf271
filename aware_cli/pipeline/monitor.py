"""Around training's evaluations: trackers, in-training suites, the ALIGN-PLOT image, checkpoints/best.

`train.py` holds one `RunMonitor`; only rank 0's does anything (the others get empty trackers and
no suites). See tracking.py, suites.py and best.py for the parts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from rich.console import Console

from aware_cli.config.schema import AwareConfig
from aware_cli.data import Example
from aware_cli.errors import DataError
from aware_cli.extras import MissingExtra
from aware_cli.pipeline import rundir
from aware_cli.pipeline.best import BEST, BEST_JSON, BestTracker, best_mode
from aware_cli.pipeline.tracking import Trackers, open_trackers

ALIGN_PLOT = "align_plot.png"
BEFORE_JSON = "eval_before.json"


class RunMonitor:
    def __init__(self, cfg: AwareConfig, run_dir: Path, console: Console, *, main: bool, start: int) -> None:
        self.cfg, self.run_dir, self.console, self.main, self.start = cfg, run_dir, console, main, start
        self._suites = None
        self._plot = main and cfg.eval.align_plot
        self.best: Optional[BestTracker] = None
        if main and cfg.trainer.save_best:
            mode = best_mode(cfg.trainer.save_best, cfg.trainer.save_best_mode, cfg.eval.suites)
            self.best = BestTracker.resume(run_dir, cfg.trainer.save_best, mode, start) if cfg.resume else \
                BestTracker(cfg.trainer.save_best, mode)

    def trackers(self) -> Trackers:
        """The trackers of trainer.report_to (none on other ranks): use as a context manager."""
        if not self.main:
            return Trackers([])
        return open_trackers(self.cfg.trainer.report_to, self.run_dir, project=self.cfg.trainer.project,
                             start_step=self.start, resume=bool(self.cfg.resume))

    def prepare_suites(self, tokenizer, held_out: Sequence[Example], prompt_ids: Dict[str, List[int]],
                       split: Dict[str, Any], device) -> None:
        if self.main and self.cfg.eval.suites:
            from aware_cli.pipeline.suites import SuiteEvaluator

            self._suites = SuiteEvaluator(self.cfg, tokenizer, held_out, prompt_ids, split, device)
            counts = ", ".join(f"{s.name} {len(s.examples)}" for s in self._suites.suites)
            self.console.print(f"in-training suites: {counts} prompts per evaluation")

    def suites(self, model) -> Dict[str, Any]:
        """eval/<suite>/<metric> values of the model as it is now (rank 0)."""
        return self._suites(model) if self._suites is not None else {}

    def before(self, model) -> None:
        """eval.before: the suites on the model before its first step, kept in eval_before.json (rank 0, once)."""
        path = self.run_dir / BEFORE_JSON
        if self._suites is None or not self.cfg.eval.before or path.exists():
            return
        self.console.print("evaluating the suites before training (eval.before)")
        rundir.write_atomic(path, json.dumps(self._suites(model), indent=1) + "\n")

    def before_after(self, metrics: Dict[str, Any]) -> Optional[str]:
        """One line: each suite's headline metric before training → now (None without eval.before)."""
        path = self.run_dir / BEFORE_JSON
        if not self.main or self._suites is None or not path.is_file():
            return None
        from aware_cli.eval.metrics import HEADLINE

        before = json.loads(path.read_text())
        parts = []
        for name in self._suites.names:
            key = f"eval/{name}/{HEADLINE[name]}"
            if isinstance(before.get(key), (int, float)) and isinstance(metrics.get(key), (int, float)):
                parts.append(f"{name} {HEADLINE[name]} {before[key]:.3f} → {metrics[key]:.3f}")
        return "before → after: " + ", ".join(parts) if parts else None

    def after_evaluation(self, trackers: Trackers, step: int) -> None:
        """Draw align_plot.png from samples.jsonl so far and send it to the trackers."""
        if not self._plot:
            return
        from aware_cli.eval.align_plot import draw_align_plot, load_gate, load_points

        try:
            points = load_points(self.run_dir)
            if not points:
                return
            path = draw_align_plot(points, load_gate(self.run_dir), self.run_dir / ALIGN_PLOT,
                                   title=f"ALIGN-PLOT: {self.run_dir.name}, step {step}")
        except MissingExtra as e:
            self._plot = False
            self.console.print(f"[yellow]warning:[/] no ALIGN-PLOT image at evaluations: {e} "
                               f"(or set eval.align_plot=false)")
            return
        except DataError:  # nothing judged yet (e.g. objective=sft samples nothing)
            return
        trackers.log_image("align_plot", path, step)

    def improves(self, metrics: Dict[str, Any]) -> bool:
        """Whether this evaluation is the best so far by trainer.save_best (rank 0)."""
        if self.best is None:
            return False
        if self.cfg.trainer.save_best not in metrics:
            return False
        return self.best.improves(metrics)

    def save_best(self, save_weights: Callable[[Path], None]) -> Path:
        """checkpoints/best: the weights and best.json (metric, mode, value, step), written atomically."""
        assert self.best is not None
        record = self.best.record()

        def write(tmp: Path) -> None:
            save_weights(tmp)
            (tmp / BEST_JSON).write_text(json.dumps(record, indent=2) + "\n")

        path = rundir.write_dir_atomic(self.run_dir / "checkpoints" / BEST, write, manifest={"step": record["step"]})
        self.console.print(f"best {record['metric']} = {record['value']:.4g} at step {record['step']}: {path}",
                           highlight=False)
        return path
