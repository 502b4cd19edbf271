"""Preference objectives (DPO, GAPO, ShaPO, saliency, constrained SFT) on a tiny random Llama + LoRA."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from aware_cli.errors import DataError
from aware_cli.data import builtin
from aware_cli.models.logprobs import mean_logprob, token_logprobs
from aware_cli.data.preference import load_preference_pairs
from aware_cli.pipeline.objectives import (Pair, constrained_sft_loss, dpo_loss, gapo_loss, gapo_weights, pair_logprobs,
                                           pairs_from_groups, reference_logprobs, saliency_mask, shapo_loss)

PAD = 0
CPU = torch.device("cpu")
PAIRS = [Pair([5, 6, 7], [20, 21, 22], [30, 31]),
         Pair([8, 9], [40], [41, 42, 43]),
         Pair([10, 11, 12, 13], [24, 25], [26, 27]),
         Pair([14], [33, 34, 35, 36], [37])]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                         initializer_range=0.3, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models():
    """(LoRA-wrapped policy, an untouched copy of its base model)."""
    base = _tiny_llama()
    base_copy = copy.deepcopy(base)
    policy = get_peft_model(base, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:  # B starts at 0; make the adapter matter
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    policy.eval()
    return policy, base_copy


@pytest.fixture
def policy(models):
    model = models[0]
    model.zero_grad(set_to_none=True)
    yield model
    model.zero_grad(set_to_none=True)


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def snapshot(params):
    return [p.detach().clone() for p in params]


def grads(params):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def assert_same_grads(got, want, atol=1e-6, rtol=1e-4):
    assert any(g.abs().sum() > 0 for g in want)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=atol, rtol=rtol), (g - w).abs().max()


def perturbed_copy(model, step):
    """A deep copy of `model` with `step[i]` added to its i-th trainable parameter."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p, d in zip(trainable(twin), step):
            p.add_(d)
    return twin


# ---------------------------------------------------------------------------- log-probs and DPO


def test_pair_logprobs_sum_and_mean_of_response_tokens(policy):
    with torch.no_grad():
        chosen, rejected = pair_logprobs(policy, PAIRS, PAD, CPU)
        chosen_mean, _ = pair_logprobs(policy, PAIRS, PAD, CPU, length_normalized=True)
        logp, mask = token_logprobs(policy, [p.prompt for p in PAIRS], [p.rejected for p in PAIRS], PAD, CPU)
    assert rejected.tolist() == pytest.approx(logp.sum(-1).tolist(), abs=1e-5)
    lengths = torch.tensor([len(p.chosen) for p in PAIRS], dtype=torch.float32)
    assert chosen_mean.tolist() == pytest.approx((chosen / lengths).tolist(), abs=1e-5)


def test_dpo_is_log2_at_equal_policy_and_reference_and_matches_hand_value():
    lp = torch.tensor([-3.0, -1.5, -7.0])
    loss, info = dpo_loss(lp, lp - 1.0, lp, lp - 1.0, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert info["reward_margin"] == 0.0 and info["accuracy"] == 0.0

    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -1.5])
    # z = 0.5·((pc−rc) − (pr−rr)) = [0.5·(0.5+1), 0.5·(0−0.5)] = [0.75, −0.25]
    loss, info = dpo_loss(pc, pr, rc, rr, beta=0.5)
    expected = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(0.25))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert info["reward_margin"] == pytest.approx(0.25) and info["accuracy"] == 0.5
    smoothed, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    expected_s = sum(0.9 * math.log1p(math.exp(-z)) + 0.1 * math.log1p(math.exp(z)) for z in (0.75, -0.25)) / 2
    assert smoothed.item() == pytest.approx(expected_s, abs=1e-6)


