"""Gate-threshold calibration: mixture boundary between the μ modes, target shares, degenerate input, YAML."""

import dataclasses
import math

import numpy as np
import pytest
import yaml

from aware_cli.config.compose import compose
from aware_cli.config.schema import GateConfig
from aware_cli.config.validate import build
from aware_cli.errors import AwareError
from aware_cli.eval.calibrate import (CalibrationError, fit_gate, overrides, regime_of, regime_shares,
                                      write_gate_yaml)
from aware_cli.pipeline.gate import gate_group


def _bimodal():
    """20 misaligned inputs (μ 0.02-0.21) and 12 aligned ones (μ 0.80-0.97), σ varied."""
    low = [(0.02 + 0.01 * i, 0.03 * (i % 5)) for i in range(20)]
    high = [(0.80 + 0.015 * i, 0.05 + 0.02 * (i % 4)) for i in range(12)]
    return [{"mu": m, "sigma": s} for m, s in low + high]


def _posterior_high(x, comps):
    dens = [c["weight"] / c["sd"] * math.exp(-(x - c["mean"]) ** 2 / (2 * c["sd"] ** 2)) for c in comps]
    return dens[1] / (dens[0] + dens[1])


def test_mixture_puts_tau_mu_between_the_modes():
    points = _bimodal()
    gate, report = fit_gate(points + [{"mu": None, "sigma": None}], GateConfig(), "mixture")
    assert report["n_points"] == 32
    low, high = report["details"]["components"]
    assert low["mean"] == pytest.approx(np.mean([p["mu"] for p in points[:20]]), abs=1e-3)
    assert high["mean"] == pytest.approx(np.mean([p["mu"] for p in points[20:]]), abs=1e-3)
    assert 0.21 < gate.tau_mu < 0.80
    assert _posterior_high(report["details"]["boundary"], (low, high)) == pytest.approx(0.5, abs=1e-6)
    # τ_abstain = min(τ_μ, m_low + 1·s_low); τ_σ = the largest σ among points with μ ≤ τ_abstain
    assert gate.tau_abstain == pytest.approx(min(gate.tau_mu, low["mean"] + low["sd"]), abs=1e-4)
    low_mode = [p["sigma"] for p in points if p["mu"] <= gate.tau_abstain]
    assert gate.tau_sigma == pytest.approx(max(low_mode), abs=1e-4)
    assert all(regime_of(p["mu"], p["sigma"], gate)[1] == "abstain" for p in points if p["mu"] <= gate.tau_abstain)
    assert 0.0 <= gate.tau_abstain <= gate.tau_mu
    # only the thresholds change
    assert dataclasses.replace(gate, tau_mu=0.8, tau_sigma=0.1, tau_abstain=0.2) == GateConfig()
    assert report["shares"] == regime_shares(points, gate)
    assert sum(report["shares"].values()) == pytest.approx(1.0)
    assert all(regime_of(p["mu"], p["sigma"], gate)[1] == "sft" for p in points[20:])  # the aligned mode: SFT


def test_mixture_boundary_follows_the_modes():
    shifted = [{"mu": min(1.0, p["mu"] + 0.15), "sigma": p["sigma"]} for p in _bimodal()]
    base, _ = fit_gate(_bimodal(), GateConfig(), "mixture")
    moved, _ = fit_gate(shifted, GateConfig(), "mixture")
    assert moved.tau_mu > base.tau_mu + 0.1


def test_mixture_all_sigma_zero_gives_the_floor_tau_sigma():
    points = [(0.0, 0.0)] * 5 + [(1.0, 0.0)] * 5
    gate, report = fit_gate(points, GateConfig(), "mixture")
    assert gate.tau_sigma == 0.02  # the low mode's largest σ is 0: floored at min_sd
    assert 0.05 <= gate.tau_mu <= 0.95


@pytest.mark.parametrize("points, problem", [
    ([(0.1, 0.0), (0.9, 0.1), (0.5, 0.2)], "at least 4 points"),
    ([(0.4, 0.1)] * 10, "every μ equals 0.4"),
    ([(0.4, 0.1)] * 3 + [(1.4, 0.1)], "μ in \\[0, 1\\]"),
])
def test_degenerate_points_raise(points, problem):
    with pytest.raises(CalibrationError, match=problem) as info:
        fit_gate(points, GateConfig(), "mixture")
    assert isinstance(info.value, ValueError) and isinstance(info.value, AwareError)


def test_bad_method_and_options_raise():
    with pytest.raises(CalibrationError, match="method must be one of mixture, shares"):
        fit_gate(_bimodal(), GateConfig(), "kmeans")
    with pytest.raises(CalibrationError, match="did you mean sigma_quantile"):
        fit_gate(_bimodal(), GateConfig(), "mixture", sigma_quantil=0.5)
    with pytest.raises(CalibrationError, match="> 1"):
        fit_gate(_bimodal(), GateConfig(), "shares", abstain_share=0.6, pg_share=0.6)
    with pytest.raises(CalibrationError, match="needs abstain_share"):
        fit_gate(_bimodal(), GateConfig(), "shares")


