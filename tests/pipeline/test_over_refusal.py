"""gate.over_refusal_penalty end to end: a run logs which inputs got the over-refusal term and trains on it."""

import json

from typer.testing import CliRunner

from aware_cli.cli import app


def _run(out, *extra):
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", "verifier=harm", "eval.every=0",
                                      "gate.min_weight=0", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]
    return [m for m in metrics if "frac_over_refusal" in m], records


def test_benign_inputs_get_the_over_refusal_term_only_when_asked(tmp_path, in_project_root):
    # Alpaca prompts are benign to the request head: refusing them scores far below the (random) samples' mean
    on, records = _run(tmp_path / "on", "gate.over_refusal_penalty=1.0")
    weighted = [r for r in records if r.get("over_refusal_weight")]
    assert on and sum(m["frac_over_refusal"] for m in on) > 0 and weighted
    assert all(0.0 < r["over_refusal_weight"] <= 1.0 and r["target"] != "refusal" for r in weighted)
    assert all(r["mu"] - r["refusal_score"] >= 0.2 for r in weighted)  # the margin
    off, records = _run(tmp_path / "off")
    assert all(m["frac_over_refusal"] == 0 for m in off) and not any("over_refusal_weight" in r for r in records)
    # the extra term changes the loss: same seed, same batches and samples
    assert [m["loss"] for m in on] != [m["loss"] for m in off]
