"""One RL fine-tuning step, timed: aware vs TRL's GRPOTrainer on the same shapes. Prints one JSON line.

    python scripts/bench_step.py --model-size 135m --batch 8 --k 4 --max-new-tokens 128 --steps 8 --impl aware
    python scripts/bench_step.py --model-size 1.7b ... --impl trl          # needs `pip install trl`

Random-init Llama models of SmolLM2 shapes with the embedded tokenizer, full fine-tuning at the same
--precision in both (mixed, the GPU default: fp32 master weights and AdamW state + bf16 autocast, TRL's
`bf16=True` on an fp32 model; bf16: weights and optimizer state in bf16; fp32), every sample forced to the
full --max-new-tokens (no early EOS) so both do equal work; a random verifier keeps the policy-gradient
term active, and aware's soft gate gives every SFT target a weight (1 − β > 0), so the targets are
trained, not only forwarded. Reports the median step time after --warmup steps, completion tokens/s,
per-stage seconds and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # SmolLM2 configurations
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536),
    "360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560),
    "1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=8192),
}


def random_scores(prompts, completions, **kwargs):
    """A verifier with spread in every group, so β and the advantages are never all zero."""
    rng = random.Random(zlib.crc32(repr((len(prompts), completions[:1])).encode()))  # TRL: message lists
    return [rng.random() for _ in completions]


def bench_aware(args) -> dict:
    from aware_cli.cli import _quiet_libraries
    from aware_cli.config import compose
    from aware_cli.pipeline.step import summarize

    _quiet_libraries()
    shape = SHAPES[args.model_size]
    overrides = ["model=tiny", "model.finetune=full", f"k={args.k}", f"trainer.batch_size={args.batch}",
                 f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.ignore_eos=true",
                 "verifier=python", f"verifier.target={ROOT / 'scripts' / 'bench_step.py'}:random_scores", "gate.abstain=false",
                 "gate.mode=soft", "gate.min_weight=0", "objective.lambda_pg=1.0", f"trainer.precision={args.precision}",
                 f"trainer.logprob_batch={args.logprob_batch}", "data.max_response_tokens=128",
                 f"data.path={args.data}", f"sampling.cuda_graphs={str(args.cuda_graphs).lower()}",
                 f"model.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
                 "model.tiny.max_position_embeddings=2048"] + [f"model.tiny.{k}={v}" for k, v in shape.items()]
    cfg = compose("smoke", overrides).config
    policy, train_set = _policy(cfg)
    times, stages, tokens = [], [], []
    for step in range(args.warmup + args.steps):
        batch = [train_set[(step * args.batch + i) % len(train_set)] for i in range(args.batch)]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        if args.profile and step == args.warmup:  # one step under torch.profiler: its top operators to stderr
            records, scalars = _profiled(lambda: _train_step(policy, batch, step))
        else:
            records, scalars = _train_step(policy, batch, step)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            metrics = summarize(records, [scalars])
            stages.append({k: metrics[k] for k in metrics if k.startswith("timing_s/")})
            tokens.append(scalars["generated"])
    return _report(args, "aware", times, tokens, {k: statistics.median(s[k] for s in stages) for k in stages[0]})


def _profiled(run):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        out = run()
    averages = prof.key_averages()
    for key in (["self_cuda_time_total"] if torch.cuda.is_available() else []) + ["self_cpu_time_total"]:
        print(averages.table(sort_by=key, row_limit=25), file=sys.stderr)
    return out


def _train_step(policy, batch, step):
    from aware_cli.pipeline.step import train_step

    return train_step(policy, batch, step)


def _policy(cfg):
    """The `Policy` `run_training` builds (`build_policy`), without a run directory."""
    from aware_cli.data.mix import load_training_data
    from aware_cli.models import resolve_device
    from aware_cli.pipeline.train import build_policy, load_for_training

    data = load_training_data(cfg.data, base_dir=ROOT)
    device = resolve_device(cfg.model.device)
    cfg, model, tokenizer, precision = load_for_training(cfg, device)
    policy, _ = build_policy(cfg, model, tokenizer, data.train + data.held_out, device, precision=precision)
    return policy, data.train


def bench_trl(args) -> dict:
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        return {"impl": "trl", "error": "trl is not installed (pip install trl)"}
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from aware_cli.models import load_tokenizer
    from aware_cli.config.schema import ModelConfig

    tokenizer = load_tokenizer(ModelConfig(name_or_path="tiny"))
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=2048, tie_word_embeddings=True, **SHAPES[args.model_size])
    model = LlamaForCausalLM(config)  # fp32 weights: with bf16=True the Trainer autocasts (= mixed)
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    from aware_cli.data import builtin

    rows = json.loads(builtin.resolve(args.data).read_text())
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}]}
                                 for r in rows[: args.batch * (args.steps + args.warmup)]])
    times = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    cfg = GRPOConfig(output_dir="/tmp/aware-bench-trl", per_device_train_batch_size=args.batch * args.k,
                     num_generations=args.k, max_completion_length=args.max_new_tokens, max_steps=args.steps + args.warmup,
                     bf16=args.precision in ("mixed", "bf16"), use_vllm=False, logging_steps=1000, save_strategy="no",
                     report_to=[], generation_kwargs={"min_new_tokens": args.max_new_tokens})
    trainer = GRPOTrainer(model=model, reward_funcs=lambda prompts, completions, **kw: random_scores(prompts, completions),
                          args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    measured = times[args.warmup:]
    return _report(args, "trl", measured, [args.batch * args.k * args.max_new_tokens] * len(measured), {})


def _report(args, impl, times, tokens, stages) -> dict:
    median = statistics.median(times)
    return {"impl": impl, "model_size": args.model_size, "batch": args.batch, "k": args.k,
            "max_new_tokens": args.max_new_tokens, "steps": len(times), "median_step_s": median,
            "completion_tokens_per_s": statistics.median(tokens) / median, "stages_s": stages,
            "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "transformers": _version("transformers"), "trl": _version("trl"),
            "precision": args.precision, "cuda_graphs": args.cuda_graphs if impl == "aware" else None, "logprob_batch": args.logprob_batch,
            "gradient_checkpointing": args.gradient_checkpointing if impl == "aware" else "trl default (on)"}


def _version(package: str):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", choices=sorted(SHAPES), default="135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--logprob-batch", type=int, default=16)
    parser.add_argument("--impl", choices=["aware", "trl"], default="aware")
    parser.add_argument("--cuda-graphs", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                        help="aware: sampling.cuda_graphs (true: static KV cache + CUDA-graph decode on GPU)")
    parser.add_argument("--gradient-checkpointing", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                        help="aware: model.gradient_checkpointing (TRL's GRPOConfig turns it on by default)")
    parser.add_argument("--data", default="builtin:alpaca-demo",
                        help="Alpaca-format JSON whose instructions are the prompts")
    parser.add_argument("--profile", action="store_true",
                        help="aware: run the first timed step under torch.profiler and print its top operators "
                             "(GPU and CPU self time) to stderr; that step's time includes the profiler's overhead")
    parser.add_argument("--precision", choices=["mixed", "bf16", "fp32"], default=None,
                        help="both implementations (default: mixed on CUDA, fp32 on CPU)")
    args = parser.parse_args()
    args.precision = args.precision or ("mixed" if torch.cuda.is_available() else "fp32")
    sys.path.insert(0, str(ROOT))
    result = bench_aware(args) if args.impl == "aware" else bench_trl(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
