"""scripts/bench_sampling.py on the tiny model: one JSON record with the command, commit and the CPU's bf16 support."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sampling_writes_a_record_a_reader_can_place(tmp_path):
    out = tmp_path / "sampling.json"
    args = ["--model", "tiny", "--repeats", "1", "--batch", "2", "--k", "2", "--max-new-tokens", "4", "--out", str(out)]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_sampling.py"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record == json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["command"] == "python scripts/bench_sampling.py " + " ".join(args)
    assert len(record["commit"]) == 40 or record["commit"] == "unknown"
    assert isinstance(record["cpu_native_bf16"], bool) and record["cpu_capability"]
    for name in ("hf", "aware", "aware_bfloat16", "hf_bfloat16"):
        assert record[name]["median_s"] > 0 and len(record[name]["tokens"]) == 1
