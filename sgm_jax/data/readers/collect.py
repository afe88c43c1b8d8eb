"""The checks every reader shares, made over the whole file before any work starts.

Each row's problems (a malformed field, a reused id, an image that is missing, outside the dataset's
folder, or cannot be decoded) are gathered rather than raised one at a time, so one run reports
all of them (up to `MAX_SHOWN`) with their file and row. Missing images are an error unless
`skip_missing_images`, which drops those rows and prints the count to stderr. Image paths must lie
inside the dataset's image folder (symbolic links are followed) unless `allow_outside_images`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator

from sgm_jax.data.images import load_rgb
from sgm_jax.data.samples import DatasetError, Sample

MAX_SHOWN = 20


class SampleCollector:
    """Gathers one file's samples in order with every problem found in them; `finish` returns or reports them."""

    def __init__(
        self,
        path: str,
        *,
        image_root: str | None = None,
        skip_missing_images: bool = False,
        allow_outside_images: bool = False,
    ):
        self.path = path
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        self.image_root = os.path.realpath(folder if image_root is None else image_root)
        self.skip_missing_images = skip_missing_images
        self.allow_outside_images = allow_outside_images
        self.samples: list[Sample] = []
        self.problems: list[str] = []
        self.skipped = 0
        self._where_of_id: dict[str, str] = {}

    @contextlib.contextmanager
    def row(self) -> Iterator[None]:
        """Read one row inside this block: a `DatasetError` it raises is kept as a problem and reading goes on."""
        try:
            yield
        except DatasetError as err:
            self.problems.append(str(err))

    def add(self, sample: Sample, where: str, image_as_written: str | None = None, *, keep: bool = True) -> None:
        """Keep `sample` (read at `where`) if its id is new and its image is fine; `image_as_written` is the path
        as the file gives it. With `keep=False` (a row of another split) only its id is taken."""
        if sample.id in self._where_of_id:
            self.problems.append(f"{where}: id {sample.id!r} already used at {self._where_of_id[sample.id]}")
            return
        self._where_of_id[sample.id] = where
        if not keep:
            return
        if sample.image is not None:
            written = image_as_written or sample.image
            if not os.path.exists(sample.image):
                if self.skip_missing_images:
                    self.skipped += 1
                    return
                self.problems.append(f"{where}: image {written!r} not found (looked for {sample.image})")
                return
            problem = self._image_problem(sample.image, written)
            if problem is not None:
                self.problems.append(f"{where}: {problem}")
                return
        self.samples.append(dataclasses.replace(sample, origin=where))

    def _image_problem(self, path: str, written: str) -> str | None:
        real = os.path.realpath(path)
        if not self.allow_outside_images and os.path.commonpath([real, self.image_root]) != self.image_root:
            return (
                f"image {written!r} lies outside the dataset's folder {self.image_root} (it is {real}); "
                "move it inside, or allow this with --allow-outside-images"
            )
        try:
            load_rgb(path)
        except DatasetError as err:
            return f"image {written!r}: {str(err).removeprefix(path + ': ')}"
        return None

    def finish(self, selection: str = "") -> list[Sample]:
        """The samples kept; every problem found is reported at once, and an empty result is refused
        (`selection`, such as " in split 'test'", says which samples were asked for)."""
        if self.problems:
            raise DatasetError(problems_message(self.path, self.problems))
        if self.skipped:
            print(f"{self.path}: skipped {self.skipped} rows whose image is missing", file=sys.stderr)
        if not self.samples:
            found = " with an existing image" if self.skipped else ""
            raise DatasetError(f"{self.path}: no samples{selection}{found}")
        return self.samples


def problems_message(path: str, problems: list[str]) -> str:
    """One problem as it is; several as a count, then one line each (the first `MAX_SHOWN`)."""
    if len(problems) == 1:
        return problems[0]
    shown = "\n".join(problems[:MAX_SHOWN])
    more = f"\n... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    return f"{path}: {len(problems)} problems, nothing was run:\n{shown}{more}"


def resolve(image: str, base: str) -> str:
    """An image path as written in a dataset, made absolute against the folder it is relative to."""
    return os.path.normpath(os.path.join(os.path.abspath(base), image))