def _spread(n=40, seed=3):
    rng = np.random.default_rng(seed)
    return [{"mu": float(m), "sigma": float(s)} for m, s in zip(rng.uniform(0, 1, n), rng.uniform(0, 0.5, n))]


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("abstain, pg", [(0.1, 0.3), (0.25, 0.25), (0.05, 0.5), (0.0, 0.2), (0.15, 0.4), (0.3, 0.4)])
def test_shares_hit_the_targets_within_one_point(mode, abstain, pg):
    points = _spread()
    n = len(points)
    base = GateConfig(mode=mode)
    gate, report = fit_gate(points, base, "shares", abstain_share=abstain, pg_share=pg)
    assert abs(report["shares"]["abstain"] - abstain) <= 1 / n
    assert abs(report["shares"]["pg"] - pg) <= 1 / n
    assert report["shares"] == regime_shares(points, gate)
    assert not gate.abstain or gate.tau_abstain <= gate.tau_mu  # what training requires
    assert build(GateConfig, dataclasses.asdict(gate)) == gate  # every threshold in its range


def test_shares_keep_the_other_thresholds_when_a_target_is_missing():
    base = GateConfig(tau_mu=0.7)
    gate, report = fit_gate(_spread(), base, "shares", abstain_share=0.1)
    assert gate.tau_mu == 0.7
    assert report["details"]["targets"] == {"abstain": 0.1, "pg": None, "sft": None}


def test_shares_report_unreachable_targets():
    points = [(0.0, 0.0)] * 16 + [(0.5, 0.5), (0.25, 0.433), (0.75, 0.433), (1.0, 0.0)]
    gate, report = fit_gate(points, GateConfig(), "shares", abstain_share=0.25, pg_share=0.1)
    assert report["shares"]["abstain"] in (0.0, 0.8)  # 16 tied points abstain together or not at all
    assert any("abstain: reached" in note for note in report["notes"])
    # τ_abstain ≤ τ_μ: low-μ points with a large σ that do not abstain are pg, so pg = 0 is out of reach
    gate, report = fit_gate(_spread(), GateConfig(), "shares", abstain_share=0.15, pg_share=0.0)
    assert gate.tau_abstain <= gate.tau_mu and report["shares"]["pg"] > 0
    assert any("pg: reached" in note for note in report["notes"])


def test_shares_with_a_fixed_tau_sigma():
    points = _spread()
    gate, report = fit_gate(points, GateConfig(), "shares", abstain_share=0.1, pg_share=0.3, tau_sigma=0.2)
    assert gate.tau_sigma == 0.2
    assert abs(report["shares"]["abstain"] - 0.1) <= 1 / 40 and abs(report["shares"]["pg"] - 0.3) <= 1 / 40


@pytest.mark.parametrize("mode", ["soft", "hard", "lagrangian"])
def test_regime_of_agrees_with_gate_group(mode):
    cfg = GateConfig(mode=mode, tau_mu=0.6, tau_abstain=0.3, tau_sigma=0.2)
    rng = np.random.default_rng(0)
    for _ in range(300):
        scores = [float(s) for s in rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=4)]
        g = gate_group(scores, cfg)
        assert regime_of(g.mu, g.sigma, cfg) == (g.beta, g.regime)


def test_written_yaml_validates_and_round_trips(tmp_path):
    gate, report = fit_gate(_bimodal(), GateConfig(mode="hard"), "mixture")
    path = write_gate_yaml(gate, tmp_path / "gates" / "fitted.yaml", "fitted by aware calibrate (mixture, 32 points)")
    text = path.read_text()
    assert text.startswith("# fitted by aware calibrate (mixture, 32 points)\n")
    assert f"gate={path}" in text and overrides(gate) in text
    assert build(GateConfig, yaml.safe_load(text)) == gate
    assert list(yaml.safe_load(text)) == [f.name for f in dataclasses.fields(GateConfig)]
    assert [p.name for p in path.parent.iterdir()] == ["fitted.yaml"]  # no temp file left


def test_written_yaml_is_a_gate_option_by_path(tmp_path, in_project_root):
    gate, _ = fit_gate(_bimodal(), GateConfig(), "mixture")
    path = write_gate_yaml(gate, tmp_path / "fitted.yaml")
    assert compose("smoke", [f"gate={path}"]).config.gate == gate


def test_overrides_in_the_comment_compose(in_project_root):
    gate, _ = fit_gate(_spread(), GateConfig(), "shares", abstain_share=0.1, pg_share=0.3)
    composed = compose("smoke", overrides(gate).split())
    got = composed.config.gate
    assert (got.tau_mu, got.tau_sigma, got.tau_abstain, got.abstain) == (
        gate.tau_mu, gate.tau_sigma, gate.tau_abstain, gate.abstain)
