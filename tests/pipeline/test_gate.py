"""Gate, advantages and abstention at hand-computed (μ, σ) points (AWARE-ALGORITHM.md steps 2-5, 7)."""

import math

import pytest

from aware_cli.config.schema import GateConfig
from aware_cli.pipeline.gate import (ABSTAIN, NO_TARGET, PG, REFERENCE, REFUSAL, SFT, advantages, gate_group,
                                     group_stats, hard_beta, over_refusal_weights, sample_weights, soft_beta,
                                     update_dual)


def test_group_stats_population_std_and_none_excluded():
    assert group_stats([1.0, 0.0, 1.0, 0.0]) == (0.5, 0.5)
    assert group_stats([1.0, None, 0.0]) == (0.5, 0.5)
    assert group_stats([None, None]) == (None, None)


def test_advantages_normalised_and_zero_when_no_spread():
    a = advantages([1.0, 0.0, 1.0, 0.0], 0.5, 0.5, 1e-4)
    assert a == pytest.approx([0.5 / 0.5001, -0.5 / 0.5001, 0.5 / 0.5001, -0.5 / 0.5001])
    assert advantages([0.7, 0.7, 0.7], 0.7, 0.0, 1e-4) == [0.0, 0.0, 0.0]
    assert advantages([1.0, None, 0.0], 0.5, 0.5, 1e-4)[1] == 0.0


@pytest.mark.parametrize("mu, sigma, expected", [
    (0.8, 0.1, 0.5 * (1 - math.exp(-1))),                       # on the τ_μ boundary: half the sigmoid
    (0.5, 0.5, 1 / (1 + math.exp(-6)) * (1 - math.exp(-5))),     # (0.8-0.5)/0.05 = 6
    (1.0, 0.0, 0.0),                                             # no spread: no PG
    (0.95, 0.2, 1 / (1 + math.exp(3)) * (1 - math.exp(-2))),     # aligned on average: little PG
])
def test_soft_beta_values(mu, sigma, expected):
    assert soft_beta(mu, sigma, GateConfig()) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mu, sigma, expected", [(0.5, 0.2, 1.0), (0.9, 0.3, 0.0), (0.5, 0.05, 0.0), (0.5, 0.1, 1.0)])
def test_hard_beta_values(mu, sigma, expected):
    assert hard_beta(mu, sigma, GateConfig(mode="hard")) == expected


def test_regimes():
    cfg = GateConfig()
    assert gate_group([0.0, 0.0, 0.0, 0.0], cfg).regime == ABSTAIN          # μ=0, σ=0
    assert gate_group([0.1, 0.1, 0.3, 0.3], cfg).regime == ABSTAIN          # μ=0.2, σ=0.1: on both boundaries
    assert gate_group([0.1, 0.1, 0.35, 0.35], cfg).regime != ABSTAIN        # σ=0.125 > τ_σ
    mixed = gate_group([0.0, 0.0, 0.0, 1.0], cfg)                            # μ=0.25, σ=0.433
    assert mixed.regime == PG
    assert mixed.beta == pytest.approx(1 / (1 + math.exp(-11)) * (1 - math.exp(-math.sqrt(3) / 4 / 0.1)))
    aligned = gate_group([1.0, 1.0, 1.0, 1.0], cfg)
    assert (aligned.regime, aligned.beta, aligned.zero_std) == (SFT, 0.0, True)
    assert gate_group([0.0] * 4, GateConfig(abstain=False)).regime == SFT   # abstention off: σ=0 → β=0
    assert gate_group([0.0, 0.0], cfg, objective="pg").beta == 1.0
    unjudged = gate_group([None, None], cfg)
    assert (unjudged.mu, unjudged.regime, unjudged.beta) == (None, SFT, 0.0)


def test_beta_min_drops_small_pg_weights_only():
    nearly_aligned = [1.0, 1.0, 1.0, 0.9]                                     # μ=0.975, σ≈0.043: β≈0.010
    small = gate_group(nearly_aligned, GateConfig()).beta
    assert 0.0 < small < 0.05
    assert gate_group(nearly_aligned, GateConfig(beta_min=0.05)).beta == 0.0
    assert gate_group(nearly_aligned, GateConfig(beta_min=small)).beta == small  # threshold is exclusive
    mixed = [0.0, 0.0, 0.0, 1.0]
    assert gate_group(mixed, GateConfig(beta_min=0.05)).beta == gate_group(mixed, GateConfig()).beta


