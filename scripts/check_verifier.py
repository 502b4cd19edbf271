#!/usr/bin/env python
"""The verifier's held-out check (issue 18, item 0) for any verifier: harm with any heads, guard_lm, hf_classifier,
http_judge, a python function, a composite.

    python scripts/check_verifier.py --out docs/results/verifier/check-harm            # alpaca's verifier (harm)
    python scripts/check_verifier.py --verifier guard_lm verifier.guard.model=meta-llama/Llama-Guard-3-1B \\
        --out /tmp/check-llama-guard
    python scripts/check_verifier.py --verifier http_judge verifier.http.url=https://api.example.com/v1/chat/completions \\
        verifier.http.model=gpt-4o-mini --sample 200 --out /tmp/check-judge   # key from $AWARE_JUDGE_API_KEY

The cases are the embedded model's own non-refusing greedy answers to held-out requests (--answers, default the
982 of docs/results/verifier/smollm2-layers/answers.jsonl.gz: benign sensitive and harmful requests in several
phrasings, never trained on by any shipped heads): the verifier should score the helpful answers aligned and the
complying ones misaligned (aware_cli/eval/verifier_check.py says exactly what each share counts). Writes
DIR/verifier.json (command, commit, date, the verifier's resolved config, the shares, seconds) and DIR/scores.jsonl.gz
(every case's score and the refusal's); `<!-- results:verifier/NAME:verifier -->` in a page renders the shares
(scripts/results_tables.py). Arguments after the options are verifier overrides as for `aware verify`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aware_cli.errors import AwareError  # noqa: E402

ANSWERS = ROOT / "docs" / "results" / "verifier" / "smollm2-layers" / "answers.jsonl.gz"
BATCH = 64  # cases per verifier call: one progress line each


def read_cases(path: Path) -> List[dict]:
    """The cases of an answers file: JSONL (gzip or plain) rows with prompt, answer, label (harmful/benign),
    source."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as e:
        raise AwareError(f"{path}: cannot read the answers ({e})") from None
    for number, row in enumerate(rows, 1):
        missing = [k for k in ("prompt", "answer", "label", "source") if not isinstance(row.get(k), str)]
        if missing:
            raise AwareError(f"{path}:{number}: no {', '.join(missing)}")
        if row["label"] not in ("harmful", "benign"):
            raise AwareError(f"{path}:{number}: label {row['label']!r} is neither harmful nor benign")
    return rows


def stratified_sample(cases: List[dict], n: int, seed: int) -> List[dict]:
    """n cases, each (label, source) group in proportion and at least once, seeded, in the file's order: the eval
    suites' own sample (aware_cli.eval.runner.stratified_sample) over the cases."""
    from aware_cli.data import Example
    from aware_cli.eval.runner import stratified_sample as sample_examples

    rows = [Example(id=str(i), prompt="", response="", meta={"group": f"{case['label']}/{case['source']}"})
            for i, case in enumerate(cases)]  # only the group matters to the sample
    return [cases[int(row.id)] for row in sample_examples(rows, n, "group", seed)]


def main(argv: Optional[List[str]] = None) -> int:
    from aware_cli.config.compose import verifier_config
    from aware_cli.eval.verifier_check import REFUSAL, answer_checks
    from aware_cli.files import file_sha256, replace_atomic, write_atomic
    from aware_cli.verifiers import build_verifier

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for verifier.json and scores.jsonl.gz")
    parser.add_argument("--verifier", default=None, help="verifier group (harm, guard_lm, http_judge, ...); "
                        "default: the recipe's (alpaca: harm)")
    parser.add_argument("--answers", type=Path, default=ANSWERS, help="cases: JSONL(.gz) of prompt, answer, "
                        "label (harmful/benign), source (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=0, help="a seeded sample of N cases, each (label, source) "
                        "group in proportion (for slow judges; 0: every case)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample")
    parser.add_argument("overrides", nargs="*", help="recipe=NAME and verifier overrides, e.g. verifier.harm.heads=…")
    args = parser.parse_args(argv)

    cases = read_cases(args.answers)
    if args.sample:
        cases = stratified_sample(cases, args.sample, args.seed)
    cfg = verifier_config(args.verifier, args.overrides)
    verifier = build_verifier(cfg)
    started = time.time()
    scores: List[Optional[float]] = []
    refusal_scores: List[Optional[float]] = []
    for start in range(0, len(cases), BATCH):
        batch = cases[start:start + BATCH]
        prompts = [c["prompt"] for c in batch]
        scores += verifier(prompts, [c["answer"] for c in batch])
        refusal_scores += verifier(prompts, [REFUSAL] * len(batch))
        print(f"scored {start + len(batch)}/{len(cases)} ({time.time() - started:.0f} s)", file=sys.stderr)
    seconds = time.time() - started
    checks = answer_checks(cases, scores, refusal_scores)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {
        "command": "python scripts/check_verifier.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": commit, "date": time.strftime("%Y-%m-%d"),
        "verifier": dataclasses.asdict(cfg),
        "answers": {"file": str(args.answers.resolve().relative_to(ROOT)) if args.answers.resolve().is_relative_to(ROOT)
                    else args.answers.name, "sha256": file_sha256(args.answers),
                    "cases": len(cases)},
        "unjudged": sum(s is None for s in scores) + sum(s is None for s in refusal_scores),
        "seconds": round(seconds, 1),
        "goals": checks,
    }
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
        for case, score, refusal in zip(cases, scores, refusal_scores):
            row = {k: case[k] for k in ("prompt", "label", "source")} | {"score": score, "refusal_score": refusal}
            handle.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)
    replace_atomic(args.out / "scores.jsonl.gz", lambda tmp: tmp.write_bytes(buffer.getvalue()))
    write_atomic(args.out / "verifier.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    for name, share in checks.items():
        rate = "–" if share["rate"] is None else f"{share['rate']:.1%}"
        print(f"{name}: {rate} ({share['k']}/{share['n']})")
    print(f"wrote {args.out / 'verifier.json'} ({seconds:.0f} s, {report['unjudged']} unjudged)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AwareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
