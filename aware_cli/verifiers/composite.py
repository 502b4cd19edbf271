"""The `composite` verifier: several verifiers combined into one score.

`verifier.composite.components` is a list of verifier configs (the keys of `verifier`, e.g.
`{name: refusal, aligned_when: label}`), each with an optional `weight` (default 1). A component
inherits `batch_size`, `cache`, `cache_dir` and `device` from the composite unless it sets them, and
always takes `verifier.http.allow_any_key_env` from the composite (a command-line-only switch).

- `reduce=mean`: the weighted mean over the components that returned a number for that
  response (components returning None are left out; all None → None);
- `reduce=min`: the smallest number (None only when every component returned None).

Components with weight 0 are built (and their stats logged) but left out of the score.
The built `Verifier` has `components` (the component verifiers) and `weights`; it can write
refusals when one of its components can (`write_refusals`).
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, List, Optional, Sequence, Tuple

from aware_cli.config.schema import VerifierConfig
from aware_cli.errors import AwareError, ConfigError
from aware_cli.verifiers.base import Verifier, build_verifier, identity_payload, register_block, register_verifier

# Keys a component takes from the composite when it does not set them itself.
INHERITED_KEYS = ("batch_size", "cache", "cache_dir", "device")


def component_configs(cfg: VerifierConfig) -> List[Tuple[VerifierConfig, float]]:
    """(config, weight) of each component, validated; errors name `verifier.composite.components[i]...`."""
    from aware_cli.config.validate import build

    components = cfg.composite.components
    if not components:
        raise ConfigError("verifier.composite.components: empty; list at least one verifier config, "
                          "e.g. [{name: refusal}, {name: python, target: my_rewards:fn, weight: 0.5}]")
    out = []
    for i, raw in enumerate(components):
        prefix = f"verifier.composite.components[{i}]."
        raw = _plain(raw)
        if not isinstance(raw, dict):
            raise ConfigError(f"{prefix[:-1]}: expected a verifier config mapping, got {raw!r}")
        values = dict(raw)
        weight = values.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight >= 0 \
                or weight == float("inf"):
            raise ConfigError(f"{prefix}weight: expected a number >= 0, got {weight!r}")
        if "name" not in values:
            raise ConfigError(f"{prefix}name: each component needs a verifier name")
        for key in INHERITED_KEYS:
            values.setdefault(key, getattr(cfg, key))
        # a command-line-only switch: the composite's own value (from the command line), never the component's
        http = values.get("http")
        values["http"] = {**(http if isinstance(http, dict) else {}),
                          "allow_any_key_env": cfg.http.allow_any_key_env}
        out.append((build(VerifierConfig, values, prefix=prefix), float(weight)))
    if not any(w > 0 for _, w in out):
        raise ConfigError("verifier.composite.components: every weight is 0; give at least one a positive weight")
    return out


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts/lists (components usually arrive plain already)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def combine(columns: Sequence[Sequence[Optional[float]]], weights: Sequence[float],
            reduce: str) -> List[Optional[float]]:
    """Per-response reduction of the components' score columns (None entries skipped)."""
    n = len(columns[0]) if columns else 0
    out: List[Optional[float]] = []
    for i in range(n):
        pairs = [(col[i], w) for col, w in zip(columns, weights) if w > 0 and col[i] is not None]
        if not pairs:
            out.append(None)
        elif reduce == "min":
            out.append(min(float(s) for s, _ in pairs))
        else:
            total = sum(w for _, w in pairs)
            out.append(min(1.0, max(0.0, sum(float(s) * w for s, w in pairs) / total)))
    return out


class CompositeScorer:
    """The reward function: calls each component verifier on the whole batch and reduces."""

    def __init__(self, components: List[Verifier], weights: List[float], reduce: str):
        self.components = components
        self.weights = weights
        self.reduce = reduce

    def __repr__(self) -> str:
        parts = ", ".join(f"{v.name}×{w:g}" for v, w in zip(self.components, self.weights))
        return f"CompositeScorer({self.reduce}: {parts})"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> List[Optional[float]]:
        columns = [component(prompts, completions, **kwargs) for component in self.components]
        return combine(columns, self.weights, self.reduce)

    def write_refusals(self, prompts: Sequence[str]) -> List[Optional[str]]:
        for component in self.components:
            writer = getattr(component, "write_refusals", None)
            if callable(writer):
                return writer(prompts)
        raise ConfigError("gate.refusal_source=verifier: no component of the composite verifier writes refusals "
                          "(guard_lm and http_judge do)")


@register_block("composite")
def composite_fingerprint(cfg: VerifierConfig) -> Dict[str, Any]:
    """The reduce and each component's own identity with its weight (an invalid composite: its raw form)."""
    try:
        components = component_configs(cfg)
    except Exception:  # noqa: BLE001 - an invalid composite fails when built; hash its raw form here
        return {"reduce": cfg.composite.reduce, "raw": cfg.composite.components}
    return {"reduce": cfg.composite.reduce,
            "components": [{"weight": weight, **identity_payload(c)} for c, weight in components]}


@register_verifier("composite", blocks=("composite",))
def build_composite_verifier(cfg: VerifierConfig) -> Verifier:
    components, weights = [], []
    for i, (component_cfg, weight) in enumerate(component_configs(cfg)):
        try:
            components.append(build_verifier(component_cfg))
        except AwareError as exc:  # ConfigError, ModelError...: same kind, message naming the component
            raise type(exc)(_rename(str(exc), i)) from exc
        weights.append(weight)
    scorer = CompositeScorer(components, weights, cfg.composite.reduce)
    verifier = Verifier(scorer, name="composite", batch_size=cfg.batch_size, cache=cfg.cache)
    verifier.components = components  # type: ignore[attr-defined]  # read by pipeline.verify.verifier_stats
    verifier.weights = weights  # type: ignore[attr-defined]
    if any(callable(getattr(c, "write_refusals", None)) for c in components):
        verifier.write_refusals = scorer.write_refusals  # type: ignore[attr-defined]
    return verifier


def _rename(message: str, index: int) -> str:
    """`verifier.target: ...` from a component's factory → `verifier.composite.components[i].target: ...`."""
    prefix = f"verifier.composite.components[{index}]."
    if message.startswith("verifier.") and not message.startswith("verifier.composite.components["):
        return prefix + message[len("verifier."):]
    return f"{prefix[:-1]}: {message}"

