"""ALIGN-PLOTS: every input as a point on the (μ, σ) plane of its k verifier scores.

A run directory holds `config.yaml` (the resolved config; its `gate:` block is the gate that was
trained with) and `samples.jsonl` (one record per input per step with `mu`, `sigma`, `beta`,
`regime`). `load_points` / `load_gate` read them; `draw_align_plot` draws one figure with

(a) the μ–σ scatter of every point coloured by regime, with the gate drawn from its config:
    τ_μ (vertical), τ_σ (horizontal), the abstention rectangle μ ≤ τ_abstain, σ ≤ τ_σ, and β
    contours of the soft gate (β = 0.1, 0.5, 0.9 and β = pg_threshold) or the β = 1 region of
    the hard gate; marginal histograms of μ (top) and σ (right);
(b) the points of the first and of the last step side by side (shared axes), or `compare`
    (e.g. the points of the model before training) against the last step;
(c) the share of each regime per step (stacked area; one stacked bar when there is one step).

Points are plotted exactly as recorded (no jitter; alpha shows overlap, and stacks of identical
points are labelled ×n). `plot_data` returns the arrays that are plotted. A "before" picture is
the same call on points of a single step (e.g. made by `points_from_scores` with step 0).
The module needs numpy and matplotlib (Agg, no display) but not torch.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from aware_cli.config.schema import GateConfig
from aware_cli.config.validate import build
from aware_cli.errors import ConfigError, DataError
from aware_cli.extras import require
from aware_cli.files import jsonl_lines, replace_atomic, write_atomic
from aware_cli.pipeline.gate import ABSTAIN, PG, SFT, gate_group, soft_beta
from aware_cli.pipeline.rundir import SampleRecord

PathLike = Union[str, "os.PathLike[str]"]

REGIMES = (SFT, PG, ABSTAIN)
# Okabe–Ito colour-blind-safe palette; markers differ too, so regimes survive greyscale printing.
COLORS = {SFT: "#0072B2", PG: "#E69F00", ABSTAIN: "#CC79A7"}
MARKERS = {SFT: "o", PG: "^", ABSTAIN: "s"}
LABELS = {SFT: "sft", PG: "pg", ABSTAIN: "abstain"}
BETA_LEVELS = (0.1, 0.5, 0.9)
MU_LIM = (-0.03, 1.03)  # μ ∈ [0, 1], a margin so points on the edges stay visible
SIGMA_LIM = (-0.015, 0.515)  # σ of scores in [0, 1] is at most 0.5
FORMATS = ("png", "svg")
MAX_SHARE_BINS = 60  # the regime-share panel groups steps into at most this many bins


class PlotData(NamedTuple):
    """The plotted arrays, one entry per point in the order of `points`."""

    mu: np.ndarray  # float64
    sigma: np.ndarray  # float64
    regime: np.ndarray  # str: sft | pg | abstain
    step: np.ndarray  # int64


# ----------------------------------------------------------------------------- reading


def samples_path(run_dir: PathLike) -> Path:
    """`run_dir/samples.jsonl`, or `run_dir` itself when it is a .jsonl file."""
    path = Path(run_dir)
    return path if path.is_file() else path / "samples.jsonl"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_points(run_dir: PathLike) -> List[Dict[str, Any]]:
    """The samples.jsonl records that have a (μ, σ): records with null mu/sigma (nothing judged) are skipped.

    `run_dir` is a run directory or a .jsonl file of such records (e.g. from `write_points_jsonl`).
    A record without `step` gets step 0 (a "before training" point). Raises DataError naming
    file:line for a line that is not a JSON object or has a bad mu, sigma, step or regime.
    """
    path = samples_path(run_dir)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a run directory with samples.jsonl or a .jsonl file)")
    points = []
    try:
        lines = jsonl_lines(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        parsed = SampleRecord.from_dict(record)
        mu, sigma = parsed.mu, parsed.sigma
        if mu is None or sigma is None:
            continue
        if not (_number(mu) and 0.0 <= mu <= 1.0):
            raise DataError(f"{where}: mu must be a number in [0, 1] or null, got {mu!r}")
        if not (_number(sigma) and 0.0 <= sigma <= 0.5 + 1e-9):
            raise DataError(f"{where}: sigma must be a number in [0, 0.5] or null, got {sigma!r}")
        step = parsed.step
        if not (isinstance(step, int) and not isinstance(step, bool)):
            raise DataError(f"{where}: step must be an integer, got {step!r}")
        if parsed.regime not in REGIMES:
            raise DataError(f"{where}: regime must be one of {', '.join(REGIMES)}, got {parsed.regime!r}")
        points.append({**record, "step": step, "mu": float(mu), "sigma": float(sigma)})
    return points


def load_gate(run_dir: PathLike) -> GateConfig:
    """The gate the run trained with: the `gate:` block of `run_dir/config.yaml` (defaults when absent)."""
    path = Path(run_dir)
    path = path.parent / "config.yaml" if path.is_file() else path / "config.yaml"
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected the run's resolved config)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DataError(f"{where}: invalid YAML") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a mapping at the top level")
    block = config.get("gate") or {}
    try:
        return build(GateConfig, block, "gate.")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def points_from_scores(scores: Sequence[Sequence[Optional[float]]], gate: GateConfig, *, step: int = 0,
                       ids: Optional[Sequence[str]] = None, prompts: Optional[Sequence[str]] = None,
                       responses: Optional[Sequence[Sequence[str]]] = None,
                       objective: str = "aware") -> List[Dict[str, Any]]:
    """Points (samples.jsonl-shaped records) from k scores per input, gated exactly as training does.

    For the "before" picture: sample k responses per prompt with the untrained model, score them,
    and pass the [B][k] scores here (step 0). Inputs with no judged score get mu = sigma = None
    (kept in the records, skipped by `plot_data` / `draw_align_plot` like `load_points` skips them).
    """
    records = []
    for b, group in enumerate(scores):
        g = gate_group(list(group), gate, 1.0, objective)
        records.append(SampleRecord(step, str(ids[b]) if ids is not None else str(b),
                                    prompts[b] if prompts is not None else None,
                                    list(responses[b]) if responses is not None else None,
                                    list(group), g.mu, g.sigma, g.beta, g.regime).to_dict())
    return records


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_points_jsonl(points: Iterable[Dict[str, Any]], path: PathLike) -> Path:
    """Write points as JSON lines (same fields as samples.jsonl), atomically (temp file + os.replace)."""
    path = Path(path)
    text = "".join(json.dumps(p, ensure_ascii=False, default=_json_default) + "\n" for p in points)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text)


# ----------------------------------------------------------------------------- data


def _plottable(points: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [p for p in points if p.get("mu") is not None and p.get("sigma") is not None]


def plot_data(points: Iterable[Dict[str, Any]]) -> PlotData:
    """The exact (mu, sigma, regime, step) arrays `draw_align_plot` plots, in the order of `points`.

    Points with mu or sigma null are left out; a missing step counts as step 0.
    """
    pts = _plottable(points)
    return PlotData(
        mu=np.array([float(p["mu"]) for p in pts], dtype=np.float64),
        sigma=np.array([float(p["sigma"]) for p in pts], dtype=np.float64),
        regime=np.array([str(p.get("regime", SFT)) for p in pts], dtype=str),
        step=np.array([int(p.get("step", 0) or 0) for p in pts], dtype=np.int64),
    )


def select_step(points: Iterable[Dict[str, Any]], which: Union[str, int] = "last") -> List[Dict[str, Any]]:
    """Points of one step: "first", "last" or a step number (e.g. the first step as a calibration set)."""
    pts = _plottable(points)
    if not pts:
        return []
    steps = sorted({int(p.get("step", 0) or 0) for p in pts})
    if which == "first":
        target = steps[0]
    elif which == "last":
        target = steps[-1]
    elif isinstance(which, int) and not isinstance(which, bool):
        target = which
    else:
        raise ConfigError(f"step: expected first, last or a step number, got {which!r}")
    return [p for p in pts if int(p.get("step", 0) or 0) == target]


def shares_per_step(data: PlotData) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """(x, {regime: share per x}) for the regime panel: one x per step, or per bin of steps when > 60 steps.

    A bin's x is the mean step of its points; shares in each bin sum to 1.
    """
    steps = np.unique(data.step)
    if len(steps) <= MAX_SHARE_BINS:
        keys = np.searchsorted(steps, data.step)
    else:
        edges = np.linspace(steps[0], steps[-1], MAX_SHARE_BINS + 1)
        keys = np.clip(np.searchsorted(edges, data.step, side="right") - 1, 0, MAX_SHARE_BINS - 1)
    used = np.unique(keys)
    x = np.array([data.step[keys == k].mean() for k in used], dtype=np.float64)
    totals = np.array([(keys == k).sum() for k in used], dtype=np.float64)
    shares = {r: np.array([((keys == k) & (data.regime == r)).sum() for k in used]) / totals for r in REGIMES}
    return x, shares


# ----------------------------------------------------------------------------- drawing


def gate_summary(gate: GateConfig) -> str:
    """One line: the gate's mode and thresholds as drawn."""
    parts = [f"{gate.mode} gate", f"τ_μ={gate.tau_mu:g}"]
    if gate.mode == "hard":
        parts.append(f"τ_σ={gate.tau_sigma:g}")
    else:
        parts += [f"T={gate.temperature:g}", f"λ_σ={gate.lambda_sigma:g}", f"pg: β≥{gate.pg_threshold:g}"]
        if gate.mode == "lagrangian":
            parts[-1] += " (λ=1)"
    parts.append(f"abstain: μ≤{gate.tau_abstain:g}, σ≤{gate.tau_sigma:g}" if gate.abstain else "abstention off")
    return " · ".join(parts)


