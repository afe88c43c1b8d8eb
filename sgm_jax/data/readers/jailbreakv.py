"""JailBreakV-28K's published CSV (`JailBreakV_28K.csv`, `mini_JailBreakV_28K.csv`): jailbreak attacks on MLLMs.

Each row sends `jailbreak_query` with the image at `image_path` (relative to the dataset
root, the CSV's folder as published); `redteam_query` is the plain harmful request the
attack hides, kept in meta for judges. Every row is harmful (label 1); `policy` is the
category and the attack `format` ("Template", "Persuade", "Logic", "FigStep",
"Query-relevant", ...) becomes the condition "jailbreak/<format>", so reports keep attacks apart.
"""

from __future__ import annotations

import os

from sgm_jax.data.readers.collect import SampleCollector, resolve
from sgm_jax.data.readers.table import read_rows
from sgm_jax.data.samples import DatasetError, Sample

REQUIRED = ("id", "jailbreak_query", "redteam_query", "format", "policy", "image_path")
OPTIONAL = ("from", "selected_mini", "transfer_from_llm")
_FLAGS = ("selected_mini", "transfer_from_llm")


def condition_of(attack_format: str) -> str:
    """'Query-relevant' -> 'jailbreak/query-relevant'."""
    return "jailbreak/" + "_".join(attack_format.strip().lower().split())


def _flag(text: str, where: str, column: str) -> bool | None:
    lowered = text.strip().lower()
    if not lowered:
        return None
    if lowered not in ("true", "false"):
        raise DatasetError(f"{where}: {column!r} must be True or False, got {text!r}")
    return lowered == "true"


def read_jailbreakv(
    path: str, *, root: str | None = None, skip_missing_images: bool = False, allow_outside_images: bool = False
) -> list[Sample]:
    """One sample per row; image paths are resolved against `root` (by default the CSV's folder)."""
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    collector = SampleCollector(
        path, image_root=root, skip_missing_images=skip_missing_images, allow_outside_images=allow_outside_images
    )
    for where, _, row in read_rows(path, required=REQUIRED, optional=OPTIONAL, what="JailBreakV-28K"):
        with collector.row():
            for column in ("id", "jailbreak_query", "format", "policy", "image_path"):
                if not row[column].strip():
                    raise DatasetError(f"{where}: missing {column!r}")
            meta = {"redteam_query": row["redteam_query"], "format": row["format"]}
            if row["from"].strip():
                meta["from"] = row["from"]
            for column in _FLAGS:
                flag = _flag(row[column], where, column)
                if flag is not None:
                    meta[column] = flag
            image = row["image_path"].strip()
            sample = Sample(
                id=row["id"].strip(),
                prompt=row["jailbreak_query"],
                image=resolve(image, root),
                label=1,
                category=row["policy"].strip(),
                condition=condition_of(row["format"]),
                meta=meta,
            )
            collector.add(sample, where, image)
    return collector.finish()
