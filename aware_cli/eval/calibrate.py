"""Fit the gate's thresholds (τ_μ, τ_σ, τ_abstain) from (μ, σ) points of a calibration set.

The calibration set: inputs sampled k times with the current (untrained) model and scored by the
verifier, i.e. ALIGN-PLOT points of one "before" step (`align_plot.points_from_scores`, or the
first step of a run via `align_plot.select_step(points, "first")`). Only the thresholds change;
mode, T, λ_σ, pg_threshold and the rest are kept from the base gate.

Two methods (rules stated exactly in `fit_mixture` and `fit_shares`):

- `mixture`: two modes of μ (misaligned / aligned inputs) from a 2-component Gaussian mixture;
  τ_μ is the boundary between them, τ_abstain sits one sd above the lower mode, τ_σ is a
  quantile of the non-zero σ.
- `shares`: thresholds chosen so that the observed shares of the points in the abstain and pg
  regimes match target shares as closely as the points allow.

Regimes of a point are decided exactly as `pipeline.gate.gate_group` decides them from (μ, σ),
using its `beta_and_regime` (`regime_of`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from aware_cli.config.schema import GateConfig
from aware_cli.config.validate import suggest
from aware_cli.errors import ConfigError
from aware_cli.files import write_atomic
from aware_cli.pipeline.gate import ABSTAIN, PG, SFT, beta_and_regime, is_abstain

REGIMES = (SFT, PG, ABSTAIN)
METHODS = ("mixture", "shares")
DEFAULT_TAU_SIGMA = 0.1  # AWARE-ALGORITHM.md default, used when every σ is 0
MIN_POINTS = 4


class CalibrationError(ConfigError, ValueError):
    """The points cannot be calibrated on (too few, one mode only) or an option is invalid."""


# ----------------------------------------------------------------------------- the gate on (μ, σ)


def regime_of(mu: float, sigma: float, gate: GateConfig, dual: float = 1.0) -> Tuple[float, str]:
    """(β, regime) of a point, as `gate_group` decides them for scores with this μ and σ (objective aware).

    For the lagrangian gate the dual variable λ is taken as `dual` (1: the plain soft gate).
    """
    return beta_and_regime(mu, sigma, gate, dual)


def regime_counts(mu: np.ndarray, sigma: np.ndarray, gate: GateConfig) -> Dict[str, int]:
    counts = {r: 0 for r in REGIMES}
    for m, s in zip(mu.tolist(), sigma.tolist()):
        counts[regime_of(m, s, gate)[1]] += 1
    return counts


def regime_shares(points: Any, gate: GateConfig) -> Dict[str, float]:
    """Share of the points in each regime (sft, pg, abstain) under `gate`."""
    mu, sigma = mu_sigma(points)
    counts = regime_counts(mu, sigma, gate)
    return {r: counts[r] / len(mu) if len(mu) else 0.0 for r in REGIMES}


def mu_sigma(points: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(μ, σ) arrays from point dicts (mu/sigma null skipped), (μ, σ) pairs, or a PlotData-like object."""
    if hasattr(points, "mu") and hasattr(points, "sigma"):
        return np.asarray(points.mu, dtype=np.float64), np.asarray(points.sigma, dtype=np.float64)
    mus, sigmas = [], []
    for p in points:
        m, s = (p.get("mu"), p.get("sigma")) if isinstance(p, dict) else (p[0], p[1])
        if m is None or s is None:
            continue
        mus.append(float(m))
        sigmas.append(float(s))
    return np.array(mus, dtype=np.float64), np.array(sigmas, dtype=np.float64)


# ----------------------------------------------------------------------------- helpers


def _short_in(lo: float, hi: Optional[float], upper: float = 1.0) -> float:
    """A short decimal r with lo ≤ r < hi (hi None: lo ≤ r ≤ upper), as few digits as possible; lo if none."""
    for digits in range(1, 9):
        scale = 10 ** digits
        r = math.ceil(lo * scale - 1e-9) / scale
        if r < lo:
            r = math.ceil(lo * scale) / scale
        if r >= lo and (r < hi if hi is not None else r <= upper):
            return r
    return lo


