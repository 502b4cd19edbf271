"""sampling.k_first: two-stage sampling draws the rest of the k samples only for inputs the first draw leaves open."""

from _runs import HARMFUL_ANCHORS, train_with_curated_anchors

from aware_cli.config import compose
from aware_cli.pipeline.objectives import get_objective
from aware_cli.pipeline.step import two_stage_first


def _train(tmp_path, name, *extra):
    return train_with_curated_anchors(tmp_path / name, {p: "harmful" for p in HARMFUL_ANCHORS}, "k=4",
                                      "data.anchors.per_step=1", *extra)


def test_settled_inputs_stop_after_the_first_draw(tmp_path, in_project_root):
    records, metrics = _train(tmp_path, "two", "sampling.k_first=2")
    sizes = {len(r["responses"]) for r in records}
    assert sizes == {2, 4}  # some inputs settled after 2 samples, the others got all 4
    for r in records:
        if len(r["responses"]) == 2:  # settled: plain SFT on y*, nothing left for the PG term
            assert r["regime"] == "sft" and r["target"] != "refusal"
    assert all(len(r["scores"]) == len(r["responses"]) for r in records)
    assert any(len(r["responses"]) == 4 for r in records if r["id"].startswith("anchor-"))  # abstaining: all k
    one, one_metrics = _train(tmp_path, "one")
    assert {len(r["responses"]) for r in one} == {4}
    assert sum(m["generated"] for m in metrics) < sum(m["generated"] for m in one_metrics)


def test_two_stage_applies_only_where_it_can():
    aware, sft = get_objective("aware"), get_objective("pg")
    cfg = compose("smoke", ["k=4", "sampling.k_first=2"]).config
    assert two_stage_first(cfg, aware, sharded=False) == 2
    assert two_stage_first(cfg, aware, sharded=True) == 4  # fsdp2: every rank runs the same passes
    assert two_stage_first(cfg, sft, sharded=False) == 4  # pg's gate never settles an input
    assert two_stage_first(compose("smoke", ["k=4", "sampling.k_first=4"]).config, aware, sharded=False) == 4
    assert two_stage_first(compose("smoke", ["k=4"]).config, aware, sharded=False) == 4
