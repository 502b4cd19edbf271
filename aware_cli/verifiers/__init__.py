"""Verifiers V(x, y) ∈ [0, 1] (1 = aligned): the contract, the registry and the built-in ones.

Importing this package registers the built-in verifiers `refusal` and `python`.
"""

from aware_cli.verifiers.base import VERIFIERS, Verifier, VerifierError, build_verifier, register_verifier
from aware_cli.verifiers.python import build_python_verifier, load_target
from aware_cli.verifiers.refusal import REFUSAL_PATTERNS, build_refusal_verifier, refusal_score

__all__ = [
    "REFUSAL_PATTERNS",
    "VERIFIERS",
    "Verifier",
    "VerifierError",
    "build_python_verifier",
    "build_refusal_verifier",
    "build_verifier",
    "load_target",
    "refusal_score",
    "register_verifier",
]