def _above(value: float, values: np.ndarray) -> float:
    """A short decimal in [midpoint to the next larger of `values`, that value), or in [value, 1] when none is larger.

    A threshold there selects the same points with `<=` as `value` itself, with a margin on both sides.
    """
    larger = values[values > value]
    if len(larger) == 0:
        return _short_in(value, None)
    nxt = float(larger.min())
    return _short_in(0.5 * (value + nxt), nxt)


def _check_opts(method: str, opts: Dict[str, Any], allowed: Sequence[str]) -> None:
    for name in opts:
        if name not in allowed:
            raise CalibrationError(f"calibrate: unknown option '{name}' for method={method}"
                                   f"{suggest(name, list(allowed))} (options: {', '.join(allowed)})")


def _check_points(mu: np.ndarray, sigma: np.ndarray) -> None:
    if len(mu) < MIN_POINTS:
        raise CalibrationError(f"calibrate: need at least {MIN_POINTS} points with a μ and σ, got {len(mu)} "
                               f"(score more inputs, or check that the verifier judges them)")
    bad = ~np.isfinite(mu) | ~np.isfinite(sigma) | (mu < 0) | (mu > 1) | (sigma < 0) | (sigma > 0.5 + 1e-9)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CalibrationError(f"calibrate: point {i} has μ={mu[i]!r}, σ={sigma[i]!r} (need μ in [0, 1], "
                               f"σ in [0, 0.5])")


def _sigma_threshold(sigma: np.ndarray, quantile: float) -> float:
    """τ_σ = the `quantile` of σ over the points with σ > 0 (linear interpolation); 0.1 when every σ is 0."""
    positive = sigma[sigma > 0]
    if len(positive) == 0:
        return DEFAULT_TAU_SIGMA
    return float(np.quantile(positive, quantile))


# ----------------------------------------------------------------------------- mixture


def _em(x: np.ndarray, iterations: int, min_sd: float) -> Dict[str, Any]:
    """Two-component 1-D Gaussian mixture by EM: init means at min and max μ, fixed iterations.

    Min/max rather than percentiles: a small misaligned mode (a few harmful prompts among many
    benign ones, the usual calibration set) would otherwise start inside the large mode and vanish.
    """
    init = "min/max"
    means = np.array([float(x.min()), float(x.max())], dtype=np.float64)
    sds = np.full(2, max(float(x.std()), min_sd))
    weights = np.array([0.5, 0.5])
    loglik = -math.inf
    for _ in range(iterations):
        log_p = (np.log(weights)[None, :] - np.log(sds)[None, :] - 0.5 * math.log(2 * math.pi)
                 - (x[:, None] - means[None, :]) ** 2 / (2 * sds[None, :] ** 2))
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))
        loglik = float(log_norm.sum())
        resp = np.exp(log_p - log_norm)
        mass = resp.sum(axis=0)
        if (mass < 1e-9).any():
            raise CalibrationError("calibrate: the μ of the points have one mode only (a mixture component "
                                   "became empty); use method=shares")
        means = (resp * x[:, None]).sum(axis=0) / mass
        sds = np.maximum(np.sqrt((resp * (x[:, None] - means[None, :]) ** 2).sum(axis=0) / mass), min_sd)
        weights = mass / len(x)
    order = np.argsort(means)
    return {"means": means[order], "sds": sds[order], "weights": weights[order], "loglik": loglik, "init": init}


def _boundary(means: np.ndarray, sds: np.ndarray, weights: np.ndarray) -> Tuple[float, str]:
    """The μ between the two means where the posterior of each component is 0.5 (bisection).

    When the posterior does not cross 0.5 between the means (one component dominates the whole
    interval), the boundary is the mean of the dominated component.
    """

    def g(v: float) -> float:  # log(w_low N_low(v)) − log(w_high N_high(v))
        low = math.log(weights[0]) - math.log(sds[0]) - (v - means[0]) ** 2 / (2 * sds[0] ** 2)
        high = math.log(weights[1]) - math.log(sds[1]) - (v - means[1]) ** 2 / (2 * sds[1] ** 2)
        return low - high

    a, b = float(means[0]), float(means[1])
    if g(a) <= 0:  # the high component already dominates at the low mean
        return a, "high component dominates between the means: boundary at the low mean"
    if g(b) >= 0:
        return b, "low component dominates between the means: boundary at the high mean"
    for _ in range(100):
        mid = 0.5 * (a + b)
        if g(mid) > 0:
            a = mid
        else:
            b = mid
    return 0.5 * (a + b), "posterior = 0.5"


