"""The SGM release's spreadsheets (dut-laowang/ml-aura-vl `llava1/train.xlsx`, `test.xlsx`) and CSVs shaped like them.

Columns: `name` (the image file, in an image folder), `prompt`, `output` (the model's
transcript, teacher-forced as the response when scoring experts), `label` (1 toxic, 0
benign; blank in the unlabelled test sheet), and optionally `category` or `scenario`.
The release pairs a toxic and a benign transcript of the same image, so an image name
repeats; ids are "<image name without suffix>/row<N>".
"""

from __future__ import annotations

import os

from sgm_jax.data.readers.collect import SampleCollector, resolve
from sgm_jax.data.readers.table import read_rows
from sgm_jax.data.samples import DatasetError, Sample

REQUIRED = ("name", "prompt")
OPTIONAL = ("output", "label", "category", "scenario")


def parse_label(text: str, where: str) -> int | None:
    """'0' or '1' (spreadsheets may store 1.0, read as '1'); blank means unlabelled."""
    text = text.strip()
    if not text:
        return None
    if text not in ("0", "1"):
        raise DatasetError(f"{where}: label must be 0 or 1, got {text!r}")
    return int(text)


def read_sgm_sheet(path: str, *, image_dir: str | None = None, skip_missing_images: bool = False) -> list[Sample]:
    """One sample per row; images are looked up in `image_dir` (by default the sheet's own folder)."""
    image_dir = os.path.dirname(os.path.abspath(path)) if image_dir is None else image_dir
    collector = SampleCollector(path, skip_missing_images=skip_missing_images)
    for where, number, row in read_rows(path, required=REQUIRED, optional=OPTIONAL, what="SGM sheet"):
        name, prompt = row["name"].strip(), row["prompt"]
        if not name:
            raise DatasetError(f"{where}: missing 'name' (the image file)")
        if not prompt.strip():
            raise DatasetError(f"{where}: missing 'prompt'")
        category, scenario = row["category"].strip(), row["scenario"].strip()
        sample = Sample(id=f"{os.path.splitext(name)[0]}/row{number}", prompt=prompt,
                        image=resolve(name, image_dir), response=row["output"] if row["output"].strip() else None,
                        label=parse_label(row["label"], where), category=category or scenario or None,
                        meta={"name": name, **({"scenario": scenario} if category and scenario else {})})
        collector.add(sample, where, name)
    return collector.finish()
