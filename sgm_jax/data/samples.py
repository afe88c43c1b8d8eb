"""The native dataset format: one JSON object per line (MM-TOXIC-QA style).

Fields:
  id        unique string (or integer) naming the sample
  prompt    the user's text
  image     optional image path, relative to the JSONL file
  response  optional assistant text, teacher-forced after the prompt (how the SGM release
            scored the model's own transcripts)
  label     1 toxic / harmful, 0 benign (needed to score experts)
  category  optional category name (e.g. an MM-SafetyBench scenario)
  split     optional split name (train / test / ...)
  condition optional evaluation condition: "standard" (the default) or an adversarial one
            (e.g. "typo", "sd_typo", "trigger", "jailbreak"); reports keep conditions apart
  options   optional list of answer options (multiple-choice items)
  answer    optional correct option (multiple-choice items)
  meta      optional object with anything else

Any other field is an error, so a misspelt `lable` cannot silently drop labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sgm_jax.runtime.atomic import atomic_write
from sgm_jax.runtime.errors import SgmJaxError

FIELDS = ("id", "prompt", "image", "response", "label", "category", "split", "condition", "options", "answer", "meta")


class DatasetError(SgmJaxError, ValueError):
    """A dataset file or row is malformed; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str
    prompt: str
    image: str | None = None
    response: str | None = None
    label: int | None = None
    category: str | None = None
    split: str | None = None
    condition: str = "standard"
    options: tuple[str, ...] | None = None
    answer: str | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    # Where the sample was read ("file:line"), for messages; not part of its content.
    origin: str = dataclasses.field(default="", compare=False)
    # A system turn before the user's, rendered through the chat template (a defense's safety prompt).
    system: str | None = None

    @property
    def where(self) -> str:
        """The sample's file and row when it was read from one, else its id, for messages."""
        return self.origin or f"sample {self.id!r}"


def require_labels(samples: Iterable[Sample], task: str) -> None:
    """Refuse open-ended samples without a label where `task` measures rates over them (harmful items 1, benign
    0), naming the first few by where they were read; a command calls this before it loads the model."""
    unlabelled = [s.where for s in samples if not s.options and s.label is None]
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} open-ended samples have no label (first: {', '.join(unlabelled[:5])}); {task} needs "
            "label 1 (harmful) or 0 (benign) on each"
        )


def utf8_lines(lines: Iterator[str], path: str) -> Iterator[str]:
    """Lines of a text file opened as UTF-8, with a clear error if it is not."""
    try:
        yield from lines
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from None


def jsonl_objects(path: str, on_error: Callable[[str], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` for each non-blank line of a JSONL file; bad JSON names the file and line.

    With `on_error`, a bad line's message is passed to it and reading goes on with the next line."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(utf8_lines(f, path), 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"{where}: not valid JSON ({err.msg})"
            else:
                if isinstance(row, dict):
                    yield line_no, row
                    continue
                problem = f"{where}: expected a JSON object, got {type(row).__name__}"
            if on_error is None:
                raise DatasetError(problem)
            on_error(problem)


def sample_from_row(row: Any, where: str, base: str) -> Sample:
    """The sample a native JSONL row describes (`where` is its file:line, `base` the folder images are relative
    to); a malformed field is a `DatasetError` naming the line, field and value."""
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise DatasetError(f"{where}: unknown fields {unknown} (known: {list(FIELDS)}; put extras under 'meta')")
    for name in ("id", "prompt"):
        if row.get(name) in (None, ""):
            raise DatasetError(f"{where}: missing {name!r}")
    if not isinstance(row["prompt"], str):
        raise DatasetError(f"{where}: 'prompt' must be a string")
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        raise DatasetError(f"{where}: 'id' must be a string or an integer, got {row['id']!r}")
    for name in ("image", "response", "category", "split", "condition", "answer"):
        if row.get(name) is not None and not isinstance(row[name], str):
            raise DatasetError(f"{where}: {name!r} must be a string, got {row[name]!r}")
    if row.get("meta") is not None and not isinstance(row["meta"], dict):
        raise DatasetError(f"{where}: 'meta' must be an object, got {row['meta']!r}")
    label = row.get("label")
    if label is not None and (isinstance(label, bool) or label not in (0, 1)):
        raise DatasetError(f"{where}: label must be 0 or 1, got {label!r}")
    image = row.get("image")
    if image is not None:
        image = os.path.normpath(os.path.join(base, image))
    options = row.get("options")
    if options is not None and not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
        raise DatasetError(f"{where}: 'options' must be a list of strings")
    return Sample(
        id=str(row["id"]),
        prompt=row["prompt"],
        image=image,
        response=row.get("response"),
        label=None if label is None else int(label),
        category=row.get("category"),
        split=row.get("split"),
        condition=row.get("condition") or "standard",
        options=None if options is None else tuple(options),
        answer=row.get("answer"),
        meta=row.get("meta") or {},
    )


def dataset_hash(samples: Iterable[Sample]) -> str:
    """A content hash of the samples, their order and the bytes of their images."""
    digest = hashlib.sha256()
    for s in samples:
        fields = dataclasses.asdict(s)
        del fields["origin"]
        if fields["system"] is None:  # datasets have none: their hashes stay what they were
            del fields["system"]
        fields["image"] = None if s.image is None else os.path.basename(s.image)
        digest.update(json.dumps(fields, sort_keys=True, default=list).encode())
        if s.image is not None:
            with open(s.image, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def to_row(sample: Sample, base: str) -> dict[str, Any]:
    """The JSONL row of a sample, its image path made relative to `base` (the output file's folder)."""
    row = {"id": sample.id, "prompt": sample.prompt}
    if sample.image is not None:
        row["image"] = os.path.relpath(sample.image, base)
    for name in ("response", "label", "category", "split", "options", "answer"):
        value = getattr(sample, name)
        if value is not None:
            row[name] = list(value) if name == "options" else value
    if sample.condition != "standard":
        row["condition"] = sample.condition
    if sample.meta:
        row["meta"] = sample.meta
    return row


def write_jsonl(samples: Iterable[Sample], path: str) -> None:
    """Write samples in the native format (atomically); `read_jsonl` reads back the same samples."""
    base = os.path.dirname(os.path.abspath(path))
    lines = [json.dumps(to_row(s, base), ensure_ascii=False) for s in samples]

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    atomic_write(path, write)