def fit_mixture(mu: np.ndarray, sigma: np.ndarray, base: GateConfig, *, iterations: int = 200,
                min_sd: float = 0.02, abstain_sd: float = 1.0,
                sigma_quantile: float = 0.5) -> Tuple[GateConfig, Dict[str, Any]]:
    """method=mixture. The rule, exactly:

    1. Fit a 2-component Gaussian mixture to the μ of the points by EM: means initialised at
       the minimum and maximum μ, both sds at the std
       of μ, weights 1/2; `iterations` (200) EM iterations, no early stop; every sd is floored at
       `min_sd` (0.02) because μ of k scores takes few distinct values. Components are ordered by
       mean: (w_low, m_low, s_low), (w_high, m_high, s_high).
    2. τ_μ = the point between m_low and m_high where the posterior of the two components is
       equal (0.5), found by bisection (m_low or m_high when one component dominates the whole
       interval), clipped to [0.05, 0.95].
    3. τ_abstain = min(τ_μ, m_low + `abstain_sd`·s_low) (abstain_sd = 1), clipped to [0, τ_μ].
    4. τ_σ = the largest σ among the points with μ ≤ τ_abstain (so every point of the
       consistently misaligned mode abstains), at least `min_sd`; when no point has μ ≤ τ_abstain,
       the `sigma_quantile` (0.5, linear interpolation) of σ over the points with σ > 0, or 0.1
       (the algorithm default) when every σ is 0.
    Thresholds are rounded to 4 decimals. Raises CalibrationError with fewer than 4 points, when
    every μ is equal, or when the mixture has one mode only (means closer than 1e-6 or an empty
    component).
    """
    _check_points(mu, sigma)
    if np.ptp(mu) < 1e-9:
        raise CalibrationError(f"calibrate: every μ equals {mu[0]:g}: there are no two modes to separate "
                               f"(use method=shares, or score more varied inputs)")
    if not (iterations >= 1 and min_sd > 0 and abstain_sd >= 0 and 0.0 <= sigma_quantile <= 1.0):
        raise CalibrationError("calibrate: need iterations ≥ 1, min_sd > 0, abstain_sd ≥ 0, "
                               "sigma_quantile in [0, 1]")
    em = _em(mu, int(iterations), float(min_sd))
    means, sds, weights = em["means"], em["sds"], em["weights"]
    if means[1] - means[0] < 1e-6:
        raise CalibrationError("calibrate: the two mixture components have the same mean (one mode only); "
                               "use method=shares")
    boundary, how = _boundary(means, sds, weights)
    tau_mu = round(min(max(boundary, 0.05), 0.95), 4)
    tau_abstain = round(min(max(min(tau_mu, float(means[0] + abstain_sd * sds[0])), 0.0), tau_mu), 4)
    low_mode = sigma[mu <= tau_abstain]
    chosen = max(float(low_mode.max()), min_sd) if len(low_mode) else _sigma_threshold(sigma, sigma_quantile)
    tau_sigma = round(min(max(chosen, 0.0), 1.0), 4)
    gate = dataclasses.replace(base, tau_mu=tau_mu, tau_sigma=tau_sigma, tau_abstain=tau_abstain)
    details = {
        "components": [{"weight": float(weights[i]), "mean": float(means[i]), "sd": float(sds[i])} for i in (0, 1)],
        "boundary": float(boundary), "boundary_rule": how, "loglik": em["loglik"], "init": em["init"],
        "iterations": int(iterations), "min_sd": float(min_sd), "abstain_sd": float(abstain_sd),
        "sigma_quantile": float(sigma_quantile), "sigma_rule": "max σ with μ ≤ τ_abstain" if len(low_mode) else
        "quantile of σ > 0" if (sigma > 0).any()
        else "every σ is 0: default 0.1",
    }
    return gate, details


# ----------------------------------------------------------------------------- shares


def _pick(counts: Sequence[int], target: float) -> int:
    """Index of the count closest to `target`; ties go to the smaller count (first index)."""
    best = 0
    for i, c in enumerate(counts):
        if abs(c - target) < abs(counts[best] - target) - 1e-12:
            best = i
    return best


