"""Compose a recipe with Hydra (defaults lists over config groups) and validate it.

Recipes are YAML files in `recipes/` (or any path); the config groups `model/`, `data/`,
`verifier/`, `gate/`, `objective/`, `trainer/` live beside them. Value overrides are checked
against the schema *before* Hydra sees them, so a typo gets "did you mean" instead of a Hydra
trace, and both `data.limit=3` and `+data.limit=3` work whether or not the recipe sets the key.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from aware_cli.config.schema import AwareConfig
from aware_cli.config.validate import build, mapping_keys, schema_keys, suggest
from aware_cli.errors import ConfigError

GROUPS = ("model", "data", "verifier", "gate", "objective", "trainer")
# Switches only the command line may turn on: a recipe file, a config-group file or a run's
# config.yaml that sets one is refused, so no file can run a model repo's code or send another
# environment variable to a judge without the user typing it.
CLI_ONLY_KEYS = ("model.trust_remote_code", "verifier.http.allow_any_key_env")


def recipes_dir() -> Path:
    """The shipped recipes: the repo's `recipes/` (editable install) or the copy inside the wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "recipes", here / "recipes"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("cannot find the recipes directory (reinstall aware-cli)")


def list_recipes() -> List[Path]:
    return sorted(p for p in recipes_dir().glob("*.yaml"))


def resolve_recipe(recipe: str, subdir: str = "") -> Path:
    """A recipe name (`alpaca`; in `recipes/<subdir>/`) or a path to a YAML file."""
    path = Path(recipe).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in recipe:
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        return path.resolve()
    folder = recipes_dir() / subdir
    candidate = folder / f"{recipe}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    what = f"{subdir} suite" if subdir else "recipe"
    raise ConfigError(f"unknown {what} '{recipe}'{suggest(recipe, names)} (choose from: {', '.join(names)})")


def group_options(group: str) -> List[str]:
    """Option names of a config group, e.g. model → [hf, smollm2, tiny]."""
    return sorted(p.stem for p in (recipes_dir() / group).glob("*.yaml"))


def model_overrides(args: List[str]) -> List[str]:
    """`model=X` where X is not a model config group (smollm2, tiny, hf) names the model itself."""
    options = group_options("model")
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        out.append(f"model.name_or_path={value}" if key == "model" and value not in options else arg)
    return out


def verifier_config(verifier: Optional[str], args: List[str]):
    """The verifier config of `aware verify` and scripts/check_verifier.py: recipe=NAME picks the recipe whose
    verifier to start from (default alpaca), `verifier` (harm, guard_lm, …) the verifier group, and every other
    argument is a verifier override, with or without its `verifier.` prefix."""
    recipe = next((a.split("=", 1)[1] for a in args if a.startswith("recipe=")), "alpaca")
    rest = [a for a in args if not a.startswith("recipe=")]
    rest = [a if a.lstrip("+").startswith(("verifier.", "verifier=")) else f"verifier.{a}" for a in rest]
    return compose(recipe, ([f"verifier={verifier}"] if verifier else []) + rest).config.verifier


def split_options(args: List[str], schema: type, prefix: str = "") -> Tuple[Any, List[str]]:
    """(`schema` built from the KEY=VALUE arguments that name its fields, the other arguments).

    Values are read as YAML (limit=8 is a number) except for text fields; `build` checks them, so a
    bad value is a ConfigError naming the key."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    own: Dict[str, Any] = {}
    rest: List[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not (sep and key in names):
            rest.append(arg)
            continue
        text = hints[key] in (str, Optional[str])
        try:
            own[key] = value if text else yaml.safe_load(value)
        except yaml.YAMLError:
            own[key] = value
    return build(schema, own, prefix), rest


def recipe_description(path: Path) -> Dict[str, Any]:
    """Top-level fields of a recipe file without composing it (for `aware recipes ls`)."""
    return _load_yaml(path) or {}


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML ({problem})") from e


@dataclass
class Composed:
    config: Any  # AwareConfig, or the schema passed to `compose`
    resolved: Dict[str, Any]  # the plain dict written to the run's config.yaml
    recipe_path: Path


def _split_overrides(overrides: List[str], schema: type) -> Tuple[List[str], List[str], List[str]]:
    """Group selections (`model=tiny`) stay Hydra's; value overrides become `++key=value` after a schema check.

    Third: the `CLI_ONLY_KEYS` these overrides turn on.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    valid = schema_keys(schema)
    free = tuple(k + "." for k in mapping_keys(schema))
    groups, values, switched_on = [], [], []
    for text in overrides:
        try:
            (ov,) = parser.parse_overrides([text])
        except OverrideParseException as e:
            raise ConfigError(f"cannot parse override '{text}': {str(e).splitlines()[0]}") from e
        key = ov.key_or_group
        if key in GROUPS and not text.startswith("+") and not ov.is_delete():
            groups.append(text)
            continue
        if key.split(".")[0] == "hydra":
            raise ConfigError(f"override '{text}': hydra.* keys are not configurable in aware")
        if key not in valid and not key.startswith(free):
            raise ConfigError(f"unknown config key '{key}'{suggest(key, valid)}")
        values.append(text if ov.is_delete() else "++" + text.lstrip("+"))
        if key in CLI_ONLY_KEYS and not ov.is_delete() and ov.value() is True:
            switched_on.append(key)
    return groups, values, switched_on


