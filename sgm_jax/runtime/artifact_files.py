"""Steering artifacts as safetensors with a JSON header: one loader and writer for dictionaries, SAEs and
annotations, which refuses another kind of file, or one made for another model or site, in the user's words."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, safe_open, save_file

from sgm_jax.runtime.artifacts import KIND_KEY, NOUNS, check_kind
from sgm_jax.runtime.atomic import atomic_write
from sgm_jax.runtime.errors import InputError


def save_artifact(path: str, kind: str, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
    header = {KIND_KEY: kind, "metadata": json.dumps(metadata)}
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=header))


def load_artifact(path: str, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    check_kind(path, kind, InputError)
    try:
        with safe_open(path, "numpy") as f:
            header = f.metadata() or {}
        tensors = load_file(path)
        metadata = json.loads(header.get("metadata", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path} is a damaged {NOUNS[kind]} ({err}); make it again") from None
    return tensors, metadata


def check_made_for(path: str, kind: str, metadata: dict[str, Any], *, fingerprint: str | None, site: str | None):
    """Refuse an artifact made for another model (fingerprint) or another site."""
    if fingerprint is not None and metadata.get("model_fingerprint") not in (None, fingerprint):
        raise InputError(
            f"{path}: this {NOUNS[kind]} was made for another model (fingerprint {metadata.get('model_fingerprint')}, "
            f"this model's is {fingerprint})"
        )
    if site is not None and metadata.get("site") != site:
        raise InputError(f"{path}: this {NOUNS[kind]} is for site {metadata.get('site')!r}, not {site!r}")