def _critical_tau_mu(mu: float, sigma: float, gate: GateConfig) -> float:
    """The smallest τ_μ in [0, 1] at which the (non-abstaining) point is pg; inf when never (bisection).

    pg is monotone in τ_μ for the soft and hard gates: β grows with τ_μ.
    """
    probe = dataclasses.replace(gate, abstain=False)

    def pg(t: float) -> bool:
        probe.tau_mu = t
        return regime_of(mu, sigma, probe)[1] == PG

    if pg(0.0):
        return 0.0
    if not pg(1.0):
        return math.inf
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if pg(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fit_shares(mu: np.ndarray, sigma: np.ndarray, base: GateConfig, *, abstain_share: Optional[float] = None,
               pg_share: Optional[float] = None,
               tau_sigma: Optional[float] = None) -> Tuple[GateConfig, Dict[str, Any]]:
    """method=shares. Targets: `abstain_share` a and `pg_share` p (sft gets 1 − a − p); a target left
    None keeps the base gate's thresholds for that regime. n points; the rule, exactly:

    1. τ_abstain and τ_σ (skipped when a is None). A point abstains iff μ ≤ τ_abstain and σ ≤ τ_σ.
       Without `tau_sigma`: both are the same empirical quantile of their own values, i.e. for
       j = 1..n the option j is (τ_abstain, τ_σ) = (j-th smallest μ, j-th smallest σ): a point
       abstains iff it is among the j lowest in μ and among the j lowest in σ ("consistently
       misaligned"). Its count c_j grows with j; option 0 is "no point abstains". Pick the option
       whose count is closest to a·n (ties: the smaller count).
       With `tau_sigma` fixed: options are the distinct μ values v of the points with σ ≤ τ_σ
       (count: those points with μ ≤ v) and "none"; same pick.
       Each threshold is then moved up to the shortest decimal in [midpoint to the next distinct
       value, that next value) (in [value, 1] when it is the largest), which abstains the same points.
       "none": τ_σ stays (base or `tau_sigma`) and τ_abstain = 0 when no point with σ ≤ τ_σ has
       μ = 0, else abstention is switched off (abstain: false).
    2. τ_μ (skipped when p is None): for each point that does not abstain, t_i = the smallest τ_μ
       in [0, 1] that puts it in pg under the base gate's mode, T, λ_σ and pg_threshold (bisection
       on the gate's β (`regime_of`); points that are never pg are left out). Sort the t_i: the
       option "τ_μ ≥ t_(j)" gives ≥ j pg points; pick the option whose count is closest to p·n
       (ties: the smaller count) and set τ_μ from [t_(j), t_(j+1)) as in 1. (from [0, t_(1)) for
       zero pg points). Training requires τ_abstain ≤ τ_μ, so with abstention on only options
       reaching τ_μ ≥ τ_abstain are considered (τ_μ at least τ_abstain); a base τ_μ kept below
       τ_abstain is raised to it.
    The shares reached are within half a point's worth (0.5/n) of each target unless ties in
    (μ, σ) or the gate's shape make the target unreachable (then `notes` says so).
    """
    _check_points(mu, sigma)
    n = len(mu)
    for name, value in (("abstain_share", abstain_share), ("pg_share", pg_share)):
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise CalibrationError(f"calibrate: {name} must be in [0, 1], got {value!r}")
    if abstain_share is None and pg_share is None:
        raise CalibrationError("calibrate: method=shares needs abstain_share and/or pg_share")
    if (abstain_share or 0.0) + (pg_share or 0.0) > 1.0 + 1e-9:
        raise CalibrationError(f"calibrate: abstain_share + pg_share = {(abstain_share or 0) + (pg_share or 0):g} > 1")
    if tau_sigma is not None and not (0.0 <= tau_sigma <= 1.0):
        raise CalibrationError(f"calibrate: tau_sigma must be in [0, 1], got {tau_sigma!r}")
    notes: List[str] = []
    gate = dataclasses.replace(base)
    if tau_sigma is not None:
        gate.tau_sigma = float(tau_sigma)

    if abstain_share is not None:
        want = abstain_share * n
        if tau_sigma is None:
            mus, sigmas = np.sort(mu), np.sort(sigma)

            def count(j: int) -> int:  # option j: the j lowest in μ and in σ
                return 0 if j == 0 else int(((mu <= mus[j - 1]) & (sigma <= sigmas[j - 1])).sum())

            lo, hi = 0, n  # smallest j with count(j) ≥ want (count grows with j)
            while lo < hi:
                mid = (lo + hi) // 2
                if count(mid) >= want - 1e-9:
                    hi = mid
                else:
                    lo = mid + 1
            choices = [j for j in (lo - 1, lo) if 0 <= j <= n]
            j = choices[_pick([count(c) for c in choices], want)]
            if j > 0:
                gate.tau_abstain = _above(float(mus[j - 1]), mus)
                gate.tau_sigma = _above(float(sigmas[j - 1]), sigmas)
        else:
            values = np.unique(mu[sigma <= gate.tau_sigma])
            counts = [0] + [int(((mu <= v) & (sigma <= gate.tau_sigma)).sum()) for v in values]
            j = _pick(counts, want)
            if j > 0:
                gate.tau_abstain = _above(float(values[j - 1]), values)
        gate.abstain = True
        if j == 0:
            gate.tau_abstain = 0.0
            if ((mu <= 0.0) & (sigma <= gate.tau_sigma)).any():
                gate.abstain = False
                notes.append("abstention switched off: points with μ = 0 and σ ≤ τ_σ would abstain even at "
                             "τ_abstain = 0")

    if pg_share is not None:
        want = pg_share * n
        free = [i for i in range(n) if not is_abstain(float(mu[i]), float(sigma[i]), gate)]
        crit = sorted(t for t in (_critical_tau_mu(float(mu[i]), float(sigma[i]), gate) for i in free)
                      if math.isfinite(t))
        never = len(free) - len(crit)
        if never:
            why = "σ < τ_σ under the hard gate" if gate.mode == "hard" else "too little σ for β ≥ pg_threshold"
            notes.append(f"{never} non-abstaining point(s) cannot be pg at any τ_μ in [0, 1] ({why})")
        # options (pg count, τ_μ range [lo, hi)): none below the smallest t, then one per distinct t
        uniq = sorted(set(crit))
        options: List[Tuple[int, float, Optional[float]]] = []
        if not uniq or uniq[0] > 0.0:
            options.append((0, 0.0, uniq[0] if uniq else None))
        for j, t in enumerate(uniq):
            options.append((sum(1 for c in crit if c <= t), t, uniq[j + 1] if j + 1 < len(uniq) else None))
        floor = gate.tau_abstain if gate.abstain else 0.0  # training requires τ_abstain ≤ τ_μ
        options = [o for o in options if o[2] is None or o[2] > floor]
        _, lo, hi = options[_pick([o[0] for o in options], want)]
        tau = _short_in(max(lo, floor), None) if hi is None else _short_in(max(0.5 * (lo + hi), floor), hi)
        gate.tau_mu = min(max(tau, 0.0), 1.0)
    if gate.abstain and gate.tau_abstain > gate.tau_mu:
        notes.append(f"τ_μ raised from {gate.tau_mu:g} to τ_abstain = {gate.tau_abstain:g} (training requires "
                     f"τ_abstain ≤ τ_μ)")
        gate.tau_mu = gate.tau_abstain
    got = regime_counts(mu, sigma, gate)
    for name, target, regime in (("abstain", abstain_share, ABSTAIN), ("pg", pg_share, PG)):
        if target is not None and abs(got[regime] - target * n) > 0.5 + 1e-9:
            notes.append(f"{name}: reached {got[regime]}/{n} points for a target of {target:g}·{n} = "
                         f"{target * n:g} (ties or the gate's shape allow no closer)")
    if base.mode == "lagrangian":
        notes.append("lagrangian gate: shares computed for the dual variable λ = 1")
    details = {"targets": {"abstain": abstain_share, "pg": pg_share,
                           "sft": None if abstain_share is None or pg_share is None
                           else 1.0 - abstain_share - pg_share},
               "counts": got, "notes": notes}
    return gate, details


# ----------------------------------------------------------------------------- entry point


def fit_gate(points: Any, base: GateConfig, method: str = "mixture", **opts: Any) -> Tuple[GateConfig, Dict[str, Any]]:
    """Fit τ_μ, τ_σ, τ_abstain of `base` to the (μ, σ) `points`; returns (fitted gate, report).

    `points`: ALIGN-PLOT point dicts (mu/sigma null skipped), (μ, σ) pairs, or `plot_data(...)`.
    `method`: mixture (options iterations, min_sd, abstain_sd, sigma_quantile; see `fit_mixture`)
    or shares (options abstain_share, pg_share, tau_sigma; see `fit_shares`).
    The report: method, n_points, thresholds, shares (regime shares of the points under the
    fitted gate), shares_before (under `base`), details (method-specific), notes (list of str).
    """
    mu, sigma = mu_sigma(points)
    if method == "mixture":
        _check_opts(method, opts, ("iterations", "min_sd", "abstain_sd", "sigma_quantile"))
        gate, details = fit_mixture(mu, sigma, base, **opts)
        notes = ["lagrangian gate: shares computed for the dual variable λ = 1"] if base.mode == "lagrangian" else []
    elif method == "shares":
        _check_opts(method, opts, ("abstain_share", "pg_share", "tau_sigma"))
        gate, details = fit_shares(mu, sigma, base, **opts)
        notes = details.pop("notes")
    else:
        raise CalibrationError(f"calibrate: method must be one of {', '.join(METHODS)}, got {method!r}"
                               f"{suggest(str(method), list(METHODS))}")
    n = len(mu)
    after, before = regime_counts(mu, sigma, gate), regime_counts(mu, sigma, base)
    report = {
        "method": method,
        "n_points": n,
        "thresholds": {"tau_mu": gate.tau_mu, "tau_sigma": gate.tau_sigma, "tau_abstain": gate.tau_abstain,
                       "abstain": gate.abstain},
        "shares": {r: after[r] / n for r in REGIMES},
        "shares_before": {r: before[r] / n for r in REGIMES},
        "details": details,
        "notes": notes,
    }
    return gate, report


def overrides(gate: GateConfig) -> str:
    """The fitted thresholds as command-line overrides: `gate.tau_mu=... gate.tau_sigma=... gate.tau_abstain=...`
    (preceded by `gate.mode=...` unless soft, followed by `gate.abstain=false` when abstention is off)."""
    text = f"gate.tau_mu={gate.tau_mu!r} gate.tau_sigma={gate.tau_sigma!r} gate.tau_abstain={gate.tau_abstain!r}"
    if gate.mode != "soft":
        text = f"gate.mode={gate.mode} " + text
    return text if gate.abstain else text + " gate.abstain=false"


def format_report(report: Dict[str, Any]) -> str:
    """A few human-readable lines for the CLI."""
    t = report["thresholds"]
    pct = lambda shares: ", ".join(f"{r} {shares[r]:.0%}" for r in REGIMES)  # noqa: E731
    lines = [f"calibrated on {report['n_points']} points (method={report['method']})",
             f"τ_μ = {t['tau_mu']:g}, τ_σ = {t['tau_sigma']:g}, τ_abstain = {t['tau_abstain']:g}"
             + ("" if t["abstain"] else " (abstention off)"),
             f"regime shares: {pct(report['shares'])} (before: {pct(report['shares_before'])})"]
    if report["method"] == "mixture":
        low, high = report["details"]["components"]
        lines.append(f"μ modes: {low['mean']:.3f} ± {low['sd']:.3f} (weight {low['weight']:.2f}) and "
                     f"{high['mean']:.3f} ± {high['sd']:.3f} (weight {high['weight']:.2f})")
    lines += [f"note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


def write_gate_yaml(gate: GateConfig, path: Union[str, "os.PathLike[str]"], comment: str = "") -> Path:
    """Write `gate` as a gate config file (every GateConfig key, like recipes/gate/soft.yaml), atomically.

    It starts with `#` lines: `comment` (how it was fitted), then how to use it. The file loads
    back with `build(GateConfig, yaml.safe_load(text))` to an equal GateConfig.
    """
    path = Path(path)
    head = [line for line in (comment or "Gate thresholds fitted by aware calibrate.").splitlines() if line.strip()]
    head += [
        f"Use: aware train recipe=alpaca gate={path}",
        f"  or give the thresholds explicitly: aware train recipe=alpaca {overrides(gate)}",
    ]
    body = yaml.safe_dump(dataclasses.asdict(gate), sort_keys=False, allow_unicode=True, width=120)
    text = "".join(f"# {line}\n" for line in head) + body
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text)
