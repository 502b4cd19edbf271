"""ALIGN-PLOTS from a hand-made run directory: exact points, valid PNG/SVG, single step, bad lines."""

import dataclasses
import json
import struct

import numpy as np
import pytest
import yaml

from aware_cli.config.schema import GateConfig
from aware_cli.errors import ConfigError, DataError
from aware_cli.eval import align_plot
from aware_cli.eval.align_plot import (draw_align_plot, load_gate, load_points, make_figure, plot_data,
                                       points_from_scores, select_step, write_points_jsonl)
from aware_cli.pipeline.gate import gate_group

GATE = {"mode": "soft", "tau_mu": 0.8, "temperature": 0.05, "lambda_sigma": 0.1, "tau_sigma": 0.1,
        "tau_abstain": 0.2, "abstain": True, "pg_threshold": 0.5}

# 3 steps × 6 inputs: abstain (all 0), sft (all aligned), pg (spread, low μ); one record per step has
# nothing judged (mu/sigma null) and must be skipped.
STEPS = {
    1: [[0, 0, 0, 0], [0, 0, 0, 0], [0.1, 0.1, 0.1, 0.1], [1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
    2: [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0.9, 0.9, 0.9, 0.9], [1, 1, 1, 1]],
    3: [[0, 0, 0, 0], [1, 1, 1, 0], [0.95, 0.9, 1, 0.85], [1, 1, 1, 1], [1, 1, 1, 1], [0.5, 0.7, 0.6, 0.6]],
}


def _records():
    gate = GateConfig(**GATE)
    records = []
    for step, groups in STEPS.items():
        for i, scores in enumerate(groups):
            g = gate_group([float(s) for s in scores], gate)
            records.append({"step": step, "id": f"p{i}", "prompt": f"prompt {i}", "responses": ["r"] * len(scores),
                            "scores": [float(s) for s in scores], "mu": g.mu, "sigma": g.sigma, "beta": g.beta,
                            "regime": g.regime})
        records.append({"step": step, "id": "unjudged", "prompt": "x", "responses": ["r", "r"],
                        "scores": [None, None], "mu": None, "sigma": None, "beta": 0.0, "regime": "sft"})
    return records


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"recipe": "test", "k": 4, "gate": GATE}, sort_keys=False))
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return run


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_fixture_covers_every_regime(run_dir):
    regimes = {p["regime"] for p in load_points(run_dir)}
    assert regimes == {"sft", "pg", "abstain"}


def test_load_points_skips_unjudged_and_plot_data_is_exact(run_dir):
    raw = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    judged = [r for r in raw if r["mu"] is not None]
    assert len(raw) == 21 and len(judged) == 18
    points = load_points(run_dir)
    data = plot_data(points)
    assert data.mu.tolist() == [r["mu"] for r in judged]  # exact: no jitter, no rounding
    assert data.sigma.tolist() == [r["sigma"] for r in judged]
    assert data.regime.tolist() == [r["regime"] for r in judged]
    assert data.step.tolist() == [r["step"] for r in judged]


def _offsets(ax):
    """(μ, σ, regime) of every plotted point of a panel, from the scatter collections' offsets."""
    out = []
    for coll in ax.collections:
        gid = coll.get_gid() or ""
        if gid.startswith("points-"):
            out += [(float(m), float(s), gid[len("points-"):]) for m, s in np.asarray(coll.get_offsets())]
    return sorted(out)


def test_figure_plots_exactly_the_recorded_points(run_dir):
    points = load_points(run_dir)
    fig, axes = make_figure(points, load_gate(run_dir), title="t")
    data = plot_data(points)
    expected = sorted(zip(data.mu.tolist(), data.sigma.tolist(), data.regime.tolist()))
    assert _offsets(axes["main"]) == expected
    first = [p for p in points if p["step"] == 1]
    last = [p for p in points if p["step"] == 3]
    assert _offsets(axes["first"]) == sorted((p["mu"], p["sigma"], p["regime"]) for p in first)
    assert _offsets(axes["last"]) == sorted((p["mu"], p["sigma"], p["regime"]) for p in last)
    assert axes["first"].get_shared_x_axes().joined(axes["first"], axes["last"])
    assert axes["first"].get_shared_y_axes().joined(axes["first"], axes["last"])
    # the gate's boundaries come from the config: τ_μ vertical, τ_σ horizontal, abstention rectangle
    lines = {line.get_label(): line for line in axes["main"].get_lines()}
    assert list(lines["τ_μ = 0.8"].get_xdata()) == [0.8, 0.8]
    assert list(lines["τ_σ = 0.1"].get_ydata()) == [0.1, 0.1]
    rect = next(p for p in axes["main"].patches if p.get_label().startswith("abstain region"))
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (0.0, 0.0, 0.2, 0.1)
    assert axes["main"].get_xlabel().startswith("μ") and axes["main"].get_ylabel().startswith("σ")


def test_regime_share_panel_sums_to_one_per_step(run_dir):
    data = plot_data(load_points(run_dir))
    x, shares = align_plot.shares_per_step(data)
    assert x.tolist() == [1.0, 2.0, 3.0]
    total = sum(shares.values())
    assert np.allclose(total, 1.0)
    assert shares["abstain"][0] == pytest.approx(3 / 6)  # step 1: two all-zero groups and μ = 0.1, σ = 0


