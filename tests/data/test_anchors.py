"""Safety anchors: which rows a step uses, and a run that adds them to every batch."""

import json

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config.schema import AnchorsConfig, DataConfig
from aware_cli.data.anchors import anchors_for_step, load_anchors, used_anchors
from aware_cli.errors import DataError


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


def test_paired_schedule_takes_whole_pairs():
    steps = [anchors_for_step(step, 12, 4, seed=0, unit=2) for step in range(3)]  # 6 pairs, 2 a step
    assert sorted(i for step in steps for i in step) == list(range(12))  # every pair once per epoch
    for step in steps:
        assert [i % 2 for i in step] == [0, 1, 0, 1] and step[1] == step[0] + 1 and step[3] == step[2] + 1
    assert anchors_for_step(4, 10, 2, 0, unit=1) == anchors_for_step(4, 10, 2, 0)  # unit 1: the unpaired schedule
    assert used_anchors(12, 4, 3, 0, unit=2) == [i for step in steps for i in step]


def _grouped_rows(tmp_path):
    rows = tmp_path / "anchors.jsonl"
    table = [("a", "harmful"), ("a", "benign"), ("a", "harmful"), ("a", "benign"), ("a", "benign"),
             ("b", "harmful"), ("b", "benign"), ("c", "harmful"), ("c", "harmful"), ("d", "benign")]
    rows.write_text("".join(json.dumps({"prompt": f"{group} {label} {i}", "group": group, "label": label,
                                        "split": "train"}) + "\n" for i, (group, label) in enumerate(table)))
    return rows


def test_paired_anchors_are_one_harmful_and_one_benign_request_on_a_subject(tmp_path):
    rows = _grouped_rows(tmp_path)
    anchors = load_anchors(AnchorsConfig(path=str(rows), per_step=2, label_field="label", pair_field="group"),
                           DataConfig())
    assert len(anchors) == 6  # a: 2 pairs (a benign left over), b: 1; c and d lack a label: left out
    pairs = [anchors[i:i + 2] for i in range(0, len(anchors), 2)]
    assert [(h.harmful, b.harmful) for h, b in pairs] == [(True, False)] * 3
    assert all(h.meta["columns"]["group"] == b.meta["columns"]["group"] for h, b in pairs)
    assert sorted(h.meta["columns"]["group"] for h, _ in pairs) == ["a", "a", "b"]


def test_pairing_needs_labels_and_an_even_count(tmp_path):
    rows = _grouped_rows(tmp_path)
    with pytest.raises(DataError, match="needs data.anchors.label_field"):
        load_anchors(AnchorsConfig(path=str(rows), per_step=2, pair_field="group"), DataConfig())
    with pytest.raises(DataError, match="must be even"):
        load_anchors(AnchorsConfig(path=str(rows), per_step=3, label_field="label", pair_field="group"), DataConfig())
    with pytest.raises(DataError, match="only 3 harmful/benign pairs"):
        load_anchors(AnchorsConfig(path=str(rows), per_step=8, label_field="label", pair_field="group"), DataConfig())


def test_a_paired_run_takes_a_harmful_and_a_benign_anchor_on_one_subject_each_step(tmp_path, in_project_root):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}", f"data.anchors.path={_grouped_rows(tmp_path)}",
                                      "data.anchors.per_step=2", "data.anchors.label_field=label",
                                      "data.anchors.pair_field=group", "data.anchors.max_new_tokens=4", "eval.every=0"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    prompts = {r["id"]: r["prompt"] for r in records}
    for step in (1, 2, 3):
        ids = sorted({r["id"] for r in records if r["step"] == step and r["id"].startswith("anchor-")})
        assert len(ids) == 2
        first, second = (prompts[i].split()[:2] for i in ids)
        assert first[0] == second[0] and {first[1], second[1]} == {"harmful", "benign"}


def test_anchors_never_come_from_a_held_out_split(tmp_path):
    rows = tmp_path / "anchors.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"prompt {i}", "split": "heldout" if i else "train",
                                        "label": "benign"}) + "\n" for i in range(3)))
    with pytest.raises(DataError, match="held-out split 'heldout'"):  # a `where` that dropped split=train
        load_anchors(AnchorsConfig(path=str(rows), per_step=1, where={}), DataConfig())
    assert len(load_anchors(AnchorsConfig(path=str(rows), per_step=1), DataConfig())) == 1