def compose(recipe: str, overrides: Optional[List[str]] = None, *, schema: type = AwareConfig,
            subdir: str = "") -> Composed:
    """Compose `recipe` with `overrides` and validate it into `schema` (an `AwareConfig` by default)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = resolve_recipe(recipe, subdir)
    _load_yaml(path)  # YAML syntax errors with file:line before Hydra wraps them
    group_overrides, value_overrides, switched_on = _split_overrides(list(overrides or []), schema)
    with tempfile.TemporaryDirectory(prefix="aware-groups-") as extra:
        group_overrides = [_group_file_override(o, Path(extra)) for o in group_overrides]
        dirs = ([recipes_dir()] if path.parent != recipes_dir() else []) + [Path(extra)]
        search = ["hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]"]
        try:
            with initialize_config_dir(config_dir=str(path.parent), version_base=None):
                cfg = hydra_compose(config_name=path.stem, overrides=search + group_overrides + value_overrides)
            plain = OmegaConf.to_container(cfg, resolve=True)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(f"{path.name}: {_first_line(e)}") from e
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    plain.pop("defaults", None)
    if schema is AwareConfig:  # a run's config.yaml names the recipe it was composed from
        plain["recipe"] = plain.get("recipe") or path.stem
    config = build(schema, plain)
    for key in cli_only_settings(config):
        if key not in switched_on:
            raise ConfigError(f"{key}: only the command line can turn this on ({key}=true); {path.name} or a "
                              f"config group it uses sets it")
    if isinstance(config, AwareConfig):
        _absolute_parent_run(config)
        check_consistency(config)
    return Composed(config=config, resolved=_to_plain(config), recipe_path=path)


def _absolute_parent_run(config: AwareConfig) -> None:
    """`model.name_or_path=<run or checkpoint>` is recorded as an absolute path: the new run's config.yaml
    names its parent wherever it is read from."""
    from pathlib import Path

    from aware_cli.errors import ModelError
    from aware_cli.models.lineage import find_trained

    try:
        trained = find_trained(config.model.name_or_path)
    except ModelError:  # e.g. a run without final/: loading the model says so
        return
    if trained is not None:
        config.model.name_or_path = str(Path(config.model.name_or_path).expanduser().resolve())


def cli_only_settings(config: Any) -> List[str]:
    """The `CLI_ONLY_KEYS` that are on in `config` (a composed AwareConfig or EvalRunConfig)."""
    on = []
    for key in CLI_ONLY_KEYS:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part, None)
        if value is True:
            on.append(key)
    return on


def _group_file_override(override: str, extra: Path) -> str:
    """`gate=path/to/fitted.yaml` → a config-group option: the file is placed under `extra/gate/`."""
    group, _, value = override.partition("=")
    file = Path(value).expanduser()
    if file.suffix not in (".yaml", ".yml"):
        return override
    if not file.is_file():
        raise ConfigError(f"{group}: config file not found: {file}")
    _load_yaml(file)
    (extra / group).mkdir(exist_ok=True)
    shutil.copyfile(file, extra / group / f"file_{file.stem}.yaml")
    return f"{group}=file_{file.stem}"


def _first_line(e: Exception) -> str:
    """Hydra's message on one line, keeping its list of available options."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if any(line.startswith("Available options") for line in lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options")) + 1
        options = [line for line in lines[start:] if not line.startswith(("Config search path", "provider="))]
        return f"{lines[0]} (available: {', '.join(options)})"
    return lines[0]


def _to_plain(config: AwareConfig) -> Dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)


