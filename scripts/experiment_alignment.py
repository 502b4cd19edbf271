#!/usr/bin/env python
"""Base vs SFT vs aware on one recipe: train the arms, evaluate every model, write traceable artifacts.

    python scripts/experiment_alignment.py --name ahm-main --recipe alpaca_harmful_mix --steps 40
    python scripts/experiment_alignment.py --name ahm-main --arm aware-labels=objective=aware,verifier.harm.use_labels=true
    python scripts/experiment_alignment.py --name smoke --quick          # minutes: checks the pipeline, not the effect

Every arm trains the recipe with the same data, seed, steps and LoRA budget; an arm is `NAME=OVERRIDE,OVERRIDE`
(default arms: sft = objective=sft, aware = objective=aware). Training runs go to runs/experiments/<name>/
(resumable: a finished arm is reused, an interrupted one resumes). The artifacts go to docs/results/<name>/:

- experiment.json: the command, git commit, date, versions, and per arm its overrides, resolved config,
  wall time, median step time and regime counts; per suite its judge and settings;
- responses/<model>/<suite>.jsonl.gz: every prompt's response and judge score (an evaluation whose file
  exists is not redone);
- align_plot_<arm>.png for each sampling arm.

scripts/results_tables.py turns these into the tables of docs/results.md (the statistics are recomputed from
the per-prompt files); this script prints the same tables at the end.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from rich.console import Console  # noqa: E402

import results_tables  # noqa: E402

console = Console()

# suite → the `aware eval` overrides it always gets (the judge is the suite recipe's unless --judge says otherwise)
SUITE_DEFAULTS: Dict[str, List[str]] = {
    "advbench": [],
    "phrasings": [],
    "sensitive": [],
    "xstest": [],
    "task": [],
    "truthfulqa": [],
}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> Dict[str, str]:
    import torch
    import transformers

    import aware_cli

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "aware": aware_cli.__version__, "machine": platform.machine(), "cpu_threads": str(torch.get_num_threads()),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


# ----------------------------------------------------------------------------- train


def parse_arm(text: str) -> Tuple[str, List[str]]:
    name, _, overrides = text.partition("=")
    if not name or not overrides:
        raise SystemExit(f"--arm {text!r}: expected NAME=KEY=VALUE,KEY=VALUE")
    return name, [o for o in overrides.split(",") if o]


def train_arm(recipe: str, out: Path, overrides: List[str]) -> Tuple[Path, float]:
    """Train (or resume, or reuse) one arm; returns (run dir, seconds spent now)."""
    from aware_cli.config import compose
    from aware_cli.pipeline.train import run_training

    status = out / "status.json"
    if status.exists() and json.loads(status.read_text())["state"] == "completed":
        console.print(f"[dim]reuse {out}[/]")
        return out, 0.0
    resume = ["resume=auto"] if (out / "config.yaml").exists() else []
    started = time.perf_counter()
    run_training(compose(recipe, overrides + [f"output_dir={out}"] + resume), console)
    return out, time.perf_counter() - started


def run_summary(run: Path) -> Dict[str, Any]:
    """Median step time and its stages, and the regime / target counts of the run's input-steps."""
    import yaml

    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().split("\n") if x.strip()]
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().split("\n") if x.strip()]
    stages = ("sample", "verify", "gate", "update")

    def median(key):
        values = [m.get(key, 0.0) for m in metrics]
        return statistics.median(values) if values else None

    regimes: Dict[str, int] = {}
    targets: Dict[str, int] = {}
    task_refusals: Dict[str, Dict[str, Any]] = {}  # task rows (not mixed-in, not anchors) trained on a refusal
    for record in samples:
        regimes[record["regime"]] = regimes.get(record["regime"], 0) + 1
        target = record.get("target", "reference")
        targets[target] = targets.get(target, 0) + 1
        if target == "refusal" and not str(record["id"]).startswith(("mix-", "anchor-")):
            row = task_refusals.setdefault(str(record["id"]), {"prompt": record["prompt"], "steps": 0})
            row["steps"] += 1
    return {"median_step_s": statistics.median(sum(m.get(f"timing_s/{s}", 0.0) for s in stages) for m in metrics),
            "median_stage_s": {s: median(f"timing_s/{s}") for s in stages}, "steps": len(metrics),
            "input_steps": len(samples), "regimes": regimes, "targets": targets, "task_refusals": task_refusals,
            "config": yaml.safe_load((run / "config.yaml").read_text())}


