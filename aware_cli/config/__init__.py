"""Recipes → typed config: Hydra composition plus dataclass validation."""

from aware_cli.config.compose import Composed, compose, list_recipes, recipe_description, recipes_dir, resolve_recipe
from aware_cli.config.schema import AwareConfig
from aware_cli.config.validate import build, field_docs, schema_keys

__all__ = [
    "AwareConfig", "Composed", "build", "compose", "field_docs", "list_recipes", "recipe_description",
    "recipes_dir", "resolve_recipe", "schema_keys",
]
