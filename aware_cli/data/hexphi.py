"""HEx-PHI: one headerless CSV per category (`category_<N>.csv`), one prompt per row in column 0.

The layout is described in docs/eval.md (HEx-PHI). The data itself is gated and cannot be
redistributed: users point `data.path` at their own copy; tests use a synthetic fixture.
Category 2 is not in the public release, so whatever category files exist are read.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import List, Optional

from aware_cli.errors import DataError

# The one place that maps category numbers to names (a third-party script swaps 7 and 8).
HEXPHI_CATEGORIES = {
    1: "Illegal Activity",
    2: "Child Abuse Content",
    3: "Hate / Harass / Violence",
    4: "Malware",
    5: "Physical Harm",
    6: "Economic Harm",
    7: "Fraud / Deception",
    8: "Adult Content",
    9: "Political Campaigning",
    10: "Privacy Violation Activity",
    11: "Tailored Financial Advice",
}
_FILE = re.compile(r"^category_(\d+)\.csv$")


def read_hexphi(directory: Path, limit_per_category: Optional[int] = None) -> List[dict]:
    """Rows `{"id", "prompt", "category", "category_name"}` from every `category_<N>.csv` in `directory`."""
    if not directory.is_dir():
        raise DataError(f"data.path: HEx-PHI directory not found: {directory} (HEx-PHI is gated: download it from the Hugging Face dataset LLM-Tuning-Safety/HEx-PHI and pass its folder; layout in docs/eval.md)")
    files = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := _FILE.match(p.name)))
    if not files:
        raise DataError(f"data.path: {directory} has no category_<N>.csv files (HEx-PHI layout)")
    rows = []
    for number, path in files:
        if number not in HEXPHI_CATEGORIES:
            raise DataError(f"{path}: unknown HEx-PHI category {number} (expected 1-11)")
        with open(path, newline="", encoding="utf-8") as f:
            kept = 0
            for line, record in enumerate(csv.reader(f), start=1):
                if not record or not record[0].strip():
                    continue
                if limit_per_category is not None and kept >= limit_per_category:
                    break
                rows.append({"id": f"{number}-{line}", "prompt": record[0].strip(), "category": number,
                             "category_name": HEXPHI_CATEGORIES[number]})
                kept += 1
    if not rows:
        raise DataError(f"data.path: {directory} has no usable rows")
    return rows
