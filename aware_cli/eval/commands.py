"""What `aware align-plot` and `aware calibrate` do, behind the CLI: where the points come from (a run, a
points file, or sampling a recipe's model now), where the outputs go, and the calibration itself.

The CLI parses the options (`config.schema.AlignPlotOptions`, `CalibrateOptions`) and prints; each
function here returns what it wrote.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from rich.console import Console

from aware_cli.config.schema import AlignPlotOptions, CalibrateOptions, GateConfig
from aware_cli.errors import AwareError

Options = Union[AlignPlotOptions, CalibrateOptions]


def points_for(opts: Options, overrides: List[str],
               console: Console) -> Tuple[List[Dict[str, Any]], GateConfig, Optional[Path]]:
    """(points, gate, where they came from) from run=DIR, points=FILE or by sampling the recipe's model
    (`where` is None then: the caller chooses where to keep them)."""
    from aware_cli.config.compose import compose, model_overrides
    from aware_cli.eval.align_plot import load_gate, load_points

    if opts.run:
        return load_points(opts.run), load_gate(opts.run), Path(opts.run)
    cfg = compose(opts.recipe, model_overrides(overrides)).config
    if opts.points:
        return load_points(opts.points), cfg.gate, Path(opts.points).parent
    from aware_cli.eval.points import compute_points

    return compute_points(cfg, opts.limit, console), cfg.gate, None


def align_plot(opts: AlignPlotOptions, overrides: List[str], console: Console) -> Tuple[Path, int]:
    """Draw the ALIGN-PLOT; points sampled now are kept next to it (out's folder, else runs/align-plot-<time>).
    Returns (the figure, the number of points)."""
    from aware_cli.eval.align_plot import draw_align_plot, write_points_jsonl

    fmt = opts.format or (Path(opts.out).suffix.lstrip(".") if opts.out else "png")
    if fmt not in ("png", "svg"):
        raise AwareError(f"format: expected png or svg, got {fmt!r}")
    points, gate, where = points_for(opts, overrides, console)
    if where is None:  # computed now: keep the points next to the figure
        where = Path(opts.out).parent if opts.out else Path("runs") / f"align-plot-{time.strftime('%Y%m%d-%H%M%S')}"
        where.mkdir(parents=True, exist_ok=True)
        console.print(f"points: {write_points_jsonl(points, where / 'points.jsonl')}")
    out = Path(opts.out) if opts.out else where / f"align_plot.{fmt}"
    draw_align_plot(points, gate, out, title=opts.title, fmt=fmt)
    return out, len(points)


def calibrate(opts: CalibrateOptions, overrides: List[str], console: Console) -> Tuple[Path, Path]:
    """Fit the gate on the points, print the report, write the gate YAML, its points (when sampled now) and
    its align-plot. Returns (the gate file, the figure)."""
    from aware_cli.eval.align_plot import draw_align_plot, select_step, write_points_jsonl
    from aware_cli.eval.calibrate import fit_gate, format_report, write_gate_yaml

    points, base, where = points_for(opts, overrides, console)
    if opts.run:
        points = select_step(points, "first")  # the model before training moved the points
    shares = {k: getattr(opts, k) for k in ("abstain_share", "pg_share", "tau_sigma") if getattr(opts, k) is not None}
    gate, report = fit_gate(points, base, opts.method, **shares)
    console.print(format_report(report), highlight=False, markup=False)
    out = Path(opts.out)
    write_gate_yaml(gate, out, f"Fitted by aware calibrate: method={opts.method} on {report['n_points']} points "
                               f"of {where or opts.recipe}")
    if where is None:
        write_points_jsonl(points, out.with_suffix(".points.jsonl"))
    figure = draw_align_plot(points, gate, out.with_suffix(".png"), title=f"calibrated gate ({opts.method})")
    return out, figure
