"""Stage 2: score every sampled response with the verifier, V(x, ŷ) ∈ [0, 1] or None."""

from __future__ import annotations

from typing import List, Optional, Sequence

from aware_cli.data import Example


def verify(verifier, examples: Sequence[Example], texts: Sequence[Sequence[str]]) -> List[List[Optional[float]]]:
    """Scores shaped like `texts` ([B][k]); the prompt's label and reference go along as kwargs."""
    prompts, completions, harmful, references, ids = [], [], [], [], []
    for ex, group in zip(examples, texts):
        for text in group:
            prompts.append(ex.prompt)
            completions.append(text)
            harmful.append(ex.harmful)
            references.append(ex.response)
            ids.append(ex.id)
    flat = verifier(prompts, completions, harmful=harmful, references=references, ids=ids) if prompts else []
    scores, start = [], 0
    for group in texts:
        scores.append(list(flat[start:start + len(group)]))
        start += len(group)
    return scores
