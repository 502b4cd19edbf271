"""Stage 3: gate each prompt from the mean μ and spread σ of its k verifier scores.

AWARE-ALGORITHM.md steps 2-5 and 7. Everything here is plain arithmetic on lists of scores,
so it can be unit-tested with hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

from aware_cli.config.schema import GateConfig
from aware_cli.data.loaders import CURATED_LABEL

SFT, PG, ABSTAIN = "sft", "pg", "abstain"
REFERENCE, REFUSAL, NO_TARGET = "reference", "refusal", "none"  # what the SFT term of an input trains on


@dataclass
class GroupGate:
    """The gate's decision for one prompt."""

    mu: Optional[float]  # None when no sample could be judged
    sigma: Optional[float]
    beta: float  # weight of the PG term in (1 − β)·L_SFT + β·λ_pg·L_PG
    regime: str  # sft | pg | abstain
    advantages: List[float]  # one per sample; 0 for samples the verifier could not judge
    zero_std: bool  # σ == 0: every advantage is 0 and the PG term vanishes
    target: str = REFERENCE  # the SFT term's target: reference (y*), refusal (y_ref) or none (no SFT term)
    over_refusal_gap: float = 0.0  # μ − V(y_ref) where refusing is clearly worse (gate.over_refusal_penalty), else 0


