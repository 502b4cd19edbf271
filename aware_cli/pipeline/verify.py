"""Stage 2: score every sampled response with the verifier, V(x, ŷ) ∈ [0, 1] or None."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from aware_cli.data import Example
from aware_cli.verifiers import VerifierError


def verify(verifier, examples: Sequence[Example], texts: Sequence[Sequence[str]]) -> List[List[Optional[float]]]:
    """Scores shaped like `texts` ([B][k]); the prompt's label and reference go along as kwargs."""
    prompts, completions, harmful, references, ids, metas = [], [], [], [], [], []
    for ex, group in zip(examples, texts):
        for text in group:
            prompts.append(ex.prompt)
            completions.append(text)
            harmful.append(ex.harmful)
            references.append(ex.response)
            ids.append(ex.id)
            metas.append(ex.meta)
    flat = verifier(prompts, completions, harmful=harmful, references=references, ids=ids,
                    metas=metas) if prompts else []
    scores, start = [], 0
    for group in texts:
        scores.append(list(flat[start:start + len(group)]))
        start += len(group)
    return scores


def verifier_stats(verifier) -> Dict[str, float]:
    """Cumulative `verifier/<name>/<stat>` counters of the verifier and its components (composite)."""
    out: Dict[str, float] = {}
    parts = [verifier] + list(getattr(verifier, "components", []) or [])
    for index, part in enumerate(parts):
        kind = str(part.name).split(":")[0]  # `python:module:fn` → `python`
        name = kind if index == 0 else f"{str(verifier.name).split(':')[0]}.{index - 1}.{kind}"
        stats = dict(getattr(part, "stats", {}))
        stats.update(getattr(getattr(part, "fn", None), "judge_stats", {}) or {})
        out.update({f"verifier/{name}/{key}": float(value) for key, value in stats.items()
                    if isinstance(value, (int, float))})
    return out


def count_none(scores: Sequence[Sequence[Optional[float]]]) -> Tuple[int, int]:
    """(unjudged scores, all scores) of a step's [B][k] scores."""
    return sum(s is None for group in scores for s in group), sum(len(group) for group in scores)


def check_none_share(none: int, total: int, limit: float, name: str, step: int) -> int:
    """Abort the run when the step's share of unjudged scores exceeds `verifier.max_none_frac`; returns `none`.

    Under torchrun `none` and `total` are the counts of every rank, so every rank decides alike.
    """
    if total and none / total > limit:
        raise VerifierError(f"verifier {name!r} could not judge {none} of {total} responses at step {step} "
                            f"({none / total:.0%} > verifier.max_none_frac={limit}); check the verifier "
                            f"(labels, endpoint, model) or raise the limit")
    return none


def score_examples(verifier, examples: Sequence[Example], reference_field: Optional[str] = None) -> List[Optional[float]]:
    """Score each example's own `response` (for `aware verify --file`): one score per row.

    The row's reference answer, when the file has one, comes from column `reference_field`.
    """
    references = [str(ex.meta.get("columns", {}).get(reference_field, "")) if reference_field else ""
                  for ex in examples]
    return verifier([ex.prompt for ex in examples], [ex.response for ex in examples],
                    harmful=[ex.harmful for ex in examples], references=references,
                    ids=[ex.id for ex in examples], metas=[ex.meta for ex in examples])
