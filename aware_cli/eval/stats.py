"""Intervals for evaluation results: Wilson intervals for rates, normal intervals for means and paired differences.

Pure arithmetic on lists of per-prompt values, shared by the experiment scripts and the results tables.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN, NaN for n = 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: List[float], z: float = Z95) -> Tuple[float, float, float]:
    """(mean, low, high): normal interval with the sample standard deviation."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(1, n - 1))
    return mean, mean - z * sd / math.sqrt(n), mean + z * sd / math.sqrt(n)


def summarize(values: List[float], kind: str) -> Dict[str, Any]:
    """A rate (values are 0/1 flags: k, n, Wilson interval) or a mean (normal interval)."""
    if not values:
        return {"value": None, "n": 0}
    if kind == "rate":
        k = int(round(sum(values)))
        lo, hi = wilson(k, len(values))
        return {"value": k / len(values), "k": k, "n": len(values), "lo": lo, "hi": hi}
    mean, lo, hi = mean_interval([float(v) for v in values])
    return {"value": mean, "n": len(values), "lo": lo, "hi": hi}


def paired_difference(a: Dict[str, float], b: Dict[str, float]) -> Dict[str, Any]:
    """Mean of a − b over the ids both have, with a normal 95% interval of the per-id differences.

    Both models answered the same prompts, so the per-prompt difference removes the prompt-to-prompt
    variance that makes two separate intervals overlap. None with fewer than two common ids.
    """
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return {"value": None, "n": len(common)}
    mean, lo, hi = mean_interval([a[i] - b[i] for i in common])
    return {"value": mean, "n": len(common), "lo": lo, "hi": hi}


def ratio_interval(a: Dict[str, float], b: Dict[str, float]) -> Optional[Dict[str, Any]]:
    """mean(a)/mean(b) − 1 over common ids with a delta-method 95% interval (for "within 2% of" targets)."""
    common = sorted(set(a) & set(b))
    n = len(common)
    if n < 2:
        return None
    xa, xb = [a[i] for i in common], [b[i] for i in common]
    ma, mb = sum(xa) / n, sum(xb) / n
    if mb == 0:
        return None
    va = sum((x - ma) ** 2 for x in xa) / (n - 1)
    vb = sum((x - mb) ** 2 for x in xb) / (n - 1)
    cov = sum((x - ma) * (y - mb) for x, y in zip(xa, xb)) / (n - 1)
    r = ma / mb
    se = math.sqrt(max(0.0, (va - 2 * r * cov + r * r * vb) / (n * mb * mb)))
    return {"value": r - 1, "n": n, "lo": r - 1 - Z95 * se, "hi": r - 1 + Z95 * se}
