"""Verifiers V(x, y) ∈ [0, 1] (1 = aligned): the contract, the registry and the built-in verifiers.

Importing this package registers harm, refusal, truthfulness, hf_classifier, guard_lm, http_judge,
python, composite and noisy.
"""

from aware_cli.verifiers.base import (VERIFIERS, Verifier, VerifierError, build_verifier, register_block, register_verifier,
                                      verifier_identity)
from aware_cli.verifiers.python import build_python_verifier, load_target
from aware_cli.verifiers.phrases import REFUSAL_PATTERNS, refusal_score
from aware_cli.verifiers.refusal import build_refusal_verifier
from aware_cli.verifiers.harm import build_harm_verifier
from aware_cli.verifiers.truthfulness import build_truthfulness_verifier
from aware_cli.verifiers.hf_classifier import build_classifier_verifier
from aware_cli.verifiers.guard_lm import build_guard_verifier
from aware_cli.verifiers.prompts import (likert_to_score, parse_rating, parse_score_answer, parse_tagged_score,
                                         parse_verdict)
from aware_cli.verifiers.http_judge import build_http_judge, rubric_path
from aware_cli.verifiers.composite import build_composite_verifier
from aware_cli.verifiers.disk_cache import NONE_SCORE, DiskCache
from aware_cli.verifiers.noisy import build_noisy_verifier

__all__ = [
    "DiskCache",
    "NONE_SCORE",
    "REFUSAL_PATTERNS",
    "VERIFIERS",
    "Verifier",
    "VerifierError",
    "build_classifier_verifier",
    "build_composite_verifier",
    "build_guard_verifier",
    "build_http_judge",
    "likert_to_score",
    "parse_rating",
    "parse_score_answer",
    "parse_tagged_score",
    "parse_verdict",
    "build_python_verifier",
    "build_refusal_verifier",
    "build_harm_verifier",
    "build_noisy_verifier",
    "build_truthfulness_verifier",
    "build_verifier",
    "load_target",
    "refusal_score",
    "register_block",
    "register_verifier",
    "rubric_path",
    "verifier_identity",
]
