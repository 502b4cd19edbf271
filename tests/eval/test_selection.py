"""Which benchmark rows an evaluation sees: data.where filters, and `limit` as a stratified seeded sample."""

import collections
import json

import pytest

from aware_cli.config import compose
from aware_cli.config.schema import DataConfig, EvalRunConfig
from aware_cli.data import Example, load_examples
from aware_cli.errors import DataError
from aware_cli.eval.runner import select_examples, stratified_sample


def typed(counts):
    kinds = [t for t, n in counts.items() for _ in range(n)]
    return [Example(id=str(i), prompt=f"p{i}", response="", meta={"columns": {"type": t}}) for i, t in enumerate(kinds)]


@pytest.mark.parametrize("limit", [1, 3, 10, 40, 85])
def test_stratified_sample_keeps_proportions_and_every_stratum(limit):
    rows = typed({"a": 50, "b": 30, "c": 5, "d": 1})
    chosen = stratified_sample(rows, limit, "type", seed=0)
    counts = collections.Counter(ex.meta["columns"]["type"] for ex in chosen)
    assert len(chosen) == limit and len({ex.id for ex in chosen}) == limit
    if limit >= 4:
        assert set(counts) == {"a", "b", "c", "d"}  # every type, even the one-row one
    for kind, size in {"a": 50, "b": 30}.items():
        assert abs(counts[kind] - limit * size / 86) <= 1.5 + (limit < 4)
    assert [int(ex.id) for ex in chosen] == sorted(int(ex.id) for ex in chosen)  # the data's own order
    assert stratified_sample(rows, limit, "type", seed=0) == chosen and stratified_sample(rows, 200, "type", 0) == rows


def test_xstest_limit_covers_every_type_not_the_first_rows():
    cfg = compose("xstest", ["limit=36"], schema=EvalRunConfig, subdir="eval").config
    chosen = select_examples(cfg)
    types = collections.Counter(ex.meta["columns"]["type"] for ex in chosen)
    assert len(chosen) == 36 and len(types) == 18  # 18 types × 25 prompts: two of each
    labels = collections.Counter(ex.harmful for ex in chosen)
    assert labels[False] == 20 and labels[True] == 16  # 250 safe : 200 unsafe


def test_data_where_keeps_matching_rows_with_their_source_ids(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "split": "heldout" if i % 3 else "train",
                                        "label": "benign" if i % 2 else "harmful"}) + "\n" for i in range(12)))
    cfg = DataConfig(path=str(path), format="jsonl", prompt_field="prompt", input_field=None, response_field=None,
                     shuffle=False, eval_size=0, where={"split": "heldout", "label": ["benign"]})
    kept = load_examples(cfg)
    assert [ex.id for ex in kept] == ["1", "5", "7", "11"]
    bad = DataConfig(path=str(path), format="jsonl", prompt_field="prompt", input_field=None, response_field=None,
                     eval_size=0, where={"splitt": "heldout"})
    with pytest.raises(DataError, match="data.where names column 'splitt'"):
        load_examples(bad)
