"""The checks every reader shares: images that exist, ids used once, and no silently empty result.

Missing images behave as in `read_jsonl`: an error naming the row, or with
`skip_missing_images` the row is dropped and the count printed to stderr.
"""

from __future__ import annotations

import os
import sys

from sgm_jax.data.samples import DatasetError, Sample


class SampleCollector:
    """Gathers one file's samples in order, refusing a reused id and counting rows skipped for a missing image."""

    def __init__(self, path: str, *, skip_missing_images: bool):
        self.path = path
        self.skip_missing_images = skip_missing_images
        self.samples: list[Sample] = []
        self.skipped = 0
        self._where_of_id: dict[str, str] = {}

    def add(self, sample: Sample, where: str, image_as_written: str | None = None) -> None:
        """Keep `sample` (read at `where`) if its image exists; `image_as_written` is the path as the file gives it."""
        if sample.id in self._where_of_id:
            raise DatasetError(f"{where}: id {sample.id!r} already used at {self._where_of_id[sample.id]}")
        self._where_of_id[sample.id] = where
        if sample.image is not None and not os.path.isfile(sample.image):
            if self.skip_missing_images:
                self.skipped += 1
                return
            raise DatasetError(
                f"{where}: image {image_as_written or sample.image!r} not found (looked for {sample.image})"
            )
        self.samples.append(sample)

    def finish(self) -> list[Sample]:
        """The samples kept; reports the skipped count and refuses an empty result."""
        if self.skipped:
            print(f"{self.path}: skipped {self.skipped} rows whose image is missing", file=sys.stderr)
        if not self.samples:
            raise DatasetError(f"{self.path}: no samples" + (" with an existing image" if self.skipped else ""))
        return self.samples


def resolve(image: str, base: str) -> str:
    """An image path as written in a dataset, made absolute against the folder it is relative to."""
    return os.path.normpath(os.path.join(os.path.abspath(base), image))
