"""Recipe composition and validation: every shipped recipe composes; bad input names the key."""

import pytest

from aware_cli.config import AwareConfig, compose, field_docs, list_recipes, schema_keys
from aware_cli.errors import ConfigError


@pytest.mark.parametrize("recipe", [p.stem for p in list_recipes()])
def test_every_shipped_recipe_composes_and_validates(recipe):
    composed = compose(recipe)
    assert isinstance(composed.config, AwareConfig)
    assert composed.config.recipe == recipe
    assert composed.recipe_path.read_text().startswith("#"), "recipes start with a comment showing the launch command"


@pytest.mark.parametrize("suite", ["advbench", "xstest", "truthfulqa", "hexphi", "slaq", "task", "harmful"])
def test_every_eval_suite_composes(suite):
    from aware_cli.config.schema import EvalRunConfig

    composed = compose(suite, ["limit=5"], schema=EvalRunConfig, subdir="eval")
    assert composed.config.suite == suite and composed.config.limit == 5
    assert composed.recipe_path.read_text().startswith("# aware eval")


def test_shipped_recipes_include_smoke_and_alpaca():
    names = {p.stem for p in list_recipes()}
    assert {"smoke", "alpaca"} <= names


def test_overrides_values_groups_and_plus_prefix():
    cfg = compose("alpaca", ["k=8", "gate.tau_mu=0.6", "+data.limit=100", "model=tiny", "gate=hard"]).config
    assert cfg.k == 8
    assert cfg.gate.tau_mu == 0.6 and cfg.gate.mode == "hard"
    assert cfg.data.limit == 100
    assert cfg.model.name_or_path == "tiny"
    # without '+' too, and for keys the recipe sets already
    assert compose("smoke", ["data.limit=5"]).config.data.limit == 5
    assert compose("smoke", ["+data.limit=6"]).config.data.limit == 6


def test_recipe_defaults_match_algorithm_doc():
    gate = compose("alpaca").config.gate
    assert (gate.tau_mu, gate.temperature, gate.lambda_sigma, gate.tau_sigma, gate.tau_abstain, gate.epsilon) == (
        0.8, 0.05, 0.1, 0.1, 0.2, 1e-4)


@pytest.mark.parametrize("override, expected", [
    ("gate.tau_mu=abc", "gate.tau_mu: expected float in [0.0, 1.0], got 'abc'"),
    ("gate.tau_muu=0.5", "unknown config key 'gate.tau_muu' (did you mean gate.tau_mu"),
    ("k=0", "k: expected a value >= 1, got 0"),
    ("gate.tau_abstain=1.5", "gate.tau_abstain: expected a value in [0.0, 1.0], got 1.5"),
    ("trainer.lr=-0.1", "trainer.lr: expected a value >= 0.0, got -0.1"),
    ("gate.mode=sofft", "gate.mode: expected one of soft, hard, lagrangian, got 'sofft' (did you mean soft?)"),
    ("trainer.max_stepz=3", "did you mean trainer.max_steps"),
    ("model=nope", "Could not find 'model/nope' (available: hf, smollm2, tiny)"),
    ("trainer.batch_size=3", "trainer.batch_size (3) must be a multiple of trainer.grad_accum"),
])
def test_bad_overrides_name_the_key(override, expected):
    extra = ["trainer.grad_accum=2"] if "batch_size" in override else []
    with pytest.raises(ConfigError) as err:
        compose("alpaca", [override] + extra)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# launch\ndefaults:\n  - model: tiny\nk: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        compose(str(bad))


def test_recipe_by_path_uses_shipped_groups(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("# aware train recipe=mine.yaml\ndefaults:\n  - model: tiny\n  - gate: hard\n  - _self_\nk: 3\n")
    cfg = compose(str(mine)).config
    assert cfg.k == 3 and cfg.gate.mode == "hard" and cfg.model.name_or_path == "tiny"


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="unknown recipe 'smok'.*smoke"):
        compose("smok")


def test_every_field_is_documented():
    rows = field_docs(AwareConfig)
    undocumented = [key for key, _, _, doc in rows if not doc]
    assert not undocumented
    keys = set(schema_keys(AwareConfig))
    for required in ["model", "data.path", "data.limit", "k", "gate.mode", "gate.tau_mu", "gate.tau_sigma",
                     "gate.tau_abstain", "objective", "trainer.max_steps", "trainer.save_every", "trainer.seed",
                     "trainer.lr", "trainer.batch_size", "output_dir", "resume"]:
        assert required in keys


def test_readme_config_reference_is_up_to_date(project_root):
    import subprocess
    import sys

    script = project_root / "scripts" / "gen_config_reference.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_trust_remote_code_only_from_the_command_line(tmp_path):
    from aware_cli.config.schema import EvalRunConfig

    assert compose("smoke", ["model.trust_remote_code=true"]).config.model.trust_remote_code is True
    assert compose("advbench", ["model.trust_remote_code=true"], schema=EvalRunConfig,
                   subdir="eval").config.model.trust_remote_code is True
    recipe = tmp_path / "remote.yaml"
    recipe.write_text("model:\n  name_or_path: someone/model\n  trust_remote_code: true\n")
    with pytest.raises(ConfigError, match="model.trust_remote_code: only the command line"):
        compose(str(recipe))
    group = tmp_path / "remote_model.yaml"  # a config-group file is a file too
    group.write_text("name_or_path: tiny\ntrust_remote_code: true\n")
    with pytest.raises(ConfigError, match="model.trust_remote_code: only the command line"):
        compose("smoke", [f"model={group}"])
    assert compose(str(recipe), ["model.trust_remote_code=true"]).config.model.trust_remote_code is True
    assert compose(str(recipe), ["model.trust_remote_code=false"]).config.model.trust_remote_code is False


def test_recipes_judge_harm_with_the_most_accurate_shipped_heads():
    """`verifier: harm` in a recipe means the request head on SmolLM2's states (recipes/verifier/harm.yaml); the bare
    config's null stays the MiniLM file, and an override picks it back."""
    from aware_cli.config.schema import HarmVerifierConfig
    from aware_cli.verifiers.heads import SHIPPED, resolve_heads_path

    verifiers = {p.stem: compose(p.stem).config.verifier for p in list_recipes()}
    harm_recipes = {name: v.harm.heads for name, v in verifiers.items() if v.name == "harm"}
    assert {"alpaca", "alpaca_harmful_mix", "demo", "recover"} <= set(harm_recipes)
    for recipe, heads in harm_recipes.items():
        assert heads == "shipped:smollm2-layers", recipe
        assert resolve_heads_path(heads) == SHIPPED["smollm2-layers"] and SHIPPED["smollm2-layers"].is_file()
    assert compose("smoke", ["verifier=harm"]).config.verifier.harm.heads == "shipped:smollm2-layers"
    assert resolve_heads_path(HarmVerifierConfig().heads) == SHIPPED["minilm"]
    picked = compose("alpaca", ["verifier.harm.heads=shipped:minilm"]).config.verifier.harm.heads
    assert resolve_heads_path(picked) == SHIPPED["minilm"]
