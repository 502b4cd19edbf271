"""The verifier registry, the python verifier, and the Verifier wrapper's contract checks, batching and cache."""

import math
import sys
import textwrap

import pytest

from aware_cli.config.schema import VerifierConfig
from aware_cli.errors import ConfigError
from aware_cli.verifiers import VERIFIERS, Verifier, VerifierError, build_verifier, register_verifier

REWARD_SOURCE = textwrap.dedent('''
    def length_reward(prompts, completions, scale=10, **kwargs):
        return [min(len(c) / scale, 1.0) for c in completions]

    def echo_kwargs(prompts, completions, **kwargs):
        echo_kwargs.seen.append(kwargs)
        return [0.5] * len(completions)
    echo_kwargs.seen = []

    class Judge:
        @staticmethod
        def score(prompts, completions, **kwargs):
            return [1.0] * len(completions)

    NOT_CALLABLE = 3
''')


# --- registry ---------------------------------------------------------------------------------

def test_builtins_are_registered():
    assert {"refusal", "python"} <= set(VERIFIERS)


def test_unknown_name_lists_choices_and_suggests():
    with pytest.raises(ConfigError) as err:
        build_verifier(VerifierConfig(name="refusl"))
    message = str(err.value)
    assert message.startswith("verifier.name: unknown verifier 'refusl' (choose from: ")
    listed = message.split("(choose from: ")[1].split(")")[0].split(", ")
    assert listed == sorted(listed) and {"python", "refusal"} <= set(listed)
    assert "did you mean 'refusal'" in message
    assert "\n" not in message


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as err:
        build_verifier(VerifierConfig(name="zzzz"))
    assert "did you mean" not in str(err.value)


@pytest.fixture
def scratch_name():
    """A verifier name that is unregistered again after the test."""
    yield "always_half"
    VERIFIERS.pop("always_half", None)


def test_registered_factory_returning_a_bare_function_is_wrapped(scratch_name):
    @register_verifier(scratch_name)
    def factory(cfg):
        return lambda prompts, completions, **kw: [0.5] * len(completions)

    v = build_verifier(VerifierConfig(name="always_half", batch_size=3, cache=False))
    assert isinstance(v, Verifier)
    assert (v.name, v.batch_size, v.cache_enabled) == ("always_half", 3, False)
    assert v(["p", "q"], ["a", "b"]) == [0.5, 0.5]


def test_registering_a_different_factory_under_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_verifier("refusal")(lambda cfg: None)


# --- python verifier ----------------------------------------------------------------------------

