"""BioInstruct (Alpaca layout, not shipped): the data group reads it, a missing file says how to get it."""

import json
from pathlib import Path

from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.data import load_examples

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bioinstruct" / "bioinstruct_sample.json"
# The tiny model, 2 steps, k=2 and short lengths: seconds on CPU.
TINY = ["model=tiny", "trainer=smoke", "trainer.max_steps=2", "k=2", "data.eval_size=2",
        "sampling.max_new_tokens=8", "eval.max_new_tokens=8", "eval.max_prompts=2"]


def aware(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def data_config(path):
    cfg = compose("bioinstruct", [f"data.path={path}"]).config.data
    cfg.shuffle = False  # file order, to check rows one by one
    return cfg


def test_recipe_reads_the_fixture_into_examples():
    examples = load_examples(data_config(FIXTURE))
    rows = json.loads(FIXTURE.read_text())
    assert len(examples) == len(rows) == 7
    assert [ex.id for ex in examples] == [str(i) for i in range(7)]
    # empty input: the instruction alone; otherwise instruction, blank line, input
    assert examples[0].prompt == "Explain in one sentence what an HbA1c test measures."
    assert examples[1].prompt == ("Identify the drug class of the medication mentioned in the note.\n\n"
                                  "Patient started on lisinopril 10 mg daily for hypertension.")
    assert examples[1].response == "Lisinopril is an ACE inhibitor."
    assert [ex.response for ex in examples] == [row["output"] for row in rows]
    assert all(ex.harmful is False for ex in examples)


def test_json_lines_layout_reads_the_same(tmp_path):
    jsonl = tmp_path / "bioinstruct.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in json.loads(FIXTURE.read_text())))
    as_list = load_examples(data_config(FIXTURE))
    as_lines = load_examples(data_config(jsonl))
    assert [(ex.prompt, ex.response) for ex in as_lines] == [(ex.prompt, ex.response) for ex in as_list]


def test_validate_needs_no_file():
    result = aware("validate", "recipe=bioinstruct")
    assert result.exit_code == 0, result.output
    assert "biomed_instruct_25k.json" in result.output


def test_missing_file_is_one_line_naming_data_path_and_where_to_get_it(tmp_path, in_project_root):
    result = aware("train", "recipe=bioinstruct", *TINY, f"output_dir={tmp_path / 'run'}",
                   f"data.path={tmp_path / 'absent.json'}")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "\n" not in message
    assert message.startswith("error: data.path: file not found:") and "absent.json" in message
    assert "huggingface.co/datasets/bio-nlp-umass/bioinstruct" in message


def test_recipe_trains_on_the_fixture(tmp_path, in_project_root):
    out = tmp_path / "run"
    result = aware("train", "recipe=bioinstruct", *TINY, f"data.path={FIXTURE}", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    assert (out / "final" / "adapter_model.safetensors").is_file()
    prompts = {json.loads(line)["prompt"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert prompts <= {ex.prompt for ex in load_examples(data_config(FIXTURE))}
