"""Update cost of the preference objectives: gapo and shapo over dpo on the same offline pairs. Prints JSON.

    python scripts/bench_objectives.py                          # embedded SmolLM2-135M + LoRA, 4 pairs/step
    python scripts/bench_objectives.py --model tiny --steps 4   # seconds, for a quick check

Each objective trains `--steps` steps of `recipe=preference` (dpo_en_demo.json pairs, the same pairs
in the same order for every objective: same seed and batch schedule) and the median update seconds
after the first step are compared. Nothing is sampled, so the update is the whole step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

OBJECTIVES = ("dpo", "gapo", "shapo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model config group: smollm2 (embedded) or tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-tokens", type=int, default=64, help="data.max_prompt/response_tokens")
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    args = parser.parse_args()

    from rich.console import Console

    from aware_cli.cli import _quiet_libraries
    from aware_cli.config import compose
    from aware_cli.pipeline.train import run_training

    _quiet_libraries()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for objective in args.objectives.split(","):
            out = Path(tmp) / objective
            cfg = compose("preference", [f"model={args.model}", f"objective={objective}",
                                         f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch}",
                                         f"data.max_prompt_tokens={args.max_tokens}",
                                         f"data.max_response_tokens={args.max_tokens}", "trainer.save_every=0",
                                         f"output_dir={out}"])
            run_training(cfg, Console(quiet=True))
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n") if line.strip()]
            updates = [r["timing_s/update"] for r in rows[1:]] or [rows[0]["timing_s/update"]]
            results[objective] = {"median_update_s": statistics.median(updates), "update_s": updates,
                                  "losses": [r["loss"] for r in rows]}
    if "dpo" in results:
        for name, r in results.items():
            r["vs_dpo"] = r["median_update_s"] / results["dpo"]["median_update_s"]
    print(json.dumps({"bench": "objectives", "model": args.model, "batch": args.batch, "steps": args.steps,
                      "max_tokens": args.max_tokens, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