def check_consistency(cfg: AwareConfig) -> None:
    """Constraints that involve several keys."""
    wanted = {"mixed": "float32", "fp32": "float32", "bf16": "bfloat16"}.get(cfg.trainer.precision)
    if wanted and cfg.model.dtype not in ("auto", wanted):
        raise ConfigError(f"model.dtype={cfg.model.dtype} contradicts trainer.precision={cfg.trainer.precision} "
                          f"(its weights are {wanted}); leave model.dtype=auto")
    if cfg.trainer.batch_size % cfg.trainer.grad_accum:
        raise ConfigError(f"trainer.batch_size ({cfg.trainer.batch_size}) must be a multiple of "
                          f"trainer.grad_accum ({cfg.trainer.grad_accum})")
    if cfg.gate.abstain and cfg.gate.tau_abstain > cfg.gate.tau_mu:
        raise ConfigError(f"gate.tau_abstain ({cfg.gate.tau_abstain}) must not exceed gate.tau_mu ({cfg.gate.tau_mu})")
    if cfg.gate.abstain and not cfg.gate.refusals:
        raise ConfigError("gate.refusals: needs at least one refusal target when gate.abstain is true")
    from aware_cli.pipeline.objectives import get_objective

    get_objective(cfg.objective.name).check(cfg)  # the registry: a known name, a reference model, pairs
    if cfg.objective.pairs_path and cfg.data.mix.path:
        raise ConfigError("data.mix.path: cannot be mixed into offline preference pairs (objective.pairs_path)")
    if cfg.verifier.name == "python" and not cfg.verifier.target:
        raise ConfigError("verifier.target: the python verifier needs a dotted path `module:function`")
    if cfg.model.from_run == "adapter" and cfg.model.finetune != "lora":
        raise ConfigError("model.from_run=adapter keeps training the parent run's LoRA adapter: use "
                          "model.finetune=lora (or model.from_run=merge)")
    check_monitoring(cfg)
    if cfg.sampling.engine == "vllm":
        check_vllm(cfg)


def check_monitoring(cfg: AwareConfig) -> None:
    """trainer.report_to, eval.suites and trainer.save_best name things that exist."""
    from aware_cli.config.schema import EVAL_SUITES
    from aware_cli.pipeline.best import best_mode

    for i, name in enumerate(cfg.trainer.report_to):
        if name not in TRACKERS:
            raise ConfigError(f"trainer.report_to[{i}]: expected one of {', '.join(TRACKERS)}, got {name!r}"
                              f"{suggest(name, list(TRACKERS))}")
    for i, suite in enumerate(cfg.eval.suites):
        if suite not in EVAL_SUITES:
            raise ConfigError(f"eval.suites[{i}]: expected one of {', '.join(EVAL_SUITES)}, got {suite!r}"
                              f"{suggest(suite, EVAL_SUITES)}")
    if len(set(cfg.eval.suites)) != len(cfg.eval.suites):
        raise ConfigError(f"eval.suites: a suite is listed twice ({', '.join(cfg.eval.suites)})")
    if cfg.trainer.save_best:
        best_mode(cfg.trainer.save_best, cfg.trainer.save_best_mode, cfg.eval.suites)


TRACKERS = ("tensorboard", "wandb", "mlflow")


def check_vllm(cfg: AwareConfig) -> None:
    """sampling.engine=vllm: vLLM loads the policy's weights from a model directory, in this process."""
    model = cfg.model
    from aware_cli.models.lineage import find_trained

    if find_trained(model.name_or_path) is not None:
        raise ConfigError(f"sampling.engine=vllm: vLLM loads a model directory or HF id, not a run or checkpoint "
                          f"({model.name_or_path}); export it first (aware export RUN OUT) and train from OUT, "
                          f"or use sampling.engine=aware")
    if model.name_or_path == "tiny":
        raise ConfigError("sampling.engine=vllm: vLLM loads a model directory or HF id; model.name_or_path=tiny "
                          "is built in code (use sampling.engine=aware)")
    if model.gguf_file or model.name_or_path.endswith(".gguf"):
        raise ConfigError("sampling.engine=vllm: vLLM needs a Hugging Face model directory or id, not a GGUF file "
                          "(embedded: models are converted to one and work)")
    if cfg.trainer.nproc > 1:
        raise ConfigError("sampling.engine=vllm: one process only (trainer.nproc=1); under torchrun every rank "
                          "would start its own vLLM engine")
    longest = cfg.data.max_prompt_tokens + cfg.sampling.max_new_tokens
    if cfg.sampling.vllm.max_model_len is not None and cfg.sampling.vllm.max_model_len < longest:
        raise ConfigError(f"sampling.vllm.max_model_len ({cfg.sampling.vllm.max_model_len}) is shorter than "
                          f"data.max_prompt_tokens + sampling.max_new_tokens ({longest})")
    if not vllm_installed():
        raise ConfigError("sampling.engine=vllm needs vLLM: pip install vllm (GPU only)")


def vllm_installed() -> bool:
    """Whether `import vllm` can work, without importing it (slow, and it may initialise CUDA)."""
    if sys.modules.get("vllm") is not None:
        return True
    return importlib.util.find_spec("vllm") is not None