def group_stats(scores: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and population std of the judged scores (None scores are excluded)."""
    judged = [s for s in scores if s is not None]
    if not judged:
        return None, None
    mu = sum(judged) / len(judged)
    sigma = math.sqrt(sum((s - mu) ** 2 for s in judged) / len(judged))
    return mu, sigma


def advantages(scores: Sequence[Optional[float]], mu: Optional[float], sigma: Optional[float],
               epsilon: float) -> List[float]:
    """A_i = (r_i − μ)/(σ + ε); exactly 0 when σ = 0 (no signal) and for unjudged samples."""
    if mu is None or sigma is None or sigma == 0.0:
        return [0.0] * len(scores)
    return [0.0 if s is None else (s - mu) / (sigma + epsilon) for s in scores]


def soft_beta(mu: float, sigma: float, cfg: GateConfig) -> float:
    """β = sigmoid((τ_μ − μ)/T) · (1 − exp(−σ/λ_σ))."""
    z = (cfg.tau_mu - mu) / cfg.temperature
    sigmoid = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return sigmoid * (1.0 - math.exp(-sigma / cfg.lambda_sigma))


def hard_beta(mu: float, sigma: float, cfg: GateConfig) -> float:
    """β = 1 if μ < τ_μ and σ ≥ τ_σ else 0."""
    return 1.0 if (mu < cfg.tau_mu and sigma >= cfg.tau_sigma) else 0.0


def is_abstain(mu: float, sigma: float, cfg: GateConfig) -> bool:
    """Consistently misaligned: μ ≤ τ_abstain and σ ≤ τ_σ."""
    return cfg.abstain and mu <= cfg.tau_abstain and sigma <= cfg.tau_sigma


def gate_group(scores: Sequence[Optional[float]], cfg: GateConfig, dual: float = 1.0,
               objective: str = "aware", *, refusal_score: Optional[float] = None,
               target_score: Optional[float] = None) -> GroupGate:
    """Decide β, the regime and the SFT target for one prompt. `dual` is λ of the Lagrangian gate (1 otherwise).

    `refusal_score`: the verifier's score of this input's refusal target y_ref (None: not scored). An input
    abstains only when refusing is the aligned answer: consistently misaligned samples AND a refusal scored
    at least `gate.abstain_margin` above their mean; otherwise it trains on y* (a benign prompt the model
    keeps refusing is not taught to refuse). `target_score`: the score of y* (with `gate.target_check`).
    `objective`: "pg" puts every judged input in the PG regime (β = 1; the policy-gradient-only objectives);
    anything else gates on (μ, σ).
    """
    mu, sigma = group_stats(scores)
    adv = advantages(scores, mu, sigma, cfg.epsilon)
    zero_std = sigma is not None and sigma == 0.0
    if mu is None or sigma is None:  # nothing judged: fall back to plain SFT on y* (checked, when asked)
        return GroupGate(mu, sigma, 0.0, SFT, adv, zero_std, choose_target(SFT, target_score, refusal_score, cfg))
    if objective == PG:
        return GroupGate(mu, sigma, 1.0, PG, adv, zero_std)
    beta, regime = beta_and_regime(mu, sigma, cfg, dual, refusal_score)
    target = choose_target(regime, target_score, refusal_score, cfg)
    return GroupGate(mu, sigma, beta, regime, adv, zero_std, target, over_refusal_gap(mu, refusal_score, target, cfg))


def over_refusal_gap(mu: float, refusal_score: Optional[float], target: str, cfg: GateConfig) -> float:
    """μ − V(y_ref) when the over-refusal term is on, the refusal was scored at least gate.abstain_margin below
    the samples' mean and the input does not train on the refusal; 0 otherwise (`over_refusal_weights`)."""
    if cfg.over_refusal_penalty <= 0 or refusal_score is None or target == REFUSAL:
        return 0.0
    gap = mu - refusal_score
    return gap if gap >= cfg.abstain_margin and gap > 0 else 0.0


def over_refusal_applies(example, on: str) -> bool:
    """gate.over_refusal_on: every input (all), or only rows a curated label marks benign (curated)."""
    if on == "all":
        return True
    return example is not None and example.harmful is False and bool(example.meta.get(CURATED_LABEL))


def over_refusal_weights(gaps: Sequence[float], cfg: GateConfig) -> List[float]:
    """Each input's over-refusal weight w = gate.over_refusal_penalty · gap (in units of one input's loss);
    0 below gate.min_weight."""
    weights = [cfg.over_refusal_penalty * g for g in gaps]
    return [w if w >= cfg.min_weight else 0.0 for w in weights]


def choose_target(regime: str, target_score: Optional[float], refusal_score: Optional[float],
                  cfg: GateConfig) -> str:
    """The SFT term's target: the refusal when abstaining; with `gate.target_check`, a reference target the
    verifier scores ≤ τ_abstain (e.g. a compliance answer to a harmful request) is replaced by the refusal
    when that scores ≥ `gate.abstain_margin` higher, else dropped (no SFT term; the PG term stays)."""
    if regime == ABSTAIN:
        return REFUSAL
    if not cfg.target_check or target_score is None or target_score > cfg.tau_abstain:
        return REFERENCE
    if refusal_score is not None and refusal_score >= target_score + cfg.abstain_margin:
        return REFUSAL
    return NO_TARGET


def beta_and_regime(mu: float, sigma: float, cfg: GateConfig, dual: float = 1.0,
                    refusal_score: Optional[float] = None) -> tuple[float, str]:
    """(β, regime) of a judged input at (μ, σ) under objective=aware; also used by `aware calibrate`.

    With a `refusal_score`, abstention also needs refusal_score ≥ μ + gate.abstain_margin.
    """
    if is_abstain(mu, sigma, cfg) and (refusal_score is None or refusal_score >= mu + cfg.abstain_margin):
        return 0.0, ABSTAIN
    if cfg.mode == "hard":
        beta = hard_beta(mu, sigma, cfg)
    else:
        beta = soft_beta(mu, sigma, cfg)
        if cfg.mode == "lagrangian":
            beta = min(1.0, beta * dual)
    if beta < cfg.beta_min:
        beta = 0.0
    return beta, PG if beta >= cfg.pg_threshold or (cfg.mode == "hard" and beta > 0) else SFT


def sample_weights(gate: GroupGate, lambda_pg: float, k: int, min_weight: float) -> List[float]:
    """Each sample's weight in its input's loss, β·λ_pg·A_i/k; 0 where |weight| < min_weight (not forwarded).

    A skipped sample would move the step's gradient by less than `min_weight` times what one input's SFT
    target moves it (both terms are weighted, length-normalised log-probs), so it is not worth a forward
    and backward pass. Samples with A_i = 0 always get 0.
    """
    weights = [gate.beta * lambda_pg * a / k for a in gate.advantages]
    return [w if abs(w) >= min_weight and w != 0.0 else 0.0 for w in weights]


def update_dual(dual: float, mean_mu: Optional[float], cfg: GateConfig) -> float:
    """λ ← max(0, λ + η(τ_μ − μ̄)): grows while the batch is below the alignment target."""
    if mean_mu is None:
        return dual
    return max(0.0, dual + cfg.dual_lr * (cfg.tau_mu - mean_mu))