def test_reference_logprobs_is_the_base_model_without_grad(models, policy):
    base = models[1]
    with torch.no_grad():
        want_c, want_r = pair_logprobs(base, PAIRS, PAD, CPU)
        policy_c, _ = pair_logprobs(policy, PAIRS, PAD, CPU)
    ref_c, ref_r = reference_logprobs(policy, PAIRS, PAD, CPU)
    assert not ref_c.requires_grad and not ref_r.requires_grad
    assert ref_c.tolist() == pytest.approx(want_c.tolist(), abs=1e-5)
    assert ref_r.tolist() == pytest.approx(want_r.tolist(), abs=1e-5)
    assert (policy_c - ref_c).abs().max() > 1e-3  # the adapter is on outside the context
    with pytest.raises(ValueError, match="PeftModel"):
        reference_logprobs(base, PAIRS, PAD, CPU)


# ---------------------------------------------------------------------------- GAPO


def test_gapo_rho0_is_log2_with_dpo_gradient_against_detached_self(policy):
    params = trainable(policy)
    loss, info = gapo_loss(policy, PAIRS, PAD, CPU, params, beta=0.5, rho=0.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert info["gap_mean"] == 0.0 and info["weight_min"] == info["weight_max"] == pytest.approx(1.0)
    loss.backward()
    got = grads(params)
    policy.zero_grad(set_to_none=True)
    c, r = pair_logprobs(policy, PAIRS, PAD, CPU)
    dpo, _ = dpo_loss(c, r, c.detach(), r.detach(), beta=0.5)
    dpo.backward()
    assert_same_grads(got, grads(params))


def test_gapo_weights_average_one_and_decrease_with_the_gap():
    gap = torch.tensor([0.0, 0.5, 2.0, -1.0])
    for weighting in ("softmax", "sigmoid"):
        w = gapo_weights(gap, weight_temperature=0.5, weighting=weighting)
        assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
        order = torch.argsort(gap)
        assert (w[order][1:] < w[order][:-1]).all()
    assert gapo_weights(gap, weighting="softmax").tolist() == pytest.approx(
        (torch.softmax(-gap, 0) * 4).tolist())
    assert gapo_weights(gap, weighting="none").tolist() == [1.0] * 4
    with pytest.raises(ValueError):
        gapo_weights(gap, weighting="bogus")


def test_gapo_matches_a_by_hand_anchor_and_restores_params_exactly(policy):
    beta, rho, temp = 0.5, 0.5, 0.5
    params = trainable(policy)
    before = snapshot(params)
    loss, info = gapo_loss(policy, PAIRS, PAD, CPU, params, beta=beta, rho=rho, weight_temperature=temp)
    loss.backward()
    got = grads(params)
    assert all(torch.equal(p, q) for p, q in zip(params, before))  # bit-exact restore
    policy.zero_grad(set_to_none=True)

    # By hand: g of the reference-free pair loss, anchor = a perturbed deep copy.
    c, r = pair_logprobs(policy, PAIRS, PAD, CPU)
    margin = c - r
    g = torch.autograd.grad(-F.logsigmoid(beta * margin).mean(), params, retain_graph=True)
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    anchor_model = perturbed_copy(policy, [rho * x / norm for x in g])
    with torch.no_grad():
        ac, ar = pair_logprobs(anchor_model, PAIRS, PAD, CPU)
    anchor = ac - ar
    gap = (margin - anchor).detach()
    w = torch.softmax(-gap / temp, 0) * len(PAIRS)
    expected = (w * -F.logsigmoid(beta * (margin - anchor))).mean()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert info["gap_mean"] == pytest.approx(gap.mean().item(), abs=1e-6)
    assert info["gap_mean"] > 0  # the ascent step lowers the margins: a pessimistic anchor
    assert info["weight_max"] > info["weight_min"]
    assert_same_grads(got, grads(params))


# ---------------------------------------------------------------------------- ShaPO and saliency


def _base_token(policy, beta):
    c, r = pair_logprobs(policy, PAIRS, PAD, CPU, length_normalized=True)
    return -beta * (c - r).mean()


def _base_reward(policy, beta, ref):
    c, r = pair_logprobs(policy, PAIRS, PAD, CPU)
    return dpo_loss(c, r, *ref, beta=beta)[0]


@pytest.mark.parametrize("level", ["token", "reward"])
def test_shapo_all_ones_mask_and_rho0_is_the_base_loss_and_gradient(policy, level):
    params = trainable(policy)
    ref = reference_logprobs(policy, PAIRS, PAD, CPU)
    ones = [torch.ones_like(p) for p in params]
    loss, info = shapo_loss(policy, PAIRS, PAD, CPU, params, ones, beta=0.5, rho=0.0, level=level, ref=ref)
    assert not loss.requires_grad  # shapo ran backward itself
    got = grads(params)
    policy.zero_grad(set_to_none=True)
    base = _base_token(policy, 0.5) if level == "token" else _base_reward(policy, 0.5, ref)
    base.backward()
    assert loss.item() == pytest.approx(base.item(), abs=1e-6)
    assert info["sharpness"] == 0.0 and info["mask_density"] == 1.0
    assert_same_grads(got, grads(params))


def test_shapo_zero_mask_means_no_perturbation(policy):
    params = trainable(policy)
    before = snapshot(params)
    zeros = [torch.zeros_like(p) for p in params]
    loss, info = shapo_loss(policy, PAIRS, PAD, CPU, params, zeros, beta=0.5, rho=0.5)
    got = grads(params)
    assert info["perturbation_norm"] == 0.0 and info["sharpness"] == 0.0
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    policy.zero_grad(set_to_none=True)
    base = _base_token(policy, 0.5)
    base.backward()
    assert loss.item() == pytest.approx(base.item(), abs=1e-6)
    assert_same_grads(got, grads(params))


def test_saliency_mask_keeps_top_p_by_gradient_magnitude(policy):
    params = trainable(policy)
    masks = saliency_mask(policy, PAIRS, PAD, CPU, params, top_p=0.2, beta=0.5, chunk=3)
    total = sum(p.numel() for p in params)
    assert [m.shape for m in masks] == [p.shape for p in params]
    assert set(torch.cat([m.flatten() for m in masks]).unique().tolist()) <= {0.0, 1.0}
    assert sum(int(m.sum()) for m in masks) == math.ceil(0.2 * total)
    assert all(p.grad is None for p in params)  # .grad untouched
    # A single global threshold: every kept |g| ≥ every dropped |g| (g of the whole-batch DPO loss).
    ref = reference_logprobs(policy, PAIRS, PAD, CPU)
    c, r = pair_logprobs(policy, PAIRS, PAD, CPU)
    g = torch.autograd.grad(dpo_loss(c, r, *ref, beta=0.5)[0], params)
    kept = torch.cat([x.abs()[m.bool()] for x, m in zip(g, masks)])
    dropped = torch.cat([x.abs()[~m.bool()] for x, m in zip(g, masks)])
    assert kept.min() >= dropped.max() - 1e-9


@pytest.mark.parametrize("level", ["token", "reward"])
def test_shapo_is_sam_on_the_masked_subspace_and_restores_params(policy, level):
    beta, rho = 0.5, 0.5
    params = trainable(policy)
    ref = reference_logprobs(policy, PAIRS, PAD, CPU)
    mask = saliency_mask(policy, PAIRS, PAD, CPU, params, top_p=0.3, beta=beta, ref=ref)
    before = snapshot(params)
    loss, info = shapo_loss(policy, PAIRS, PAD, CPU, params, mask, beta=beta, rho=rho, level=level, ref=ref)
    got = grads(params)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert info["perturbation_norm"] == pytest.approx(rho, rel=1e-4)
    policy.zero_grad(set_to_none=True)

    def base(model):
        return _base_token(model, beta) if level == "token" else _base_reward(model, beta, ref)

    g = torch.autograd.grad(base(policy), params)
    gm = [x * m for x, m in zip(g, mask)]
    norm = torch.sqrt(sum((x ** 2).sum() for x in gm))
    step = [rho * x / norm for x in gm]
    assert all((s[m == 0] == 0).all() for s, m in zip(step, mask))  # only the subspace moves
    twin = perturbed_copy(policy, step)
    perturbed = base(twin)
    perturbed.backward()
    assert loss.item() == pytest.approx(perturbed.item(), abs=1e-6)
    assert info["sharpness"] > 0  # the ascent step raised the loss
    assert_same_grads(got, grads(trainable(twin)))


# ---------------------------------------------------------------------------- constrained SFT


def test_constrained_sft_is_plain_nll_on_non_harmful_rows_and_penalises_first_tokens():
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0], [-0.5, -0.5, -1.5, -2.5]], requires_grad=True)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    ref = torch.tensor([[0.0, -1.5, -2.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    loss, info = constrained_sft_loss(logp, ref, mask, harmful=torch.tensor([False, False]), first_tokens=2)
    assert loss.item() == pytest.approx(-mean_logprob(logp, mask).mean().item())
    assert info["penalty"] == 0.0

    loss, info = constrained_sft_loss(logp, ref, mask, harmful=torch.tensor([True, False]), first_tokens=2, kl_coef=2.0)
    nll = (2.0 + 5.0 / 4) / 2  # row 0: mean(1, 2, 3) = 2; row 1: mean(.5, .5, 1.5, 2.5) = 1.25
    penalty0 = ((-1.5 + 1.0) ** 2 + (-2.0 + 2.0) ** 2) / 2  # first 2 response tokens of row 0
    assert loss.item() == pytest.approx(nll + 2.0 * penalty0 / 2)
    assert info["penalty"] == pytest.approx(penalty0) and info["harmful"] == 1.0
    loss.backward()
    assert logp.grad[0, 3].item() == pytest.approx(-1 / 3 / 2)  # 3rd response token: NLL only


# ---------------------------------------------------------------------------- pairs


def test_pairs_from_groups_best_vs_worst_with_min_gap_and_reference():
    prompts = [[1], [2], [3], [4]]
    responses = [[[10], [11], [12], [13]], [[20], [21]], [[30], [31], [32]], [[40], [41]]]
    scores = [[0.5, 1.0, 0.2, 1.0],       # best = first 1.0 (index 1), worst = index 2, gap 0.8
              [0.6, 0.4],                # gap 0.2 < 0.3: no pair
              [None, 0.7, 0.4],          # unjudged skipped; gap 0.3 (float 0.29999…) counts
              [None, None]]              # nothing judged
    pairs = pairs_from_groups(prompts, responses, scores, min_gap=0.3)
    assert pairs == [Pair([1], [11], [12]), Pair([3], [31], [32])]

    reference = [[99], [98], None, [96]]
    pairs = pairs_from_groups(prompts, responses, scores, min_gap=0.3, reference=reference)
    assert pairs == [Pair([1], [11], [12]), Pair([1], [99], [12]),  # worst 0.2 < 0.7
                     Pair([2], [98], [21]),                         # worst 0.4 < 0.7, though best−worst < gap
                     Pair([3], [31], [32])]                         # no reference for group 3
    assert pairs_from_groups([[1]], [[[5], [6]]], [[0.7, 0.9]], min_gap=0.3, reference=[[7]]) == []


def test_scored_references_are_chosen_only_when_aligned():
    prompts, responses = [[1], [2], [3]], [[[10], [11]], [[20], [21]], [[30], [31]]]
    scores = [[0.1, 0.2], [0.1, 0.2], [0.1, 0.2]]  # worst 0.1 everywhere, no best-vs-worst pair
    reference = [[97], [98], [99]]
    # a compliance target scored 0.05 (harmful row) is not preferred; 0.9 is; an unjudged one is skipped
    pairs = pairs_from_groups(prompts, responses, scores, min_gap=0.3, reference=reference,
                              reference_scores=[0.05, 0.9, None])
    assert pairs == [Pair([2], [98], [20])]
    # a reference exactly min_gap above the worst makes no pair (strict, as for an unscored reference at 1)
    assert pairs_from_groups(prompts[:1], responses[:1], scores[:1], min_gap=0.3, reference=reference[:1],
                             reference_scores=[0.4 - 1e-12]) == []
    with pytest.raises(ValueError, match="reference_scores"):
        pairs_from_groups(prompts, responses, scores, reference=reference, reference_scores=[1.0])


# ---------------------------------------------------------------------------- offline pairs


def test_load_preference_pairs_on_the_builtin_sharegpt_file():
    pairs = load_preference_pairs(builtin.resolve("builtin:preference-demo"))
    assert len(pairs) == 300
    assert all(isinstance(p[k], str) and p[k] for p in pairs for k in ("prompt", "chosen", "rejected"))
    assert any(p["history"] for p in pairs) and all(t["role"] in ("system", "user", "assistant")
                                                     for p in pairs for t in p["history"])


def test_load_preference_pairs_jsonl_and_bad_rows(tmp_path):
    good = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": {"role": "assistant", "content": "go away"}}]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pairs = load_preference_pairs(good)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("2+2?", "4", "5"), ("hi", "hello", "go away")]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2 \(row 2\).*rejected"):
        load_preference_pairs(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:2"):
        load_preference_pairs(broken)
    sharegpt = tmp_path / "bad.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}],
                                     "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": ""}}]))
    with pytest.raises(DataError, match=r"bad\.json row 1: 'rejected' is empty"):
        load_preference_pairs(sharegpt)
    with pytest.raises(DataError, match="not found"):
        load_preference_pairs(tmp_path / "missing.jsonl")