def _beta_grid(gate: GateConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft-gate β on a μ×σ grid, computed by `pipeline.gate.soft_beta` itself (λ = 1 for lagrangian)."""
    mu = np.linspace(0.0, 1.0, 201)
    sigma = np.linspace(0.0, 0.5, 101)
    beta = np.array([[soft_beta(float(m), float(s), gate) for m in mu] for s in sigma])
    return mu, sigma, beta


def _draw_gate(ax, gate: GateConfig, grid, *, label: bool) -> None:
    """τ_μ, τ_σ, the abstention rectangle and the β contours / hard β = 1 region."""
    from matplotlib.patches import Rectangle

    if gate.mode == "hard":
        ax.add_patch(Rectangle((0.0, gate.tau_sigma), gate.tau_mu, 0.5 - gate.tau_sigma, facecolor=COLORS[PG],
                               alpha=0.12, edgecolor=COLORS[PG], linewidth=0.8, zorder=0,
                               label="hard gate β = 1" if label else None))
    else:
        mu, sigma, beta = grid
        levels = sorted({*BETA_LEVELS, gate.pg_threshold})
        levels = [lv for lv in levels if beta.min() < lv < beta.max()]
        if levels:
            widths = [1.6 if lv == gate.pg_threshold else 0.8 for lv in levels]
            cs = ax.contour(mu, sigma, beta, levels=levels, colors="#555555", linewidths=widths,
                            linestyles="solid", zorder=1)
            if label:
                ax.clabel(cs, fmt=lambda v: f"β={v:g}", fontsize=7, inline=True)
    if gate.abstain:
        ax.add_patch(Rectangle((0.0, 0.0), gate.tau_abstain, gate.tau_sigma, facecolor=COLORS[ABSTAIN], alpha=0.18,
                               edgecolor=COLORS[ABSTAIN], linewidth=1.0, hatch="//", zorder=0,
                               label=f"abstain region (τ_abstain = {gate.tau_abstain:g})" if label else None))
    ax.axvline(gate.tau_mu, color="#222222", linestyle="--", linewidth=1.1, zorder=1,
               label=f"τ_μ = {gate.tau_mu:g}" if label else None)
    ax.axhline(gate.tau_sigma, color="#222222", linestyle=":", linewidth=1.1, zorder=1,
               label=f"τ_σ = {gate.tau_sigma:g}" if label else None)


def _scatter(ax, data: PlotData, *, label: bool, size: float = 36.0, annotate: int = 0) -> None:
    """One PathCollection per regime (gid `points-<regime>`), offsets exactly (μ, σ)."""
    for regime in REGIMES:
        sel = data.regime == regime
        if not sel.any():
            continue
        ax.scatter(data.mu[sel], data.sigma[sel], s=size, c=COLORS[regime], marker=MARKERS[regime], alpha=0.55,
                   edgecolors="black", linewidths=0.4, zorder=3, gid=f"points-{regime}",
                   label=f"{LABELS[regime]}  n={int(sel.sum())}" if label else None)
    if annotate:
        stacks = Counter(zip(data.mu.tolist(), data.sigma.tolist()))
        for (m, s), n in stacks.most_common(annotate):
            if n >= 2:
                ax.annotate(f"×{n}", (m, s), xytext=(5, 4), textcoords="offset points", fontsize=7, zorder=4,
                            color="#222222")


def _style_plane(ax, *, xlabel: bool = True, ylabel: bool = True) -> None:
    ax.set_xlim(*MU_LIM)
    ax.set_ylim(*SIGMA_LIM)
    if xlabel:
        ax.set_xlabel("μ = mean verifier score")
    if ylabel:
        ax.set_ylabel("σ = std of scores")
    ax.grid(True, alpha=0.25, linewidth=0.5)


def _step_title(data: PlotData, name: str) -> str:
    steps = np.unique(data.step)
    if len(steps) == 0:
        return f"{name}: no points"
    if len(steps) == 1 and steps[0] == 0:
        return f"{name}: before training (n={len(data.mu)})"
    where = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}–{steps[-1]}"
    return f"{name}: {where} (n={len(data.mu)})"


def _subset(data: PlotData, sel: np.ndarray) -> PlotData:
    return PlotData(data.mu[sel], data.sigma[sel], data.regime[sel], data.step[sel])


def make_figure(points: Sequence[Dict[str, Any]], gate: GateConfig, *, title: Optional[str] = None,
                compare: Optional[Sequence[Dict[str, Any]]] = None, compare_label: str = "before training"):
    """Build the ALIGN-PLOT figure (not saved). Returns (figure, {panel name: axes}).

    Panels: main, mu_hist, sigma_hist, info, first, last (None with a single step and no `compare`),
    shares. With `compare`, `first` shows the `compare` points and `last` the last step of `points`.
    """
    require("matplotlib", "plot", "the ALIGN-PLOT")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    data = plot_data(points)
    if len(data.mu) == 0:
        raise DataError("no points to plot: every record has mu/sigma null (nothing was judged)")
    grid = _beta_grid(gate) if gate.mode != "hard" else None

    fig = Figure(figsize=(16, 9.6), dpi=100, layout="constrained")
    outer = fig.add_gridspec(1, 2, width_ratios=[1.12, 1.0])
    left = outer[0].subgridspec(2, 2, width_ratios=[3.6, 1.25], height_ratios=[1.25, 4.0])
    right = outer[1].subgridspec(2, 1, height_ratios=[1.15, 1.0])
    ax_main = fig.add_subplot(left[1, 0])
    ax_mu = fig.add_subplot(left[0, 0], sharex=ax_main)
    ax_sigma = fig.add_subplot(left[1, 1], sharey=ax_main)
    ax_info = fig.add_subplot(left[0, 1])
    steps = np.unique(data.step)
    single = len(steps) == 1 and compare is None
    if single:
        ax_first, ax_last = fig.add_subplot(right[0]), None
    else:
        pair = right[0].subgridspec(1, 2, wspace=0.02)
        ax_first = fig.add_subplot(pair[0])
        ax_last = fig.add_subplot(pair[1], sharex=ax_first, sharey=ax_first)
    ax_shares = fig.add_subplot(right[1])

    # (a) all points on the gate
    _draw_gate(ax_main, gate, grid, label=True)
    _scatter(ax_main, data, label=True, annotate=10)
    _style_plane(ax_main)
    ax_main.set_title(_step_title(data, "all points") + "\n" + gate_summary(gate), fontsize=9)
    handles, labels = ax_main.get_legend_handles_labels()
    if gate.mode != "hard":
        handles.append(Line2D([], [], color="#555555", linewidth=0.8))
        labels.append("β = 0.1, 0.5, 0.9 (soft)")
        handles.append(Line2D([], [], color="#555555", linewidth=1.6))
        labels.append(f"pg boundary β = {gate.pg_threshold:g}")

    # marginal histograms, stacked by regime
    present = [r for r in REGIMES if (data.regime == r).any()]
    mu_bins = np.linspace(0.0, 1.0, 26)
    sigma_bins = np.linspace(0.0, 0.5, 21)
    ax_mu.hist([data.mu[data.regime == r] for r in present], bins=mu_bins, stacked=True,
               color=[COLORS[r] for r in present], alpha=0.85, edgecolor="white", linewidth=0.4)
    ax_mu.axvline(gate.tau_mu, color="#222222", linestyle="--", linewidth=1.0)
    ax_mu.set_ylabel("count")
    ax_mu.set_title("marginal of μ", fontsize=9)
    ax_mu.tick_params(labelbottom=False)
    ax_sigma.hist([data.sigma[data.regime == r] for r in present], bins=sigma_bins, stacked=True,
                  orientation="horizontal", color=[COLORS[r] for r in present], alpha=0.85, edgecolor="white",
                  linewidth=0.4)
    ax_sigma.axhline(gate.tau_sigma, color="#222222", linestyle=":", linewidth=1.0)
    ax_sigma.set_xlabel("count")
    ax_sigma.set_title("marginal of σ", fontsize=9)
    ax_sigma.tick_params(labelleft=False)
    ax_info.axis("off")  # the corner cell holds the legend of (a)
    ax_info.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.0, 1.0), fontsize=7.5, frameon=False,
                   title=f"{len(data.mu)} points, {len(steps)} step{'s' if len(steps) != 1 else ''}",
                   title_fontsize=8, alignment="left")

    # (b) first vs last step (or compare vs last, or one panel for a single step)
    if single:
        _draw_gate(ax_first, gate, grid, label=False)
        _scatter(ax_first, data, label=False, annotate=6)
        _style_plane(ax_first)
        ax_first.set_title(_step_title(data, "the only step" if steps[0] != 0 else "points"), fontsize=10)
    else:
        if compare is not None:
            first, first_name = plot_data(compare), compare_label
        else:
            first, first_name = _subset(data, data.step == steps[0]), "first step"
        last = _subset(data, data.step == steps[-1])
        for ax, part, name, ylabel in ((ax_first, first, first_name, True), (ax_last, last, "last step", False)):
            _draw_gate(ax, gate, grid, label=False)
            _scatter(ax, part, label=False, annotate=6)
            _style_plane(ax, ylabel=ylabel)
            ax.set_title(_step_title(part, name), fontsize=10)
        ax_last.tick_params(labelleft=False)

    # (c) regime shares over steps
    x, shares = shares_per_step(data)
    if len(x) == 1:
        bottom = 0.0
        for r in REGIMES:
            ax_shares.bar(x, shares[r], bottom=bottom, width=0.6, color=COLORS[r], label=r, edgecolor="white",
                          alpha=0.85)
            bottom += float(shares[r][0])
        ax_shares.set_xlim(x[0] - 2, x[0] + 2)
        ax_shares.set_xticks([x[0]])
    else:
        ax_shares.stackplot(x, *[shares[r] for r in REGIMES], colors=[COLORS[r] for r in REGIMES],
                            labels=list(REGIMES), alpha=0.85)
        ax_shares.set_xlim(x[0], x[-1])
    ax_shares.set_ylim(0.0, 1.0)
    ax_shares.set_xlabel("training step" + (" (binned)" if len(np.unique(data.step)) > MAX_SHARE_BINS else ""))
    ax_shares.set_ylabel("share of inputs")
    ax_shares.set_title("share of each regime per step", fontsize=10)
    ax_shares.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax_shares.grid(True, alpha=0.25, linewidth=0.5)

    fig.suptitle(title or "ALIGN-PLOT", fontsize=14)
    axes = {"main": ax_main, "mu_hist": ax_mu, "sigma_hist": ax_sigma, "info": ax_info, "first": ax_first,
            "last": ax_last, "shares": ax_shares}
    return fig, axes


def draw_align_plot(points: Sequence[Dict[str, Any]], gate: GateConfig, out_path: PathLike, *,
                    title: Optional[str] = None, fmt: str = "png",
                    compare: Optional[Sequence[Dict[str, Any]]] = None,
                    compare_label: str = "before training") -> Path:
    """Draw the ALIGN-PLOT of `points` under `gate` and write it to `out_path` atomically; returns the path.

    `fmt` is png or svg. A single step (e.g. a "before" picture) gives one μ–σ panel in (b) and one
    bar in (c). `compare`: other points (e.g. before training) shown against the last step in (b).
    Raises DataError when no point has a μ and σ.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    fig, _ = make_figure(points, gate, title=title, compare=compare, compare_label=compare_label)
    out = Path(out_path)
    # metadata pinned so the same points give the same bytes (no date/version stamps)
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_atomic(out, lambda tmp: fig.savefig(tmp, format=fmt, dpi=100, metadata=metadata))
    return out