@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A module `aware_test_rewards` importable from sys.path; returns its file path."""
    path = tmp_path / "aware_test_rewards.py"
    path.write_text(REWARD_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "aware_test_rewards", raising=False)
    return path


@pytest.mark.parametrize("target", ["aware_test_rewards:length_reward", "aware_test_rewards.length_reward"])
def test_python_verifier_from_dotted_path(reward_module, target):
    v = build_verifier(VerifierConfig(name="python", target=target))
    assert v(["p", "p"], ["abcde", "a" * 30]) == [0.5, 1.0]


def test_python_verifier_from_file_path_with_kwargs(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_SOURCE)
    v = build_verifier(VerifierConfig(name="python", target=f"{path}:length_reward", kwargs={"scale": 4}))
    assert v(["p", "p"], ["ab", "abcdefgh"]) == [0.5, 1.0]


def test_python_verifier_attribute_path(reward_module):
    v = build_verifier(VerifierConfig(name="python", target="aware_test_rewards:Judge.score"))
    assert v(["p"], ["x"]) == [1.0]


def test_python_verifier_passes_config_and_pipeline_kwargs(reward_module):
    import aware_test_rewards

    v = build_verifier(VerifierConfig(name="python", target="aware_test_rewards:echo_kwargs", kwargs={"mode": "strict"}))
    v(["p1", "p2"], ["a", "b"], harmful=[True, None], references=["r1", "r2"], ids=["1", "2"])
    assert aware_test_rewards.echo_kwargs.seen == [
        {"mode": "strict", "harmful": [True, None], "references": ["r1", "r2"], "ids": ["1", "2"]}]


@pytest.mark.parametrize("target, fragment", [
    (None, "needs a target"),
    ("nodots", "is not 'pkg.module:function'"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("aware_test_rewards:missing", "no attribute 'missing'"),
    ("aware_test_rewards:NOT_CALLABLE", "not a function"),
    ("does/not/exist.py:fn", "not found"),
])
def test_python_verifier_bad_targets_are_one_line_config_errors(reward_module, target, fragment):
    with pytest.raises(ConfigError) as err:
        build_verifier(VerifierConfig(name="python", target=target))
    message = str(err.value)
    assert message.startswith("verifier.target:") and fragment in message and "\n" not in message


def test_python_verifier_file_that_fails_to_load(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom\\nsecond line')\n")
    with pytest.raises(ConfigError, match=r"RuntimeError: boom second line") as err:
        build_verifier(VerifierConfig(name="python", target=f"{path}:fn"))
    assert "\n" not in str(err.value)


def test_python_verifier_kwargs_may_not_shadow_pipeline_kwargs(reward_module):
    with pytest.raises(ConfigError, match="verifier.kwargs: harmful"):
        build_verifier(VerifierConfig(name="python", target="aware_test_rewards:length_reward",
                                      kwargs={"harmful": True}))


# --- the Verifier wrapper -------------------------------------------------------------------------

def constant(values):
    return lambda prompts, completions, **kw: list(values)


@pytest.mark.parametrize("returned, fragment", [
    ([0.5], "returned 1 scores for 2 responses"),
    ([0.5, 1.5], "returned 1.5 for response 1"),
    ([float("nan"), 0.5], "returned nan for response 0"),
    ([-0.1, 0.5], "returned -0.1 for response 0"),
    (["0.5", 0.5], "returned '0.5' (str) for response 0"),
    ([math.inf, 0.5], "returned inf for response 0"),
])
def test_contract_violations_raise(returned, fragment):
    v = Verifier(constant(returned), name="bad")
    with pytest.raises(VerifierError) as err:
        v(["p", "q"], ["a", "b"])
    assert "verifier 'bad'" in str(err.value) and fragment in str(err.value)


def test_non_list_result_raises():
    with pytest.raises(VerifierError, match="returned float"):
        Verifier(lambda p, c, **kw: 0.5, name="bad")(["p"], ["a"])


def test_bools_ints_and_none_are_accepted():
    v = Verifier(constant([True, False, None, 1, 0]), name="ok")
    scores = v(list("abcde"), list("vwxyz"))
    assert scores == [1.0, 0.0, None, 1.0, 0.0]
    assert all(type(s) is float for s in scores if s is not None)
    assert v.stats["none"] == 1


def test_batching_calls_ceil_n_over_batch_size_and_slices_kwargs():
    calls = []

    def fn(prompts, completions, ids, references, shared):
        calls.append({"prompts": prompts, "ids": ids, "references": references, "shared": shared})
        return [int(i) / 10 for i in ids]

    v = Verifier(fn, name="batched", batch_size=3, cache=False)
    ids = [str(i) for i in range(7)]
    scores = v([f"p{i}" for i in ids], [f"c{i}" for i in ids], ids=ids, references=[f"r{i}" for i in ids],
               shared=["x", "y"])
    assert len(calls) == 3  # ceil(7 / 3)
    assert [c["ids"] for c in calls] == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert calls[2]["prompts"] == ["p6"] and calls[2]["references"] == ["r6"]
    assert all(c["shared"] == ["x", "y"] for c in calls)  # not as long as the batch: passed whole
    assert scores == [i / 10 for i in range(7)]
    counts = {key: value for key, value in v.stats.items() if key != "seconds"}
    assert counts == {"calls": 3, "scored": 7, "cached_hits": 0, "none": 0}
    assert v.stats["seconds"] > 0


def test_empty_input_does_not_call_fn():
    v = Verifier(constant([]), name="empty")
    assert v([], []) == []
    assert v.stats["calls"] == 0


def test_cache_avoids_rescoring_repeated_pairs():
    seen = []

    def fn(prompts, completions, **kw):
        seen.extend(completions)
        return [len(c) / 10 for c in completions]

    v = Verifier(fn, name="cached", batch_size=2)
    assert v(["p", "p", "p"], ["a", "bb", "a"]) == [0.1, 0.2, 0.1]
    assert seen == ["a", "bb"]  # the repeat within the call is scored once
    assert v(["p", "p", "q"], ["bb", "a", "a"]) == [0.2, 0.1, 0.1]
    assert seen == ["a", "bb", "a"]  # only the new pair (q, a)
    assert {key: value for key, value in v.stats.items() if key != "seconds"} == {"calls": 2, "scored": 3, "cached_hits": 3, "none": 0}


def test_cache_key_includes_per_item_kwargs():
    v = build_verifier(VerifierConfig(name="refusal", aligned_when="label"))
    text = ["I'm sorry, but I can't help with that."]
    assert v(["p"], text, harmful=[True]) == [1.0]
    assert v(["p"], text, harmful=[False]) == [0.0]
    assert v(["p"], text, harmful=[True]) == [1.0]
    assert v.stats["cached_hits"] == 1


def test_cache_off_rescores():
    seen = []
    v = Verifier(lambda p, c, **kw: seen.extend(c) or [0.0] * len(c), name="nocache", cache=False)
    v(["p"], ["a"])
    v(["p"], ["a"])
    assert seen == ["a", "a"]


def test_disk_cache_reuses_scores_across_verifier_instances(tmp_path, monkeypatch):
    from aware_cli.config.schema import VerifierConfig
    from aware_cli.verifiers import build_verifier

    module = tmp_path / "counting.py"
    module.write_text("CALLS = []\n"
                      "def score(prompts, completions, **kw):\n"
                      "    CALLS.append(len(completions))\n"
                      "    return [0.25 for _ in completions]\n")
    cfg = VerifierConfig(name="python", target=f"{module}:score", cache_dir=str(tmp_path / "cache"))
    first = build_verifier(cfg)
    assert first(["p1", "p2"], ["a", "b"]) == [0.25, 0.25]
    second = build_verifier(cfg)  # a new run: empty memory cache, same disk cache
    assert second(["p1", "p2", "p3"], ["a", "b", "c"]) == [0.25, 0.25, 0.25]
    assert second.stats["disk_hits"] == 2 and second.stats["scored"] == 1


def test_noisy_verifier_flips_a_seeded_share():
    from aware_cli.config.schema import VerifierConfig
    from aware_cli.verifiers import build_verifier

    prompts = [f"p{i}" for i in range(400)]
    answers = ["I'm sorry, I can't help with that."] * 400
    exact = build_verifier(VerifierConfig(name="noisy", aligned_when="refuse", kwargs={"base": "refusal", "flip": 0.0}))
    assert exact(prompts, answers) == [1.0] * 400
    noisy = build_verifier(VerifierConfig(name="noisy", aligned_when="refuse",
                                          kwargs={"base": "refusal", "flip": 0.25, "seed": 3}))
    scores = noisy(prompts, answers)
    assert 0.18 < scores.count(0.0) / 400 < 0.32  # about a quarter flipped
    again = build_verifier(VerifierConfig(name="noisy", aligned_when="refuse",
                                          kwargs={"base": "refusal", "flip": 0.25, "seed": 3}))
    assert again(prompts, answers) == scores  # the same pairs get the same verdicts
