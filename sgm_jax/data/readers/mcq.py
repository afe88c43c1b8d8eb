"""Benign multiple-choice VQA items (MMBench-like) in a .csv, .tsv, .xlsx or .jsonl file, to check reasoning survives.

Columns: `question`, options `A` and `B` (and optionally `C`, `D`; an empty one means fewer
options, but only at the end, so letters keep their meaning), `answer` (a letter), and
optionally `image` (a path relative to the file), `id` or `index`, `category`, `hint`
(shown before the question, as MMBench does), `split`, and MMBench's `l2-category`,
`source` and `comment` (kept in meta). Every item is benign (label 0).
"""

from __future__ import annotations

import os

from sgm_jax.data.readers.collect import SampleCollector, resolve
from sgm_jax.data.readers.table import read_rows
from sgm_jax.data.samples import DatasetError, Sample

LETTERS = ("A", "B", "C", "D")
REQUIRED = ("question", "A", "B", "answer")
OPTIONAL = ("C", "D", "image", "id", "index", "category", "hint", "split", "l2-category", "source", "comment")
_META_COLUMNS = ("index", "l2-category", "source", "comment")


def _options(row: dict[str, str], where: str) -> tuple[str, ...]:
    present = [bool(row[letter].strip()) for letter in LETTERS]
    count = present.index(False) if False in present else len(LETTERS)
    if count < 2:
        raise DatasetError(f"{where}: needs options A and B")
    if any(present[count:]):
        later = [letter for letter, given in zip(LETTERS[count:], present[count:]) if given]
        raise DatasetError(
            f"{where}: option {LETTERS[count]} is empty but {later} are not; fill the options from A without gaps"
        )
    return tuple(row[letter] for letter in LETTERS[:count])


def read_mcq(path: str, *, skip_missing_images: bool = False, allow_outside_images: bool = False) -> list[Sample]:
    """One item per row; ids are the `id` column, else `index`, else the row (line) number."""
    base = os.path.dirname(os.path.abspath(path))
    collector = SampleCollector(
        path, skip_missing_images=skip_missing_images, allow_outside_images=allow_outside_images
    )
    for where, number, row in read_rows(path, required=REQUIRED, optional=OPTIONAL, what="multiple-choice"):
        with collector.row():
            question = row["question"]
            if not question.strip():
                raise DatasetError(f"{where}: missing 'question'")
            options = _options(row, where)
            answer = row["answer"].strip().upper()
            letters = list(LETTERS[: len(options)])
            if answer not in letters:
                raise DatasetError(f"{where}: answer {row['answer']!r} is not one of the option letters {letters}")
            hint = row["hint"].strip()
            image = row["image"].strip()
            sample = Sample(
                id=row["id"].strip() or row["index"].strip() or str(number),
                prompt=f"{hint}\n{question}" if hint else question,
                image=resolve(image, base) if image else None,
                label=0,
                category=row["category"].strip() or None,
                split=row["split"].strip() or None,
                options=options,
                answer=answer,
                meta={column: row[column] for column in _META_COLUMNS if row[column].strip()},
            )
            collector.add(sample, where, image or None)
    return collector.finish()
