#!/usr/bin/env python
"""Build the built-in data set `safety-prompts` (aware_cli/assets/data/safety-prompts/prompts.jsonl).

    python scripts/build_safety_prompts.py            # rewrite prompts.jsonl from its two sources
    python scripts/build_safety_prompts.py --check    # exit 1 if prompts.jsonl is not what the sources give

Sources (both in that folder, see its SOURCE.md):
- written.jsonl: requests written for aware in groups of benign and harmful requests on one sensitive subject
  (`topic`, `form`: instruction, question, casual, roleplay, code, persuasive, multi_part, educational);
- hh_labels.jsonl: aware's harmful / benign / borderline label of the first human turn of each conversation of
  the built-in `hh-rlhf-harmless` (Anthropic HH-RLHF harmless-base test split, MIT).

Each row of prompts.jsonl: id, prompt, label (harmful | benign | borderline), topic, form, source (written |
hh-rlhf), group, split (train | heldout). The split is by a seeded hash of the GROUP for written requests (a
subject's benign and harmful requests stay together) and of the prompt text for HH-RLHF turns (duplicates stay
together), half and half. `train` rows may be trained on (the harm verifier's heads, safety anchors); `heldout`
rows are only evaluated (`aware eval sensitive`, `aware eval phrasings`) and never tuned on.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "aware_cli" / "assets" / "data" / "safety-prompts"
HH = ROOT / "aware_cli" / "assets" / "data" / "hh-rlhf-harmless" / "harmless-base-test.jsonl.gz"
HELDOUT_FRACTION = 0.5
SEED = "aware-safety-prompts-v1"


def unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{SEED}:{key}".encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_of(key: str) -> str:
    return "heldout" if unit_hash(key) < HELDOUT_FRACTION else "train"


def hh_first_turns() -> List[str]:
    """The first human turn of every HH-RLHF harmless-base test conversation (the `chosen` text)."""
    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as handle:
        for line in handle:
            parts = re.split(r"\n\n(Human|Assistant): ", json.loads(line)["chosen"])
            out.append(parts[2].strip())
    return out


def build() -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = []
    for line in (FOLDER / "written.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        r = json.loads(line)
        rows.append({"id": r["id"], "prompt": r["prompt"], "label": r["label"], "topic": r["topic"],
                     "form": r["form"], "source": "written", "group": r["group"], "split": split_of(r["group"])})
    prompts = hh_first_turns()
    labels = [json.loads(line) for line in (FOLDER / "hh_labels.jsonl").read_text().split("\n") if line.strip()]
    if [x["index"] for x in labels] != list(range(len(prompts))):
        raise SystemExit(f"hh_labels.jsonl must label each of the {len(prompts)} HH-RLHF first turns in order")
    for index, (prompt, label) in enumerate(zip(prompts, labels)):
        rows.append({"id": f"hh-{index:04d}", "prompt": prompt, "label": label["label"], "topic": "",
                     "form": "human", "source": "hh-rlhf", "group": f"hh:{hashlib.sha256(prompt.encode()).hexdigest()[:12]}",
                     "split": split_of("hh:" + prompt)})
    return rows


def render(rows: List[Dict[str, str]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render(build())
    target = FOLDER / "prompts.jsonl"
    if args.check:
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is not what its sources give: run scripts/build_safety_prompts.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    counts: Dict[str, int] = {}
    for r in build():
        key = f"{r['source']}/{r['label']}/{r['split']}"
        counts[key] = counts.get(key, 0) + 1
    print(json.dumps(dict(sorted(counts.items())), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