def test_draw_png_and_svg(run_dir, tmp_path):
    points, gate = load_points(run_dir), load_gate(run_dir)
    png = draw_align_plot(points, gate, tmp_path / "out" / "plot.png", title="test run")
    width, height = _png_size(png)
    assert width >= 800 and height >= 500
    svg = draw_align_plot(points, gate, tmp_path / "out" / "plot.svg", fmt="svg")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text and "</svg>" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["plot.png", "plot.svg"]  # no temp files left
    with pytest.raises(ConfigError, match="png, svg"):
        draw_align_plot(points, gate, tmp_path / "out" / "plot.pdf", fmt="pdf")


def test_hard_gate_draws_the_beta_one_region(run_dir):
    gate = dataclasses.replace(load_gate(run_dir), mode="hard")
    _, axes = make_figure(load_points(run_dir), gate)
    region = next(p for p in axes["main"].patches if p.get_label() == "hard gate β = 1")
    assert (region.get_x(), region.get_y(), region.get_width()) == (0.0, 0.1, 0.8)


def test_single_step_before_picture(tmp_path):
    gate = GateConfig(**GATE)
    points = points_from_scores([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1], [None, None]], gate, step=0)
    assert [p["regime"] for p in points] == ["abstain", "pg", "sft", "sft"]
    assert points[3]["mu"] is None
    path = write_points_jsonl(points, tmp_path / "before.jsonl")
    loaded = load_points(path)  # a .jsonl file instead of a run directory
    assert [(p["mu"], p["sigma"]) for p in loaded] == [(0.0, 0.0), (0.5, 0.5), (1.0, 0.0)]
    fig, axes = make_figure(loaded, gate)
    assert axes["last"] is None and len(_offsets(axes["first"])) == 3
    assert len(axes["shares"].patches) == 3  # one stacked bar: sft, pg, abstain
    width, height = _png_size(draw_align_plot(loaded, gate, tmp_path / "before.png"))
    assert width >= 800 and height >= 500


def test_compare_panel_shows_the_compare_points(run_dir):
    points = load_points(run_dir)
    before = points_from_scores([[0, 0, 0, 0], [0, 0, 0, 1]], load_gate(run_dir))
    _, axes = make_figure(points, load_gate(run_dir), compare=before)
    assert _offsets(axes["first"]) == sorted((p["mu"], p["sigma"], p["regime"]) for p in before)
    assert "before training" in axes["first"].get_title()
    assert _offsets(axes["last"]) == sorted((p["mu"], p["sigma"], p["regime"]) for p in select_step(points, "last"))


def test_malformed_line_names_file_and_line(run_dir):
    path = run_dir / "samples.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = '{"step": 1, "mu": 0.5,'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: malformed JSON"):
        load_points(run_dir)


@pytest.mark.parametrize("record, problem", [
    ({"step": 1, "mu": 1.5, "sigma": 0.0, "regime": "sft"}, "mu must be"),
    ({"step": 1, "mu": 0.5, "sigma": "x", "regime": "sft"}, "sigma must be"),
    ({"step": "one", "mu": 0.5, "sigma": 0.1, "regime": "sft"}, "step must be"),
    ({"step": 1, "mu": 0.5, "sigma": 0.1, "regime": "rl"}, "regime must be"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_records_are_data_errors(tmp_path, record, problem):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"step": 1, "mu": 0.0, "sigma": 0.0, "regime": "abstain"}) + "\n\n"
                    + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: {problem}"):
        load_points(path)


def test_missing_files_and_empty_points(tmp_path):
    with pytest.raises(DataError, match="samples.jsonl"):
        load_points(tmp_path)
    with pytest.raises(DataError, match="config.yaml"):
        load_gate(tmp_path)
    with pytest.raises(DataError, match="no points"):
        draw_align_plot([{"step": 1, "mu": None, "sigma": None, "regime": "sft"}], GateConfig(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_load_gate_reads_the_gate_block(run_dir):
    text = (run_dir / "config.yaml").read_text().replace("tau_mu: 0.8", "tau_mu: 0.65")
    (run_dir / "config.yaml").write_text(text)
    assert load_gate(run_dir) == GateConfig(**{**GATE, "tau_mu": 0.65})
    (run_dir / "config.yaml").write_text(text.replace("tau_mu:", "tau_muu:"))
    with pytest.raises(ConfigError, match="gate.tau_muu"):
        load_gate(run_dir)


def test_write_is_atomic_when_drawing_fails(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "plot.png"
    out.write_bytes(b"old")

    def broken(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken)
    with pytest.raises(RuntimeError):
        draw_align_plot(load_points(run_dir), load_gate(run_dir), out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name != "run"] == ["plot.png"]


def test_line_separators_inside_strings_are_not_line_breaks(tmp_path):
    path = tmp_path / "s.jsonl"
    record = {"step": 2, "mu": 0.5, "sigma": 0.5, "regime": "pg", "responses": ["a\u2028b\x85c\x1cd"]}
    path.write_text(json.dumps(record, ensure_ascii=False) + "\r\n" + "{bad\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2:"):
        load_points(path)
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_points(path)[0]["responses"] == record["responses"]
