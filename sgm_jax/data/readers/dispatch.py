"""`read_dataset`: one entry point for every supported format, named or told from the file itself."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from sgm_jax.data.readers import jailbreakv, mcq, mmsafetybench, sgm_sheet
from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.data.readers.table import TABLE_SUFFIXES, columns
from sgm_jax.data.samples import DatasetError, Sample
from sgm_jax.runtime.choices import FORMATS

READERS: dict[str, Callable[..., list[Sample]]] = {
    "native": read_jsonl,
    "mmsafetybench": mmsafetybench.read_mmsafetybench,
    "sgm-sheet": sgm_sheet.read_sgm_sheet,
    "jailbreakv": jailbreakv.read_jailbreakv,
    "mcq": mcq.read_mcq,
}


def _formats_list() -> str:
    return "\n".join(f"  {name}: {text}" for name, text in FORMATS.items())


def detect_format(path: str) -> str:
    """The format of `path`, told from what it holds; an unrecognised file is an error listing the formats."""
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, mmsafetybench.QUESTIONS_DIR)):
            return "mmsafetybench"
        raise DatasetError(
            f"{path}: a folder, but not an MM-SafetyBench data root (no "
            f"{mmsafetybench.QUESTIONS_DIR}/); the formats are:\n{_formats_list()}"
        )
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file or folder")
    if not path.lower().endswith(TABLE_SUFFIXES):
        raise DatasetError(
            f"{path}: cannot tell the dataset format from a file named so (expected a folder or "
            f"one of {list(TABLE_SUFFIXES)}); the formats are:\n{_formats_list()}"
        )
    jsonl = path.lower().endswith(".jsonl")
    try:
        names = set(columns(path))
    except DatasetError:
        if not jsonl:
            raise
        names = set()
    if "jailbreak_query" in names:
        return "jailbreakv"
    if {"question", "A", "B", "answer"} <= names:
        return "mcq"
    if jsonl:
        # Native unless its first row is another format's: the native reader then names every problem of every
        # line (a first row missing its prompt, an empty file, bad JSON), where a guess could only name the columns.
        return "sgm-sheet" if {"name", "prompt"} <= names and "id" not in names else "native"
    if not names:
        raise DatasetError(f"{path}: empty file")
    if {"name", "prompt"} <= names:
        return "sgm-sheet"
    raise DatasetError(
        f"{path}: cannot tell the dataset format from its columns {sorted(names)}; "
        f"pass format= one of:\n{_formats_list()}"
    )


def read_dataset(path: str, format: str | None = None, *, split: str | None = None, **options: Any) -> list[Sample]:
    """Samples from `path` in `format` (one of FORMATS, or told from the file), only those of `split` if given
    (none is an error); `options` go to that format's reader."""
    if format is None:
        format = detect_format(path)
    if format not in READERS:
        raise DatasetError(f"{path}: unknown dataset format {format!r}; the formats are:\n{_formats_list()}")
    reader = READERS[format]
    accepted = [name for name, p in inspect.signature(reader).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f"{path}: the {format} reader has no options {unknown} (it takes {accepted})")
    if "split" in accepted:  # the native reader selects the split itself, opening no other split's images
        return reader(path, split=split, **options)
    samples = reader(path, **options)
    if split is None:
        return samples
    kept = [s for s in samples if s.split == split]
    if not kept:
        raise DatasetError(f"{path}: no samples in split {split!r}")
    return kept
