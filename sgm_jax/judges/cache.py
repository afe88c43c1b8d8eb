"""An on-disk cache of guard replies, one small JSON file per judged item, so a rerun costs nothing.

Files are written atomically (temp file + rename), so concurrent threads or processes never see a
partial entry. The key hashes what decides the reply, never a credential.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from sgm_jax.runtime.atomic import write_json


def cache_key(base_url: str, model: str, template: str, question: str, answer: str) -> str:
    payload = json.dumps([base_url, model, template, question, answer], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_cache_dir() -> str:
    """`$SGM_JAX_JUDGE_CACHE`, else `$XDG_CACHE_HOME/sgm_jax/judge` (`~/.cache/sgm_jax/judge`)."""
    if os.environ.get("SGM_JAX_JUDGE_CACHE"):
        return os.environ["SGM_JAX_JUDGE_CACHE"]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "sgm_jax", "judge")


class ReplyCache:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + ".json")

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._path(key), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_json(self._path(key), entry)
