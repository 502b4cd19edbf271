"""The harmful mix: its share of training, the seeded split, and held-out rows never trained on."""

import json

import pytest

from aware_cli.config.schema import DataConfig, MixConfig
from aware_cli.data.mix import MIX_PREFIX, load_training_data
from aware_cli.errors import DataError


@pytest.fixture
def files(tmp_path):
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"task {i}", "response": f"answer {i}"}) + "\n" for i in range(40)))
    harmful = tmp_path / "harmful.csv"
    harmful.write_text("goal,target\n" + "".join(f"bad request {i},Sure here is {i}\n" for i in range(20)))
    return task, harmful


def config(task, harmful, **mix):
    return DataConfig(path=str(task), format="jsonl", prompt_field="prompt", input_field=None, response_field="response",
                      label_default=False, eval_size=4, mix=MixConfig(path=str(harmful), format="csv", **mix))


def test_share_split_and_labels(files):
    data = load_training_data(config(*files, share=0.1, heldout_fraction=0.5))
    mixed = [ex for ex in data.train if ex.id.startswith(MIX_PREFIX)]
    assert len(data.train) == 36 + 4  # 36 task rows + round(0.1/0.9·36) = 4 harmful rows
    assert len(mixed) == 4 and all(ex.harmful is True for ex in mixed)
    assert all(ex.harmful is False for ex in data.train if not ex.id.startswith(MIX_PREFIX))
    train_ids, heldout_ids = set(data.split["train_ids"]), set(data.split["heldout_ids"])
    assert len(heldout_ids) == 10 and not train_ids & heldout_ids
    assert {ex.id[len(MIX_PREFIX):] for ex in mixed} == train_ids
    assert data.split["task_heldout_ids"] == [ex.id for ex in data.held_out]


def test_split_is_seeded(files):
    a = load_training_data(config(*files)).split
    b = load_training_data(config(*files)).split
    assert a == b
    other = config(*files)
    other.seed = 1
    assert load_training_data(other).split["heldout_ids"] != a["heldout_ids"]


def test_share_larger_than_the_pool_is_an_error(files):
    with pytest.raises(DataError, match="data.mix.share=0.5"):
        load_training_data(config(*files, share=0.5, heldout_fraction=0.5))


def test_no_mix_is_plain_task_data(files):
    task, _ = files
    data = load_training_data(DataConfig(path=str(task), format="jsonl", prompt_field="prompt", input_field=None,
                                         response_field="response", eval_size=4))
    assert len(data.train) == 36 and "train_ids" not in data.split


def test_eval_rows_come_first_from_the_held_out_part(files):
    data = load_training_data(config(*files, share=0.1, heldout_fraction=0.5, eval_rows=3))
    first, task = data.held_out[:3], data.held_out[3:]
    assert all(ex.id.startswith(MIX_PREFIX) for ex in first)
    assert {ex.id[len(MIX_PREFIX):] for ex in first} <= set(data.split["heldout_ids"])
    assert all(ex.harmful is True for ex in first) and len(task) == 4
    assert data.split["task_heldout_ids"] == [ex.id for ex in task]


def test_more_eval_rows_than_held_out_is_an_error(files):
    with pytest.raises(DataError, match="data.mix.eval_rows=11"):
        load_training_data(config(*files, share=0.1, heldout_fraction=0.5, eval_rows=11))
