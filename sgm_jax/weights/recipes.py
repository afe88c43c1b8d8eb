"""Checkpoint recipes: small TOML files (HF id, family, sites, prompt, mesh, images) in the top-level
`models/recipes`.

They ship as package data (`sgm_jax.bundled`), so an installed wheel knows them as well as a source checkout.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable

from sgm_jax.models.registry import FAMILIES
from sgm_jax.runtime.errors import MissingFileError, SgmJaxError

# The bundled recipes, read through importlib.resources (a pathlib.Path for an ordinary install).
RECIPE_DIR: Traversable = files("sgm_jax.bundled") / "recipes"

_MESH_AXES = ("data", "fsdp", "tensor")


class RecipeError(SgmJaxError, ValueError):
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
    # One square resolution every image is resized to before the processor (`--image-size`); None keeps each size.
    image_size: int | None = None


def _folder(directory: str | os.PathLike | Traversable) -> Traversable:
    return pathlib.Path(directory) if isinstance(directory, (str, os.PathLike)) else directory


def list_recipes(directory: str | os.PathLike | Traversable = RECIPE_DIR) -> list[str]:
    """The recipe names in `directory` (by default the bundled ones)."""
    return sorted(
        entry.name[:-5] for entry in _folder(directory).iterdir() if entry.name.endswith(".toml") and entry.is_file()
    )


def load_recipe(name_or_path: str, directory: str | os.PathLike | Traversable = RECIPE_DIR) -> Recipe:
    """A recipe by name (`llava-1.5-7b`, one of the bundled recipes or of `directory`) or by `.toml` file path."""
    if str(name_or_path).endswith(".toml"):
        source: Traversable = pathlib.Path(name_or_path)
    else:
        source = _folder(directory).joinpath(f"{name_or_path}.toml")
    path = str(source)
    if not source.is_file():
        known = list_recipes(directory) if _folder(directory).is_dir() else []
        raise MissingFileError(f"no recipe {name_or_path!r} (known in {directory}: {known})")
    raw = tomllib.loads(source.read_text(encoding="utf-8"))
    _expect_keys(
        raw,
        {"name", "hf_id", "family", "dtype", "parameters", "sites", "prompt", "mesh"},
        path,
        "",
        optional={"images"},
    )
    _expect_keys(raw["sites"], {"default"}, path, "sites.")
    _expect_keys(raw["prompt"], {"format", "use_chat_template"}, path, "prompt.")
    if raw["family"] not in FAMILIES:
        raise RecipeError(f"{path}: family={raw['family']!r} is not one of {sorted(FAMILIES)}")
    if "{prompt}" not in raw["prompt"]["format"]:
        raise RecipeError(f"{path}: prompt.format has no {{prompt}} placeholder")
    for hint, axes in raw["mesh"].items():
        well_formed = isinstance(axes, dict) and not set(axes) - set(_MESH_AXES)
        if not well_formed or not all(isinstance(v, int) and v >= 1 for v in axes.values()):
            raise RecipeError(f"{path}: mesh.{hint} must map {list(_MESH_AXES)} to positive integers, got {axes}")
    images = raw.get("images", {})
    _expect_keys(images, set(), path, "images.", optional={"canonical_size"})
    size = images.get("canonical_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise RecipeError(f"{path}: images.canonical_size must be a positive number of pixels, got {size!r}")
    return Recipe(
        name=raw["name"],
        hf_id=raw["hf_id"],
        family=raw["family"],
        dtype=raw["dtype"],
        parameters=raw["parameters"],
        default_sites=tuple(raw["sites"]["default"]),
        prompt_format=raw["prompt"]["format"],
        use_chat_template=raw["prompt"]["use_chat_template"],
        mesh=raw["mesh"],
        path=path,
        image_size=size,
    )


def _expect_keys(table: dict, keys: set[str], path: str, prefix: str, optional: frozenset | set = frozenset()) -> None:
    missing, unknown = sorted(keys - set(table)), sorted(set(table) - keys - set(optional))
    if missing or unknown:
        raise RecipeError(
            f"{path}: missing fields {[prefix + k for k in missing]}, unknown fields {[prefix + k for k in unknown]}"
        )
