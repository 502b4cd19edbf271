"""`noisy`: another verifier with a known error rate — for verifier-sensitivity studies.

`verifier.name=noisy verifier.kwargs.base=harm verifier.kwargs.flip=0.2`: each score s of the base
verifier becomes 1 − s with probability `flip`. The coin is a hash of (seed, prompt, response), so
the same pair always gets the same (possibly wrong) verdict, as a systematically wrong judge would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, List, Optional, Sequence

from aware_cli.config.schema import VerifierConfig
from aware_cli.errors import ConfigError
from aware_cli.verifiers.base import Verifier, build_verifier, register_verifier

OWN_KWARGS = ("base", "flip", "seed")


def _coin(seed: int, prompt: str, completion: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{prompt}\x00{completion}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@register_verifier("noisy")
def build_noisy_verifier(cfg: VerifierConfig) -> Verifier:
    base_name = cfg.kwargs.get("base", "harm")
    flip = cfg.kwargs.get("flip", 0.1)
    seed = cfg.kwargs.get("seed", 0)
    if base_name == "noisy":
        raise ConfigError("verifier.kwargs.base: noisy cannot wrap itself")
    if not isinstance(flip, (int, float)) or not 0.0 <= flip <= 1.0:
        raise ConfigError(f"verifier.kwargs.flip: expected a probability in [0, 1], got {flip!r}")
    rest = {k: v for k, v in cfg.kwargs.items() if k not in OWN_KWARGS}
    base = build_verifier(dataclasses.replace(cfg, name=base_name, kwargs=rest, cache_dir=None))

    def score(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> List[Optional[float]]:
        scores = base(prompts, completions, **kwargs)
        return [None if s is None else (1.0 - s if _coin(seed, p, c) < flip else s)
                for p, c, s in zip(prompts, completions, scores)]

    verifier = Verifier(score, name="noisy", batch_size=cfg.batch_size, cache=cfg.cache)
    verifier.components = [base]  # its timing and None counts are logged too
    return verifier
