"""The bundled model organism: where its files are, its training record, and a file-system path for the loader.

The organism (the top-level `models/organism`, installed as `sgm_jax.bundled`) is what the demo, the organism
sweep, the notebooks and the experiments run on; this module is the one place that knows where it lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from typing import Any

from sgm_jax.runtime.errors import MissingFileError

# The bundled organism, package data of sgm_jax (a plain directory in any ordinary install).
ORGANISM_DIR: Traversable = files("sgm_jax.bundled") / "organism"

Folder = str | os.PathLike | Traversable


def organism_card(organism_dir: Folder = ORGANISM_DIR) -> dict[str, Any]:
    """The organism's training record (its data's seed and composition, its measured numbers)."""
    card = _as_traversable(organism_dir) / "metrics.json"
    if not card.is_file():
        raise MissingFileError(
            f"{organism_dir} holds no organism (no metrics.json); sgm_jax ships it as package "
            f"data in models/organism (reinstall sgm_jax if that is missing), or retrain it "
            f"with experiments/train_organism.py --out DIR and pass that directory"
        )
    return json.loads(card.read_text(encoding="utf-8"))


def write_organism_data(directory: str, organism_dir: Folder = ORGANISM_DIR) -> dict[str, str]:
    """Write the synthetic data the organism was trained and measured on (its card's seed and composition) into
    `directory`; returns the files' paths by name (train.jsonl, test.jsonl, mcq_test.jsonl, neutral.txt, ...)."""
    from sgm_jax.data.synthetic import Composition, write_dataset

    data = organism_card(organism_dir)["dataset"]
    return write_dataset(directory, seed=data["seed"], composition=Composition(**data["composition"]))


def load_organism(organism_dir: Folder = ORGANISM_DIR):
    """`(model, processor)` of the organism, wherever its files are (package data included)."""
    from sgm_jax.weights.loading import load_model

    with real_path(organism_dir) as organism:
        return load_model(str(organism))


def real_path(directory: Folder = ORGANISM_DIR) -> contextlib.AbstractContextManager[pathlib.Path]:
    """`directory` as a file-system path for the loader (importlib.resources' `as_file` for package data)."""
    if isinstance(directory, (str, os.PathLike)):
        return contextlib.nullcontext(pathlib.Path(directory))
    return as_file(directory)


def _as_traversable(directory: Folder) -> Traversable:
    return pathlib.Path(directory) if isinstance(directory, (str, os.PathLike)) else directory
