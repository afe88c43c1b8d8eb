"""`read_jsonl`: the native JSONL format (fields in `sgm_jax.data.samples`), checked whole before it is used."""

from __future__ import annotations

import os

from sgm_jax.data.readers.collect import SampleCollector
from sgm_jax.data.samples import DatasetError, Sample, jsonl_objects, sample_from_row


def read_jsonl(
    path: str, *, split: str | None = None, skip_missing_images: bool = False, allow_outside_images: bool = False
) -> list[Sample]:
    """Read a native JSONL dataset, optionally one split, and open every image it names.

    Every problem of every line is reported at once with its file and line. Missing image files are errors
    unless `skip_missing_images`, which drops those rows (the count is printed to stderr); images must lie in
    the file's folder unless `allow_outside_images`.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: " + ("a folder, not a JSONL file" if os.path.isdir(path) else "no such file"))
    base = os.path.dirname(os.path.abspath(path))
    collector = SampleCollector(
        path, skip_missing_images=skip_missing_images, allow_outside_images=allow_outside_images
    )
    for line_no, row in jsonl_objects(path, on_error=collector.problems.append):
        where = f"{path}:{line_no}"
        with collector.row():
            sample = sample_from_row(row, where, base)
            collector.add(sample, where, row.get("image"), keep=split is None or sample.split == split)
    return collector.finish(f" in split {split!r}" if split is not None else "")
