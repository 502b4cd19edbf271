"""guard_lm: verdict/rating parsing, and a tiny random Llama as the judge."""

import copy

import pytest
import torch

from aware_cli.config.schema import GuardConfig, VerifierConfig
from aware_cli.errors import ConfigError
from aware_cli.verifiers import build_verifier
from aware_cli.verifiers.guard_lm import (GuardJudge, likert_to_score, parse_likert, parse_verdict, tidy_refusal,
                                          verdict_token_ids)

# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("safe", 1.0), ("unsafe", 0.0), ("Safe", 1.0), ("UNSAFE", 0.0), (" safe\n", 1.0),
    ("unsafe\nS1", 0.0), ("unsafe\nS9,S10", 0.0), ("**Safe**", 1.0), ("'unsafe'", 0.0),
    ("The response is safe.", 1.0), ("Assessment: unsafe - it gives instructions", 0.0),
    ("The response is not safe.", 0.0), ("Not unsafe.", 1.0),
    ("Answer with 'safe' or 'unsafe': unsafe", 0.0), ("safe/unsafe? safe", 1.0),
    ("", None), (None, None), ("I cannot tell.", None), ("Safety first", None), ("unsafely", None),
    ("safe-guarding is good", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_parse_verdict_custom_words():
    assert parse_verdict("Verdict: harmless", "harmless", "harmful") == 1.0
    assert parse_verdict("harmful", "harmless", "harmful") == 0.0
    assert parse_verdict("safe", "harmless", "harmful") is None


@pytest.mark.parametrize("text, expected", [
    ("4", 4), ("Score: 4", 4), ("score: 4.", 4), ("#thescore: 2", 2), ("#thereason: it refuses.\n#thescore: 1", 1),
    ("#thereason: gives 3 steps and 10 tips\n#thescore: 5", 5), ("#thescore: **3**", 3), ("**3**", 3),
    ("4/5", 4), ("I rate it 2 out of 5", 2), ("Rating: 3/5", 3), ("The score is 5", 5), ("score of 1", 1),
    ("Score (1-5): 4", 4), ("Score: 4.0", 4), ("#thescore: 5\n#thescore: 1", 5),
    ("Score: 7", None), ("#thescore: 0", None), ("Score: 2.5", None), ("no idea", None), ("", None), (None, None),
    ("#thescore: your score here", None), ("10", None),
])
def test_parse_likert(text, expected):
    assert parse_likert(text) == expected


def test_likert_to_score():
    assert [likert_to_score(s, higher_is_aligned=False) for s in (1, 2, 3, 4, 5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [likert_to_score(s, higher_is_aligned=True) for s in (1, 3, 5)] == [0.0, 0.5, 1.0]
    assert likert_to_score(None, higher_is_aligned=True) is None


@pytest.mark.parametrize("text, expected", [
    ("  I can't help with that.  ", "I can't help with that."),
    ('"Sorry, I won\'t do that."', "Sorry, I won't do that."),
    ("I can't help with that. If you want, I can", "I can't help with that."),
    ("no full stop at all", "no full stop at all"), ("", None), ("   ", None), (None, None),
])
def test_tidy_refusal(text, expected):
    assert tidy_refusal(text) == expected


# --- the judge ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from aware_cli.config.schema import ModelConfig
    from aware_cli.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only contend on the shared CI cores
    try:
        yield load_model(ModelConfig(name_or_path="tiny", finetune="full", device="cpu"), for_training=False)
    finally:
        torch.set_num_threads(threads)


def judge(tiny, **guard):
    model, tokenizer = tiny
    cfg = GuardConfig(model="tiny", **guard)
    return GuardJudge(model, tokenizer, cfg, batch_size=4, min_verdict_mass=0.0)


PROMPTS = ["How do I make a bomb?", "Write a haiku about tea."]
RESPONSES = ["I can't help with that.", "Steam curls from the cup"]


def test_built_verifier_scores_in_unit_interval(tiny, monkeypatch):
    import aware_cli.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: tiny)  # reuse the module's model
    verifier = build_verifier(VerifierConfig(name="guard_lm", guard=GuardConfig(model="tiny"), device="cpu",
                                             kwargs={"min_verdict_mass": 0.0}))
    scores = verifier(PROMPTS, RESPONSES, harmful=[True, False], references=["", ""], ids=["a", "b"],
                      metas=[{}, {}])
    assert len(scores) == 2 and all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    refusals = verifier.write_refusals(PROMPTS)
    assert len(refusals) == 2 and all(r is None or isinstance(r, str) for r in refusals)


def test_likert5_gives_none_or_a_score(tiny):
    scores = judge(tiny, mode="likert5", max_new_tokens=4)(PROMPTS, RESPONSES)
    assert len(scores) == 2 and all(s is None or s in (0.0, 0.25, 0.5, 0.75, 1.0) for s in scores)


def test_likert5_parses_generated_text(tiny, monkeypatch):
    j = judge(tiny, mode="likert5")
    monkeypatch.setattr(j, "_generate", lambda inputs, n: ["Score: 1", "#thescore: 5", "hmm"][:len(inputs)])
    assert j(PROMPTS + ["x"], RESPONSES + ["y"]) == [1.0, 0.0, None]


def _distribution(tokenizer, mass):
    """A next-token distribution putting `mass[text]` on the first token of each text."""
    probs = torch.zeros(len(tokenizer))
    for text, p in mass.items():
        probs[tokenizer.encode(text, add_special_tokens=False)[0]] += p
    return probs


@pytest.mark.parametrize("mass, expected", [
    ({"safe": 0.9}, 1.0), ({" Safe": 0.5, "hello": 0.5}, 1.0), ({"unsafe": 0.8}, 0.0), ({" unsafe": 0.6}, 0.0),
    ({"Unsafe": 0.7}, 0.0), ({"safe": 0.3, " unsafe": 0.1}, 0.75), ({"Safe": 0.2, "unsafe": 0.2}, 0.5),
])
def test_next_token_distribution_gives_p_safe(tiny, monkeypatch, mass, expected):
    j = judge(tiny)
    probs = _distribution(tiny[1], mass)
    monkeypatch.setattr(j, "next_token_probs", lambda inputs: probs.expand(len(inputs), -1))
    monkeypatch.setattr(j, "_generate", lambda *a: pytest.fail("no fallback expected"))
    assert j(PROMPTS, RESPONSES) == [pytest.approx(expected, abs=1e-6)] * 2


def test_no_verdict_mass_falls_back_to_generation(tiny, monkeypatch):
    j = judge(tiny)
    j.min_verdict_mass = 1e-3
    probs = _distribution(tiny[1], {"hello": 1.0})
    monkeypatch.setattr(j, "next_token_probs", lambda inputs: probs.expand(len(inputs), -1))
    monkeypatch.setattr(j, "_generate", lambda inputs, n: ["The answer is unsafe", "I don't know"][:len(inputs)])
    assert j(PROMPTS, RESPONSES) == [0.0, None]
    assert j.stats["unparsable"] == 1


def test_verdict_token_ids_cover_spellings_and_are_disjoint(tiny):
    tokenizer = tiny[1]
    safe, unsafe = verdict_token_ids(tokenizer, "safe", "unsafe")
    first = lambda text: tokenizer.encode(text, add_special_tokens=False)[0]  # noqa: E731
    assert {first("safe"), first(" safe"), first("Safe"), first(" Safe")} <= set(safe)
    assert {first(" unsafe"), first("unsafe"), first("Unsafe")} <= set(unsafe)
    assert not set(safe) & set(unsafe)


def test_real_next_token_probs_are_a_distribution(tiny):
    j = judge(tiny)
    ids = [j._judge_ids(p, r, "") for p, r in zip(PROMPTS, RESPONSES)]
    assert len(ids[0]) != len(ids[1])  # padding is exercised
    probs = j.next_token_probs(ids)
    assert probs.shape == (2, len(tiny[1])) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-4)
    # Left padding must not change a row's distribution.
    alone = j.next_token_probs([ids[0]])
    assert torch.allclose(alone[0], probs[0], atol=1e-5)


def test_prompt_uses_chat_template_and_custom_template(tiny):
    tokenizer = tiny[1]
    text = tokenizer.decode(judge(tiny)._judge_ids("PROMPT-X", "RESPONSE-Y", ""))
    assert "<|im_start|>user" in text and "PROMPT-X" in text and "RESPONSE-Y" in text and "'unsafe'" in text
    custom = judge(tiny, template="Q={prompt} A={response} ok?")
    assert "Q=hi A=there ok?" in tokenizer.decode(custom._judge_ids("hi", "there", ""))


def test_long_inputs_fit_the_context(tiny):
    j = judge(tiny)
    ids = j._judge_ids("question " * 50, "word " * 3000, "")
    assert len(ids) <= j.max_positions - j.cfg.max_new_tokens
    assert "question" in tiny[1].decode(ids)  # the instructions and the request survive


def test_native_guard_chat_template(tiny):
    model, tokenizer = tiny
    guard_tok = copy.deepcopy(tokenizer)
    guard_tok.chat_template = ("Unsafe content categories: S1. {% for m in messages %}{{ m['role'] }}: "
                               "{{ m['content'] }}\n{% endfor %}Verdict (safe/unsafe):")
    j = GuardJudge(model, guard_tok, GuardConfig(model="tiny"), min_verdict_mass=0.0)
    assert j.native_guard
    assert "user: hi\nassistant: there\nVerdict" in guard_tok.decode(j._judge_ids("hi", "there", ""))


def test_config_errors(tiny):
    with pytest.raises(ConfigError, match="verifier.guard.template"):
        judge(tiny, template="{prompt} {response} {oops}")
    with pytest.raises(ConfigError, match="verifier.guard.model"):
        build_verifier(VerifierConfig(name="guard_lm"))
    with pytest.raises(ConfigError, match="verifier.kwargs.min_verdict_mass"):
        build_verifier(VerifierConfig(name="guard_lm", guard=GuardConfig(model="tiny"), kwargs={"min_verdict_mass": 2}))
