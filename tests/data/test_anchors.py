"""Safety anchors: which rows a step uses, and a run that adds them to every batch."""

import json

from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config.schema import AnchorsConfig, DataConfig
from aware_cli.data.anchors import anchors_for_step, load_anchors, used_anchors


def test_anchor_schedule_is_a_pure_function_of_the_step():
    first_epoch = [i for step in range(5) for i in anchors_for_step(step, 10, 2, seed=0)]
    assert sorted(first_epoch) == list(range(10))  # every anchor once per epoch
    assert anchors_for_step(3, 10, 2, 0) == anchors_for_step(3, 10, 2, 0)
    assert [i for step in range(5, 10) for i in anchors_for_step(step, 10, 2, 0)] != first_epoch
    assert used_anchors(10, 2, 3, 0) == [i for step in range(3) for i in anchors_for_step(step, 10, 2, 0)]


def test_a_run_adds_anchors_to_every_step(tmp_path, in_project_root):
    rows = tmp_path / "anchors.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Tell me about topic number {i}.", "split": "train",
                                        "label": "benign" if i % 2 else "harmful"}) + "\n" for i in range(7))
                    + json.dumps({"prompt": "never used", "split": "heldout", "label": "benign"}) + "\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", f"data.anchors.path={rows}",
                                      "data.anchors.per_step=2", "data.anchors.max_new_tokens=4", "eval.every=0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    answers = json.loads((out / "anchors.json").read_text())
    assert len(answers) == 6 and all(key.startswith("anchor-") for key in answers)  # 3 steps × 2, no held-out row
    assert "anchor-7" not in answers
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for step in (1, 2, 3):
        ids = [r["id"] for r in records if r["step"] == step]
        assert len(ids) == 4 and sum(i.startswith("anchor-") for i in ids) == 2  # batch 2 + 2 anchors
    sft = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={tmp_path / 'sft'}", "objective=sft",
                                   f"data.anchors.path={rows}", "data.anchors.per_step=2", "eval.every=0"],
                             catch_exceptions=False)
    assert sft.exit_code == 0 and not (tmp_path / "sft" / "anchors.json").exists()  # sft samples nothing: no anchors


def test_anchor_labels_reach_the_verifier_only_when_curated(tmp_path):
    rows = tmp_path / "anchors.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"prompt {i}", "split": "train",
                                        "label": "benign" if i % 2 else "harmful"}) + "\n" for i in range(4)))
    plain = load_anchors(AnchorsConfig(path=str(rows), per_step=1), DataConfig())
    assert [ex.harmful for ex in plain] == [None] * 4 and not any("curated_label" in ex.meta for ex in plain)
    curated = load_anchors(AnchorsConfig(path=str(rows), per_step=1, label_field="label"), DataConfig())
    by_prompt = {ex.prompt: ex for ex in curated}
    assert [by_prompt[f"prompt {i}"].harmful for i in range(4)] == [True, False, True, False]
    assert all(ex.meta["curated_label"] is True and ex.id.startswith("anchor-") for ex in curated)