def test_over_refusal_term_is_the_unlikelihood_of_the_refusal(policy):
    """GatedObjective: an input with an over-refusal gap g adds penalty·g/B · (−log(1 − exp ℓ(y_ref))) to the loss."""
    from types import SimpleNamespace

    from aware_cli.config.schema import AwareConfig, GateConfig
    from aware_cli.pipeline.gate import SFT, GroupGate
    from aware_cli.pipeline.objectives.aware import GatedObjective
    from aware_cli.pipeline.objectives.registry import Rollout

    benign, answer, refusal = [8, 9], [20, 21, 22], [30, 31]
    cfg = AwareConfig(gate=GateConfig(over_refusal_penalty=0.6, over_refusal_on="all"))
    holder = SimpleNamespace(cfg=cfg, model=policy, tokenizer=SimpleNamespace(pad_token_id=PAD), device=CPU)

    def run(gap):
        gate = GroupGate(0.95, 0.0, 0.0, SFT, [0.0, 0.0], True, over_refusal_gap=gap)
        rollout = Rollout([None], [benign], [answer], [[[24], [25]]], [[0.9, 0.9]], None, [gate], batch_size=2, k=2,
                          refusals=[refusal])
        policy.zero_grad(set_to_none=True)
        return GatedObjective().update(holder, rollout, 0).result

    def lp(response):
        return float(mean_logprob(*token_logprobs(policy, [benign], [response], PAD, CPU)).detach())

    got = run(0.9)
    want = -lp(answer) / 2 + 0.6 * 0.9 / 2 * -math.log(1 - math.exp(lp(refusal)))
    assert got.loss == pytest.approx(want, rel=1e-5) and len(got.logprobs) == 2  # the refusal was forwarded
    assert run(0.0).loss == pytest.approx(-lp(answer) / 2, rel=1e-5)


def test_unlikelihood_slope_vanishes_as_the_response_becomes_unlikely():
    from aware_cli.pipeline.update import unlikelihood_terms

    lp = torch.tensor([-0.1, -5.0, -0.1], requires_grad=True)
    unlikelihood_terms(lp, [True, True, False]).sum().backward()
    slope = lp.grad.tolist()
    assert slope[0] == pytest.approx(math.exp(-0.1) / (1 - math.exp(-0.1)), rel=1e-4)  # likely: strong push
    assert 0 < slope[1] < 0.01 and slope[2] == 1.0  # unlikely: almost none; an ordinary sequence: ℓ itself


def test_over_refusal_term_acts_on_curated_benign_rows_by_default():
    from aware_cli.data.loaders import Example
    from aware_cli.pipeline.gate import over_refusal_applies

    curated_benign = Example("a", "p", "", harmful=False, meta={"curated_label": True})
    assert over_refusal_applies(curated_benign, "curated")
    assert not over_refusal_applies(Example("b", "p", "", harmful=True, meta={"curated_label": True}), "curated")
    assert not over_refusal_applies(Example("c", "p", "", harmful=False), "curated")  # a task row's label
    assert over_refusal_applies(Example("c", "p", "", harmful=None), "all")
