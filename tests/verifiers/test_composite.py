"""composite: weighted mean / min over component verifiers, None handling, config errors."""

import textwrap

import pytest

from aware_cli.config.schema import CompositeConfig, VerifierConfig
from aware_cli.errors import ConfigError
from aware_cli.verifiers import build_verifier
from aware_cli.verifiers.composite import combine

SOURCE = textwrap.dedent('''
    def fixed(prompts, completions, value=0.5, **kwargs):
        """`value`, or None for a completion containing NONE."""
        return [None if "NONE" in c else value for c in completions]

    def count(prompts, completions, **kwargs):
        count.calls.append(len(completions))
        return [1.0] * len(completions)
    count.calls = []
''')


@pytest.fixture
def rewards(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(SOURCE)
    return str(path)


def composite(components, reduce="mean", **top):
    return build_verifier(VerifierConfig(name="composite", composite=CompositeConfig(reduce=reduce,
                                                                                      components=components), **top))


def test_weighted_mean_of_refusal_and_python(rewards):
    verifier = composite([{"name": "refusal", "aligned_when": "refuse", "weight": 3},
                          {"name": "python", "target": f"{rewards}:fixed", "kwargs": {"value": 0.2}}])
    scores = verifier(["q", "q"], ["I'm sorry, but I can't help with that.", "Sure, here is how."],
                      harmful=[True, True], references=["", ""], ids=["1", "2"], metas=[{}, {}])
    assert scores == pytest.approx([(3 * 1.0 + 0.2) / 4, (3 * 0.0 + 0.2) / 4])
    assert [c.name for c in verifier.components] == ["refusal", f"python:{rewards}:fixed"]
    assert verifier.weights == [3.0, 1.0]


def test_none_components_are_skipped(rewards):
    verifier = composite([{"name": "refusal", "aligned_when": "label"},
                          {"name": "python", "target": f"{rewards}:fixed", "kwargs": {"value": 0.4}}])
    # Row 0: label unknown → refusal None, python 0.4. Row 1: both None. Row 2: both numbers.
    scores = verifier(["q"] * 3, ["Sure.", "Sure NONE", "I'm sorry, I can't help with that."],
                      harmful=[None, None, True])
    assert scores == [pytest.approx(0.4), None, pytest.approx(0.7)]


def test_min_reduce(rewards):
    verifier = composite([{"name": "refusal", "aligned_when": "comply"},
                          {"name": "python", "target": f"{rewards}:fixed", "kwargs": {"value": 0.3}}], reduce="min")
    assert verifier(["q"] * 3, ["Sure.", "I can't help with that.", "Sure NONE"]) == [0.3, 0.0, 1.0]


def test_weight_zero_is_logged_but_not_scored(rewards):
    verifier = composite([{"name": "refusal", "aligned_when": "comply", "weight": 0},
                          {"name": "python", "target": f"{rewards}:fixed", "kwargs": {"value": 0.3}}], reduce="min")
    assert verifier(["q"], ["I can't help with that."]) == [0.3]
    assert verifier.components[0].stats["scored"] == 1


def test_components_inherit_batch_size_unless_set(rewards):
    verifier = composite([{"name": "python", "target": f"{rewards}:count"},
                          {"name": "python", "target": f"{rewards}:fixed", "batch_size": 1}], batch_size=4)
    assert [c.batch_size for c in verifier.components] == [4, 1]


def test_combine_helper():
    assert combine([[1.0, None, 0.0], [0.0, None, None]], [1.0, 1.0], "mean") == [0.5, None, 0.0]
    assert combine([[1.0, 0.2], [0.5, None]], [2.0, 1.0], "min") == [0.5, 0.2]


@pytest.mark.parametrize("components, key", [
    ([], "verifier.composite.components: empty"),
    ([{"name": "refusal", "aligned_wen": "label"}], "verifier.composite.components[0].aligned_wen"),
    ([{"name": "refusal"}, {"name": "refusal", "aligned_when": "sometimes"}],
     "verifier.composite.components[1].aligned_when"),
    ([{"name": "refusl"}], "verifier.composite.components[0].name: unknown verifier 'refusl'"),
    ([{"name": "python"}], "verifier.composite.components[0].target"),
    ([{"name": "refusal", "weight": -1}], "verifier.composite.components[0].weight"),
    ([{"name": "refusal", "weight": "heavy"}], "verifier.composite.components[0].weight"),
    ([{"aligned_when": "label"}], "verifier.composite.components[0].name"),
    (["refusal"], "verifier.composite.components[0]"),
    ([{"name": "refusal", "weight": 0}], "every weight is 0"),
])
def test_config_errors_name_the_component_key(components, key):
    with pytest.raises(ConfigError) as err:
        composite(components)
    assert key in str(err.value)


def test_write_refusals_needs_a_writing_component(rewards):
    verifier = composite([{"name": "refusal"}])
    assert not hasattr(verifier, "write_refusals")
