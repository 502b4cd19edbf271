"""gate.over_refusal_penalty end to end: a run logs which inputs got the over-refusal term and trains on it."""

from _runs import BENIGN_ANCHORS, HARMFUL_ANCHORS, train_with_curated_anchors


def _run(out, *extra):
    anchors = {**{p: "harmful" for p in HARMFUL_ANCHORS}, **{p: "benign" for p in BENIGN_ANCHORS}}
    return train_with_curated_anchors(out, anchors, "gate.min_weight=0", "data.anchors.per_step=2", *extra)


def test_benign_inputs_get_the_over_refusal_term_only_when_asked(tmp_path, in_project_root):
    # Alpaca prompts and the benign anchors: refusing them scores far below the (random) samples' mean; the
    # harmful anchors abstain (the tiny model never refuses).
    records, on = _run(tmp_path / "on", "gate.over_refusal_penalty=1.0", "gate.over_refusal_on=all",
                       "gate.tau_sigma=1.0")
    flagged = [r for r in records if r.get("over_refusal_gap")]
    assert on and sum(m["frac_over_refusal"] for m in on) > 0 and flagged
    assert all(r["target"] != "refusal" and r["mu"] - r["refusal_score"] >= 0.2 for r in flagged)  # the margin
    assert any(r["target"] == "refusal" for r in records)
    records, off = _run(tmp_path / "off", "gate.tau_sigma=1.0")
    assert all(m["frac_over_refusal"] == 0 for m in off) and not any("over_refusal_gap" in r for r in records)
    # the term is in the loss (same seed, batches and samples; it only adds non-negative terms)
    assert on[0]["loss"] > off[0]["loss"]


def test_by_default_only_curated_benign_rows_get_the_term(tmp_path, in_project_root):
    records, _ = _run(tmp_path / "curated", "gate.over_refusal_penalty=1.0", "gate.tau_sigma=1.0")
    flagged = [r for r in records if r.get("over_refusal_gap")]
    assert flagged and all(r["id"].startswith("anchor-") and r["prompt"] in BENIGN_ANCHORS for r in flagged)
