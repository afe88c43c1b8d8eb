"""Checkpoint recipes: the small TOML files under the repository's `models/` (HF id, family, sites, prompt, mesh)."""

from __future__ import annotations

import dataclasses
import os
import tomllib

RECIPE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")

_FAMILIES = ("llava", "llama")
_MESH_AXES = ("data", "fsdp", "tensor")


class RecipeError(ValueError):
    """A recipe file is malformed."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    hf_id: str
    family: str
    dtype: str
    parameters: str
    default_sites: tuple[str, ...]
    prompt_format: str
    use_chat_template: bool
    mesh: dict[str, dict[str, int]]
    path: str


def list_recipes(directory: str = RECIPE_DIR) -> list[str]:
    return sorted(n[:-5] for n in os.listdir(directory) if n.endswith(".toml"))


def load_recipe(name_or_path: str, directory: str = RECIPE_DIR) -> Recipe:
    """A recipe by name (`llava-1.5-7b`, from `models/` of a source checkout) or by file path."""
    path = name_or_path if name_or_path.endswith(".toml") else os.path.join(directory, f"{name_or_path}.toml")
    if not os.path.exists(path):
        known = list_recipes(directory) if os.path.isdir(directory) else []
        raise FileNotFoundError(f"no recipe {name_or_path!r} (known in {directory}: {known})")
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    _expect_keys(raw, {"name", "hf_id", "family", "dtype", "parameters", "sites", "prompt", "mesh"}, path, "")
    _expect_keys(raw["sites"], {"default"}, path, "sites.")
    _expect_keys(raw["prompt"], {"format", "use_chat_template"}, path, "prompt.")
    if raw["family"] not in _FAMILIES:
        raise RecipeError(f"{path}: family={raw['family']!r} is not one of {list(_FAMILIES)}")
    if "{prompt}" not in raw["prompt"]["format"]:
        raise RecipeError(f"{path}: prompt.format has no {{prompt}} placeholder")
    for hint, axes in raw["mesh"].items():
        if not isinstance(axes, dict) or set(axes) - set(_MESH_AXES) or not all(isinstance(v, int) and v >= 1 for v in axes.values()):
            raise RecipeError(f"{path}: mesh.{hint} must map {list(_MESH_AXES)} to positive integers, got {axes}")
    return Recipe(name=raw["name"], hf_id=raw["hf_id"], family=raw["family"], dtype=raw["dtype"],
                  parameters=raw["parameters"], default_sites=tuple(raw["sites"]["default"]),
                  prompt_format=raw["prompt"]["format"], use_chat_template=raw["prompt"]["use_chat_template"],
                  mesh=raw["mesh"], path=path)


def _expect_keys(table: dict, keys: set[str], path: str, prefix: str) -> None:
    missing, unknown = sorted(keys - set(table)), sorted(set(table) - keys)
    if missing or unknown:
        raise RecipeError(f"{path}: missing fields {[prefix + k for k in missing]}, "
                          f"unknown fields {[prefix + k for k in unknown]}")