# ----------------------------------------------------------------------------- evaluate


def evaluate(model: str, suite: str, target: Path, overrides: List[str]) -> Path:
    """`aware eval SUITE` of `model`; its rows (prompt, response, score, …) gzipped to `target`."""
    from aware_cli.config import compose
    from aware_cli.config.schema import EvalRunConfig
    from aware_cli.eval.runner import run_eval

    if target.exists():
        return target
    scratch = target.parent / f".eval-{suite}"
    cfg = compose(suite, [f"model.name_or_path={model}", f"output_dir={scratch}"] + overrides,
                  schema=EvalRunConfig, subdir="eval").config
    directory, metrics = run_eval(cfg, console)
    rows = [json.loads(line) for line in (directory / "responses.jsonl").read_text().split("\n") if line.strip()]
    header = {"suite": suite, "model": model, "judge": metrics.get("judge"), "overrides": overrides,
              "seconds": metrics.get("seconds"), "n": len(rows)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"_header": header}, ensure_ascii=False) + "\n")
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(target)
    shutil.rmtree(scratch, ignore_errors=True)
    return target


def suite_overrides(suite: str, args, split_file: Optional[Path]) -> List[str]:
    """The eval overrides of `suite`: response length, judge, task rows, the mixed-in rows left out."""
    out = list(SUITE_DEFAULTS.get(suite, []))
    out.append(f"generation.max_new_tokens={args.task_tokens if suite == 'task' else args.max_new_tokens}")
    out.append(f"generation.batch_size={args.gen_batch}")
    if suite == "task":
        out += [f"data.eval_size={args.task_rows}"]
    elif args.judge and suite != "truthfulqa":
        out.append(f"verifier={args.judge}")
    if args.limit and suite != "task":
        out.append(f"limit={args.limit}")
    out += [o.split(":", 1)[1] for o in args.suite_set if o.split(":", 1)[0] == suite]
    if split_file is not None and excluded_suite(suite, split_file):
        out.append(f"exclude_ids={split_file}")
    return out


