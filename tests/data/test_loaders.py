"""load_examples / split_examples on tiny hand-written files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aware_cli.config.schema import DataConfig
from aware_cli.data import Example, load_examples, split_examples
from aware_cli.errors import DataError


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def load(path: Path, **overrides) -> list[Example]:
    """Load in file order unless a test asks for shuffling."""
    return load_examples(DataConfig(path=str(path), **{"shuffle": False, **overrides}))


def data_error(path: Path, **overrides) -> str:
    with pytest.raises(DataError) as info:
        load(path, **overrides)
    message = str(info.value)
    assert "\n" not in message, "DataError messages must be one line"
    return message


ALPACA_ROWS = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate to English.", "input": "bonjour", "output": "hello"},
]


# ---------------------------------------------------------------- formats


def test_alpaca_json_appends_input_after_a_blank_line(tmp_path):
    examples = load(write_json(tmp_path / "alpaca.json", ALPACA_ROWS))
    assert [(e.id, e.prompt, e.response) for e in examples] == [
        ("0", "Add 2 and 3.", "5"),
        ("1", "Translate to English.\n\nbonjour", "hello"),
    ]
    assert examples[0].harmful is None
    assert examples[0].meta["source"] == str(tmp_path / "alpaca.json")


def test_alpaca_without_input_field_ignores_the_input_column(tmp_path):
    examples = load(write_json(tmp_path / "alpaca.json", ALPACA_ROWS), input_field=None)
    assert [e.prompt for e in examples] == ["Add 2 and 3.", "Translate to English."]


def test_alpaca_rows_also_load_from_jsonl_with_explicit_format(tmp_path):
    examples = load(write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS), format="alpaca")
    assert [e.response for e in examples] == ["5", "hello"]


def test_messages_jsonl_takes_last_user_turn_and_final_answer(tmp_path):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    prompt_only = [{"role": "user", "content": "Name a colour."}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation}, {"messages": prompt_only}])
    first, second = load(path)  # format auto: detected from the "messages" column
    assert (first.prompt, first.response) == ("Capital of France?", "Paris.")
    assert first.meta["history"] == conversation[:3]
    assert (second.prompt, second.response, second.meta["history"]) == ("Name a colour.", "", [])


def test_csv_with_custom_fields_keeps_text_as_written(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text(
        'question,context,answer,topic\n'
        '"Sum, please",1 + 1,2,maths\n'
        'Spell it,NA,"N, A",letters\n'
        '"Two\nlines",,ok,misc\n',
        encoding="utf-8",
    )
    examples = load(path, prompt_field="question", input_field="context", response_field="answer")
    assert [(e.prompt, e.response) for e in examples] == [
        ("Sum, please\n\n1 + 1", "2"),
        ("Spell it\n\nNA", "N, A"),  # "NA" stays text, not a missing value
        ("Two\nlines", "ok"),
    ]
    assert examples[0].meta["columns"] == {"topic": "maths"}


def test_hf_format_reads_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ALPACA_ROWS)
    examples = load(folder, format="hf")
    assert [e.response for e in examples] == ["5", "hello"]
    relative = DataConfig(path="my_dataset", format="hf", shuffle=False)
    assert [e.response for e in load_examples(relative, base_dir=tmp_path)] == ["5", "hello"]


def test_relative_path_is_resolved_against_base_dir(tmp_path):
    write_json(tmp_path / "alpaca.json", ALPACA_ROWS)
    cfg = DataConfig(path="alpaca.json", shuffle=False)
    assert len(load_examples(cfg, base_dir=tmp_path)) == 2


# ---------------------------------------------------------------- labels, shuffle, limit, split


def labelled_rows(labels: list) -> list[dict]:
    return [{"instruction": f"q{i}", "output": "a", "is_harmful": label} for i, label in enumerate(labels)]


def test_text_labels_harmful_when_truthy(tmp_path):
    path = write_jsonl(tmp_path / "text.jsonl", labelled_rows(["1", "0", "unsafe", "safe", "true", "", "Harmful"]))
    examples = load(path, label_field="is_harmful")
    assert [e.harmful for e in examples] == [True, False, True, False, True, False, True]


def test_boolean_labels(tmp_path):
    path = write_jsonl(tmp_path / "bools.jsonl", labelled_rows([True, False, None]))
    assert [e.harmful for e in load(path, label_field="is_harmful")] == [True, False, False]


def test_csv_labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("prompt,response,label\na,x,unsafe\nb,y,safe\nc,z,1\n", encoding="utf-8")
    examples = load(path, prompt_field="prompt", response_field="response", label_field="label")
    assert [e.harmful for e in examples] == [True, False, True]


def twenty_rows(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "twenty.jsonl", [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)])


def test_shuffle_is_deterministic_per_seed(tmp_path):
    path = twenty_rows(tmp_path)
    ids = lambda seed: [e.id for e in load(path, shuffle=True, seed=seed)]  # noqa: E731
    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert sorted(ids(0), key=int) == [str(i) for i in range(20)]
    assert ids(0) != [str(i) for i in range(20)]


def test_ids_follow_the_source_row_not_the_shuffled_position(tmp_path):
    for example in load(twenty_rows(tmp_path), shuffle=True, seed=3):
        assert example.prompt == f"q{example.id}"


def test_limit_applies_after_shuffling(tmp_path):
    path = twenty_rows(tmp_path)
    shuffled = [e.id for e in load(path, shuffle=True, seed=5)]
    assert [e.id for e in load(path, shuffle=True, seed=5, limit=4)] == shuffled[:4]
    assert [e.id for e in load(path, limit=3)] == ["0", "1", "2"]


def test_split_takes_eval_rows_first():
    examples = [Example(id=str(i), prompt=f"q{i}", response="a") for i in range(5)]
    train, evaluation = split_examples(examples, 2)
    assert [e.id for e in evaluation] == ["0", "1"]
    assert [e.id for e in train] == ["2", "3", "4"]
    train, evaluation = split_examples(examples, 0)
    assert (len(train), evaluation) == (5, [])


def test_split_refuses_to_leave_no_training_rows():
    examples = [Example(id=str(i), prompt="q", response="a") for i in range(3)]
    with pytest.raises(DataError, match=r"data\.eval_size \(3\) >= number of rows \(3\)"):
        split_examples(examples, 3)


# ---------------------------------------------------------------- errors


def test_missing_file_names_the_absolute_path(tmp_path):
    message = data_error(tmp_path / "nowhere" / "train.json")
    assert message == f"data.path: file not found: {tmp_path / 'nowhere' / 'train.json'}"


def test_missing_relative_file_with_extension_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_examples(DataConfig(path="org/train.jsonl"), base_dir=tmp_path)


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n'
                    '{"instruction": "e" "output": "f"}\n', encoding="utf-8")
    message = data_error(path)
    assert "data.jsonl:3:" in message
    assert "not valid JSON (Expecting ',' delimiter" in message


def test_bad_json_document_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c", "output": }\n]\n')
    assert "data.json:3: not valid JSON" in data_error(path)


def test_csv_row_with_extra_fields_names_the_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    assert "data.csv:3: expected 2 fields like the header, found 3" in data_error(path)


def test_missing_field_names_field_row_and_present_fields(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"instruction": "a", "output": "b"},
        {"instruction": "c", "output": "d"},
        {"instruction": "e", "answer": "f"},
    ])
    message = data_error(path)
    assert "data.jsonl:3 (row 3): missing field 'output'" in message
    assert "fields present: instruction, answer" in message


def test_missing_field_in_a_json_document_names_the_row(tmp_path):
    path = write_json(tmp_path / "data.json", [{"goal": "a", "target": "b"}])
    message = data_error(path)
    assert "data.json row 1: missing field 'instruction' (fields present: goal, target)" in message


def test_missing_label_column_is_an_error(tmp_path):
    path = write_json(tmp_path / "data.json", ALPACA_ROWS)
    assert "missing field 'harmful'" in data_error(path, label_field="harmful")


def test_empty_prompt_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"instruction": " ", "output": "b"}])
    assert "data.jsonl:1 (row 1): field 'instruction' is empty" in data_error(path)


@pytest.mark.parametrize("name,content", [("empty.jsonl", ""), ("blank.json", "\n  \n"), ("list.json", "[]"),
                                          ("header.csv", "instruction,output\n")])
def test_file_without_rows_has_no_usable_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert data_error(path) == f"data.path: {path} has no usable rows"


def test_chat_row_without_user_turn_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "assistant", "content": "Hi"}]}])
    assert "chat.jsonl:1 (row 1): field 'messages' has no user message" in data_error(path)


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n')
    assert "latin1.jsonl:2: not valid UTF-8" in data_error(path)
