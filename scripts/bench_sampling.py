"""Sampling throughput: aware's engine vs transformers' generate on the same B×k batch. Prints JSON.

    python scripts/bench_sampling.py                       # embedded SmolLM2-135M, B=4 prompts × k=4, 64 tokens
    python scripts/bench_sampling.py --model tiny --repeats 3
    python scripts/bench_sampling.py --no-eos              # force every sample to the full length (equal work)
    python scripts/bench_sampling.py --dtype bfloat16      # also sample from bf16 weights (sampling.dtype)

Prompts are real Alpaca instructions in the chat template. With EOS allowed (the default) both
engines sample real responses of different lengths; tokens/s counts the tokens each produced.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="model config group: smollm2 (embedded) or tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-eos", action="store_true", help="never stop early: every sample is max-new-tokens long")
    parser.add_argument("--dtype", default="bfloat16", choices=["model", "bfloat16", "float16"],
                        help="sampling.dtype of the extra rows (aware and hf with cast weights)")
    parser.add_argument("--data", default="builtin:alpaca-demo", help="Alpaca JSON file or builtin:NAME")
    parser.add_argument("--out", type=Path, help="also write the JSON here (with the command and commit)")
    args = parser.parse_args()

    from aware_cli.cli import _quiet_libraries
    from aware_cli.config import compose
    from aware_cli.data import build_prompt_ids, builtin
    from aware_cli.models import load_model
    from aware_cli.pipeline.rollout.sample import generate

    from bench_overhead import cpu_info, git_commit  # this folder is on sys.path when run as a script

    _quiet_libraries()
    cfg = compose("alpaca", [f"model={args.model}"]).config
    model, tokenizer = load_model(cfg.model, for_training=False)
    device = next(model.parameters()).device
    rows = json.loads(builtin.resolve(args.data).read_text())[: args.batch]
    prompts = [build_prompt_ids(tokenizer, r["instruction"], max_tokens=256)[0] for r in rows]
    if args.no_eos:  # an EOS id no token has: both engines run every sample to max_new_tokens
        import aware_cli.pipeline.rollout.sample as sample_module

        sample_module.eos_token_ids = lambda model, tokenizer: [-1]

    def run(engine: str, dtype: str, seed: int):
        start = time.perf_counter()
        out = generate(model, tokenizer, prompts, num_return=args.k, max_new_tokens=args.max_new_tokens,
                       do_sample=True, temperature=1.0, top_p=1.0, seed=seed, device=device, engine=engine,
                       dtype=dtype)
        return time.perf_counter() - start, out.num_tokens

    # hf = plain model.generate in the model's precision: the baseline every speedup is against
    variants = {"hf": ("hf", "model"), "aware": ("aware", "model")}
    if args.dtype != "model":
        variants.update({f"aware_{args.dtype}": ("aware", args.dtype), f"hf_{args.dtype}": ("hf", args.dtype)})
    results = {}
    for name, (engine, dtype) in variants.items():
        run(engine, dtype, 0)  # warm-up
        times, tokens = [], []
        for repeat in range(args.repeats):
            seconds, count = run(engine, dtype, 100 + repeat)
            times.append(seconds)
            tokens.append(count)
        results[name] = {"median_s": statistics.median(times), "tokens": tokens,
                         "tokens_per_s": sum(tokens) / sum(times)}
    report = {
        "bench": "sampling", "model": cfg.model.name_or_path if args.model == "smollm2" else args.model,
        "batch": args.batch, "k": args.k, "max_new_tokens": args.max_new_tokens, "eos": not args.no_eos,
        "prompt_tokens": [len(p) for p in prompts], "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, **cpu_info(), **results,
        "speedup_tokens_per_s": {name: r["tokens_per_s"] / results["hf"]["tokens_per_s"]
                                 for name, r in results.items() if name != "hf"},
    }
    report.update(command="python scripts/bench_sampling.py " + " ".join(sys.argv[1:]), commit=git_commit())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