def excluded_suite(suite: str, split_file: Path) -> bool:
    """Whether `suite` reads the data file that was mixed into training (its trained rows are left out)."""
    from aware_cli.config import compose
    from aware_cli.config.schema import EvalRunConfig

    mixed = json.loads(split_file.read_text()).get("mix_source")
    suite_data = compose(suite, [], schema=EvalRunConfig, subdir="eval").config.data.path
    return bool(mixed) and Path(str(mixed)).name == Path(str(suite_data)).name


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="experiment name: docs/results/<name>/, runs/experiments/<name>/")
    parser.add_argument("--recipe", default="alpaca_harmful_mix")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a trained arm, e.g. aware-labels=objective=aware,verifier.harm.use_labels=true "
                             "(default: sft=objective=sft and aware=objective=aware)")
    parser.add_argument("--no-base", action="store_true", help="do not evaluate the base model")
    parser.add_argument("--no-arms", action="store_true", help="train nothing: evaluate only --model models "
                        "(and the base model), e.g. earlier runs on another prompt selection")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="also evaluate this model (a run directory, checkpoint or HF id), untrained here; "
                             "e.g. the unsafe start of a recovery experiment")
    parser.add_argument("--suites", default="advbench,phrasings,sensitive,xstest,task")
    parser.add_argument("--suite-set", action="append", default=[], metavar="SUITE:KEY=VALUE",
                        help="an eval override for one suite, e.g. truthfulqa:limit=100")
    parser.add_argument("--judge", default=None, help="judge of the safety suites (default: each suite's own, "
                        "the keyword refusal rule)")
    parser.add_argument("--limit", type=int, default=None, help="stratified sample per safety suite (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="response length in the safety suites")
    parser.add_argument("--task-tokens", type=int, default=64, help="response length in the task suite")
    parser.add_argument("--gen-batch", type=int, default=24, help="prompts per generate call in evaluation "
                        "(24: about 2x faster than 8 on 2 CPU cores)")
    parser.add_argument("--task-rows", type=int, default=200, help="held-out task rows (data.eval_size of every arm)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every arm, e.g. --set trainer.lr=4e-4")
    parser.add_argument("--quick", action="store_true", help="smoke version: 4 steps, k=2, 12 prompts per suite")
    parser.add_argument("--out", type=Path, default=None, help="artifacts (default docs/results/<name>)")
    args = parser.parse_args()
    from aware_cli.cli import _quiet_libraries

    _quiet_libraries()
    if args.quick:
        args.steps, args.limit, args.task_rows, args.max_new_tokens, args.task_tokens = 4, 12, 12, 24, 24
    out = args.out or ROOT / "docs" / "results" / args.name
    runs_dir = ROOT / "runs" / "experiments" / args.name
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    arms = {} if args.no_arms else (dict(parse_arm(a) for a in args.arm)
                                    or {"sft": ["objective=sft"], "aware": ["objective=aware"]})
    common = [f"trainer.max_steps={args.steps}", f"trainer.seed={args.seed}", f"data.eval_size={args.task_rows}",
              "eval.every=0", f"trainer.save_every={max(1, args.steps // 4)}", *args.set]
    if args.quick:
        common += ["trainer.batch_size=4", "sampling.max_new_tokens=24", "eval.max_prompts=4", "k=2"]

    record: Dict[str, Any] = {"name": args.name, "recipe": args.recipe, "steps": args.steps, "seed": args.seed,
                              "command": "python scripts/experiment_alignment.py " + " ".join(sys.argv[1:]),
                              "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
                              "environment": environment(), "common_overrides": common, "arms": {}, "suites": {},
                              "models": {}}
    runs: Dict[str, Path] = {}
    for name, overrides in arms.items():
        run, seconds = train_arm(args.recipe, runs_dir / name, common + overrides)
        runs[name] = run
        record["arms"][name] = {"overrides": overrides, "train_s": seconds, **run_summary(run)}
    extra = [tuple(m.split("=", 1)) for m in args.model]
    # the rows some model here trained on (its split.json) are left out of the suites that read that file
    candidates = [r / "split.json" for r in runs.values()] + [Path(path) / "split.json" for _, path in extra]
    split_file = next((f for f in candidates if f.is_file() and json.loads(f.read_text()).get("train_ids")), None)

    from aware_cli.config import compose

    models = ([] if args.no_base else [("base", compose(args.recipe).config.model.name_or_path)])
    models += [(name, path) for name, path in extra]
    models += [(name, str(run)) for name, run in runs.items()]
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    for suite in suites:
        record["suites"][suite] = {"overrides": suite_overrides(suite, args, split_file)}
    for model_name, model in models:
        record["models"][model_name] = (f"runs/experiments/{args.name}/{model_name}" if model_name in runs
                                        else model)
        for suite in suites:
            evaluate(model, suite, out / "responses" / model_name / f"{suite}.jsonl.gz",
                     record["suites"][suite]["overrides"])

    from aware_cli.eval.align_plot import draw_align_plot, load_gate, load_points

    for name, run in runs.items():
        if any(json.loads(line).get("scores") for line in (run / "samples.jsonl").read_text().split("\n")[:50] if line.strip()):
            draw_align_plot(load_points(run), load_gate(run), out / f"align_plot_{name}.png",
                            title=f"{args.recipe}: {name}, first vs last step")
    record["wall_s"] = time.perf_counter() - started
    (out / "experiment.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    console.print(results_tables.render_experiment(out), markup=False, highlight=False)
    console.print(f"[bold green]artifacts:[/] {out} (wall {record['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
