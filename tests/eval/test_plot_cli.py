"""`aware align-plot` and `aware calibrate` from the CLI, on a run and on a model before training."""

import json
import struct

from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.eval.align_plot import load_points, plot_data

MIXED = ["verifier=python", "verifier.target=tests/fixtures/verifiers.py:by_prompt_parity", "k=4"]


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_align_plot_of_a_run(tmp_path, in_project_root):
    run = tmp_path / "run"
    assert invoke("train", "recipe=smoke", f"output_dir={run}", *MIXED, "trainer.max_steps=2", "eval.every=0",
                  "trainer.batch_size=4").exit_code == 0
    result = invoke("align-plot", f"run={run}")
    assert result.exit_code == 0, result.output
    width, height = png_size(run / "align_plot.png")
    assert width >= 800 and height >= 500
    records = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    data = plot_data(load_points(run))
    assert list(data.mu) == [r["mu"] for r in records] and list(data.sigma) == [r["sigma"] for r in records]
    assert invoke("align-plot", f"run={run}", f"out={tmp_path / 'a.svg'}").exit_code == 0
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")


def test_align_plot_before_training_and_calibrate(tmp_path, in_project_root):
    out = tmp_path / "before" / "plot.png"
    result = invoke("align-plot", "recipe=smoke", *MIXED, "limit=8", f"out={out}")
    assert result.exit_code == 0, result.output
    png_size(out)
    points = [json.loads(line) for line in (out.parent / "points.jsonl").read_text().splitlines()]
    assert len(points) == 8 and all(0 <= p["mu"] <= 1 for p in points)

    gate_file = tmp_path / "fitted.yaml"
    result = invoke("calibrate", f"points={out.parent / 'points.jsonl'}", "recipe=smoke", "method=shares",
                    "abstain_share=0.25", "pg_share=0.25", f"out={gate_file}")
    assert result.exit_code == 0, result.output
    assert compose("smoke", [f"gate={gate_file}"]).config.gate.mode == "soft"
    png_size(gate_file.with_suffix(".png"))


def test_plot_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["align-plot", f"run={tmp_path}"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["align-plot", f"run={tmp_path}", "format=gif"])
    assert result.exit_code == 2 and "png or svg" in result.stderr