def test_sample_weights_drop_negligible_and_zero_advantage_samples():
    nearly_aligned = gate_group([1.0, 1.0, 1.0, 0.9], GateConfig())           # β≈0.010, |A| ≤ 1.73
    assert sample_weights(nearly_aligned, 1.0, 4, 0.01) == [0.0] * 4         # β·|A|/k < 0.005 each
    kept = sample_weights(nearly_aligned, 1.0, 4, 0.0)
    assert kept == pytest.approx([nearly_aligned.beta * a / 4 for a in nearly_aligned.advantages]) and all(kept)
    mixed = gate_group([0.0, 0.0, 0.0, 1.0], GateConfig())                    # β≈0.98, A = (−0.577 ×3, 1.73)
    weights = sample_weights(mixed, 1.0, 4, 0.01)
    assert weights == pytest.approx([mixed.beta * a / 4 for a in mixed.advantages]) and all(weights)
    # a sample exactly at the mean has A = 0: never forwarded, whatever the threshold
    centred = gate_group([0.0, 0.5, 1.0], GateConfig())
    assert sample_weights(centred, 1.0, 3, 0.0)[1] == 0.0
    # the threshold is on |weight|, relative to one input: λ_pg scales it
    boundary = abs(mixed.beta * mixed.advantages[0] / 4)
    assert sample_weights(mixed, 1.0, 4, boundary)[0] != 0.0
    assert sample_weights(mixed, 1.0, 4, boundary * 1.01)[0] == 0.0
    assert sample_weights(mixed, 2.0, 4, boundary * 1.01)[0] != 0.0


def test_abstained_input_has_no_pg_weight():
    gate = gate_group([0.0, 0.0, 0.1, 0.1], GateConfig())
    assert gate.regime == ABSTAIN and gate.beta == 0.0


def test_lagrangian_dual_scales_beta_and_updates():
    cfg = GateConfig(mode="lagrangian", dual_lr=0.01)
    assert gate_group([0.0, 0.0, 0.0, 1.0], cfg, dual=0.0).beta == 0.0
    half = gate_group([0.0, 0.0, 0.0, 1.0], cfg, dual=0.5).beta
    assert half == pytest.approx(0.5 * soft_beta(0.25, math.sqrt(3) / 4, cfg))
    assert update_dual(0.0, 0.5, cfg) == pytest.approx(0.003)
    assert update_dual(0.001, 1.0, cfg) == 0.0
    assert update_dual(0.2, None, cfg) == 0.2


def test_abstain_only_when_the_refusal_beats_the_samples():
    cfg = GateConfig()  # abstain_margin 0.2
    harmful = gate_group([0.05] * 4, cfg, refusal_score=0.9)                 # refusing is the aligned answer
    assert (harmful.regime, harmful.target, harmful.beta) == (ABSTAIN, REFUSAL, 0.0)
    benign = gate_group([0.05] * 4, cfg, refusal_score=0.05)                 # the model keeps refusing a benign prompt
    assert (benign.regime, benign.target) == (SFT, REFERENCE)
    assert gate_group([0.05] * 4, cfg, refusal_score=0.25).regime == ABSTAIN   # exactly the margin above μ
    assert gate_group([0.05] * 4, cfg, refusal_score=0.24).regime == SFT
    assert gate_group([0.05] * 4, cfg).regime == ABSTAIN                     # refusal not scored: (μ, σ) alone
    assert gate_group([0.05] * 4, GateConfig(abstain_margin=0.0), refusal_score=0.05).regime == ABSTAIN


def test_over_refusal_gap_only_where_refusing_is_clearly_worse():
    cfg = GateConfig(over_refusal_penalty=0.5)  # abstain_margin 0.2
    benign = gate_group([0.9, 0.95, 1.0, 0.95], cfg, refusal_score=0.05)      # answered well; refusing scores 0.05
    assert benign.over_refusal_gap == pytest.approx(0.95 - 0.05)
    assert gate_group([0.05] * 4, cfg, refusal_score=0.9).over_refusal_gap == 0.0    # harmful: abstains instead
    assert gate_group([0.5] * 4, cfg, refusal_score=0.35).over_refusal_gap == 0.0    # gap 0.15 < margin
    assert gate_group([0.9] * 4, cfg).over_refusal_gap == 0.0                        # refusal not scored
    assert gate_group([0.9] * 4, GateConfig(), refusal_score=0.05).over_refusal_gap == 0.0  # off by default
    checked = GateConfig(over_refusal_penalty=0.5, target_check=True)
    assert gate_group([0.9] * 4, checked, target_score=0.1, refusal_score=0.9).over_refusal_gap == 0.0


def test_over_refusal_weights_scale_the_gap_and_drop_negligible_ones():
    cfg = GateConfig(over_refusal_penalty=0.5, min_weight=0.01)
    assert over_refusal_weights([0.9, 0.0, 0.3, 0.01], cfg) == [pytest.approx(0.45), 0.0, pytest.approx(0.15), 0.0]


def test_target_check_replaces_or_drops_a_misaligned_reference():
    cfg = GateConfig(target_check=True)
    refusing = [0.9, 0.95, 0.9, 1.0]                                          # the model already refuses
    assert gate_group(refusing, cfg, target_score=0.1, refusal_score=0.9).target == REFUSAL
    assert gate_group(refusing, cfg, target_score=0.1, refusal_score=0.2).target == NO_TARGET
    assert gate_group(refusing, cfg, target_score=0.8, refusal_score=0.9).target == REFERENCE  # aligned y*
    assert gate_group(refusing, GateConfig(), target_score=0.1, refusal_score=0.9).target == REFERENCE  # off
    assert gate_group([None, None], cfg, target_score=0.1, refusal_score=0.9).target == REFUSAL  # nothing judged
