#!/usr/bin/env python
"""aware's cost over plain SFT: one run, same data, batch and model; prints one JSON line.

    python scripts/bench_overhead.py                         # embedded SmolLM2-135M + LoRA, k=4, ~6 min on 2 cores (~9 without native bf16)
    python scripts/bench_overhead.py --k 2 --k 8             # also k = 2 and 8 (one aware arm per k)
    python scripts/bench_overhead.py --out docs/bench/overhead-cpu.json
    python scripts/bench_overhead.py --model tiny --steps 3  # seconds, a smoke check

Both arms train `recipe=alpaca_harmful_mix` (its gate, the harm verifier, LoRA) for --steps steps from the
same start with the same batches (same seed): the SFT arm with `objective=sft` (no sampling), the aware arm
with `objective=aware` and k samples per prompt. The step time is the sum of the stage timings the trainer
logs (sample, verify, gate, update); the median skips each run's first step (lazy loads, allocator warm-up).
The arms alternate for --rounds rounds (SFT, aware, SFT, aware, ...) and each arm's median pools its timed steps
of every round, so a slow spell of a shared machine falls on both arms rather than on one of them.
`ratio` = median aware step / median SFT step (`ratio_by_round`: the same per round, to show the spread).
Where aware's time goes: the median of each stage, the tokens generated, and the tokens forwarded in the
update (targets and the samples whose loss weight is not negligible: gate.min_weight).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("sample", "verify", "gate", "update")


def run_arm(out: Path, recipe: str, overrides: List[str]) -> List[Dict[str, Any]]:
    from rich.console import Console

    from aware_cli.config import compose
    from aware_cli.pipeline.train import run_training

    run_training(compose(recipe, overrides + [f"output_dir={out}"]), Console(quiet=True))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n") if line.strip()]


def step_seconds(row: Dict[str, Any]) -> float:
    return sum(row.get(f"timing_s/{stage}", 0.0) for stage in STAGES)


def timed(runs: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """The steps of every run but each run's first (it pays one-off costs)."""
    return [r for rows in runs for r in (rows[1:] or rows)]


def median(runs: List[List[Dict[str, Any]]], value) -> float:
    return statistics.median(value(r) for r in timed(runs))


def summary(runs: List[List[Dict[str, Any]]]) -> Dict[str, Any]:
    rows = [r for run in runs for r in run]
    return {
        "median_step_s": median(runs, step_seconds),
        "median_step_s_by_round": [median([run], step_seconds) for run in runs],
        "stages_median_s": {stage: median(runs, lambda r, s=stage: r.get(f"timing_s/{s}", 0.0)) for stage in STAGES},
        "generated_tokens_median": median(runs, lambda r: r.get("generated", 0)),
        "forwarded_tokens_median": median(runs, lambda r: r.get("tokens_forwarded", 0)),
        "sequences_forwarded_median": median(runs, lambda r: r.get("sequences_forwarded", 0)),
        "regimes": {key: sum(r[key] for r in rows) / len(rows) for key in ("frac_sft", "frac_pg", "frac_abstain")},
        "step_s": [[round(step_seconds(r), 3) for r in run] for run in runs],
    }


def cpu_info() -> Dict[str, Any]:
    """The CPU's vector capability and whether it multiplies bf16 natively (what sampling.dtype=auto decides on)."""
    import torch

    from aware_cli.models.loading import cpu_has_fast_bf16

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_fast_bf16()}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="alpaca_harmful_mix")
    parser.add_argument("--model", default="smollm2", help="model config group: smollm2 (embedded) or tiny")
    parser.add_argument("--steps", type=int, default=10, help="steps per arm and round (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="times the arms alternate (SFT, aware, SFT, ...)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per step (both arms)")
    parser.add_argument("--k", type=int, action="append", default=None, help="samples per prompt (repeatable; default 4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both arms, e.g. --set gate.min_weight=0")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    import torch

    from aware_cli.cli import _quiet_libraries
    from aware_cli.models.allocator import tune_cpu_allocator

    _quiet_libraries()
    ks = args.k or [4]
    common = [f"model={args.model}", f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch}",
              "trainer.save_every=0", "eval.every=0", "eval.max_prompts=0", *args.set]
    started = time.perf_counter()
    rounds = max(1, args.rounds)
    sft_runs: List[List[Dict[str, Any]]] = []
    aware_runs: Dict[int, List[List[Dict[str, Any]]]] = {k: [] for k in ks}
    with tempfile.TemporaryDirectory(prefix="aware-bench-") as tmp:
        for round_ in range(rounds):
            sft_runs.append(run_arm(Path(tmp) / f"sft-{round_}", args.recipe, common + ["objective=sft"]))
            for k in ks:
                aware_runs[k].append(run_arm(Path(tmp) / f"aware-k{k}-{round_}", args.recipe,
                                             common + ["objective=aware", f"k={k}"]))
    sft = summary(sft_runs)
    arms = {k: summary(runs) for k, runs in aware_runs.items()}
    main_k = ks[0]
    result = {
        "bench": "overhead", "recipe": args.recipe, "model": args.model, "batch": args.batch, "steps": args.steps,
        "rounds": rounds,
        "k": main_k, "sft_step_s": sft["median_step_s"], "aware_step_s": arms[main_k]["median_step_s"],
        "ratio": arms[main_k]["median_step_s"] / sft["median_step_s"],
        "ratio_by_round": [a / s for a, s in zip(arms[main_k]["median_step_s_by_round"],
                                                 sft["median_step_s_by_round"])],
        "ratio_by_k": {str(k): arm["median_step_s"] / sft["median_step_s"] for k, arm in arms.items()},
        "sft": sft, "aware": {str(k): arm for k, arm in arms.items()}, "overrides": common,
        "command": ("AWARE_MALLOC_TUNING=0 " if os.environ.get("AWARE_MALLOC_TUNING") == "0" else "")
                   + "python scripts/bench_overhead.py " + " ".join(sys.argv[1:]), "commit": git_commit(),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine(),
                        "processor": platform.processor() or "unknown",
                        **cpu_info(),
                        "malloc_tuning": tune_cpu_allocator()},  # models/allocator.py, in effect for both arms
        "wall_s": time.perf_counter() - started,
    }
    line = json.dumps(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
