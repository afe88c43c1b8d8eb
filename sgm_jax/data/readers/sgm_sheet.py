"""The SGM release's spreadsheets (dut-laowang/ml-aura-vl `llava1/train.xlsx`, `test.xlsx`) and CSVs shaped like them.

Columns: `name` (the image file, in an image folder), `prompt`, `output` (the model's
transcript, teacher-forced as the response when scoring experts), `label` (1 toxic, 0
benign; blank in the unlabelled test sheet), and optionally `category` or `scenario`.
The release pairs a toxic and a benign transcript of the same image, so an image name
repeats; ids are "<image name without suffix>/row<N>".

The release's `output` embeds the prompt, in a different template per class: toxic rows read
`USER:  \n<question> ASSISTANT: <answer>`, benign rows `USER:\nASSISTANT: <question> \n\nASSISTANT: <answer>`
(with `prompt` just "USER:"). Kept whole, a classifier could learn the template instead of the
toxicity, so the turns are stripped: the question becomes the prompt and the answer the response,
and both classes reach the model through its one chat template (`sgm_jax.data.encode`). `meta` says what was done:
`output_template` (the template found, or None where the output matched none and is kept whole),
`output` (the cell as written) and `sheet_prompt` (the `prompt` cell, where it is not the question).
"""

from __future__ import annotations

import os
import re

from sgm_jax.data.readers.collect import SampleCollector, resolve
from sgm_jax.data.readers.table import read_rows
from sgm_jax.data.samples import DatasetError, Sample

REQUIRED = ("name", "prompt")
OPTIONAL = ("output", "label", "category", "scenario")

# The headers are exact; the whitespace around the question and before the answer varies from row to row in the
# release (" ", "\n\n", " \n\n", "  \n", ...), so it is matched loosely and dropped.
TEMPLATES = {
    name: re.compile(header + r"(?P<question>.*?\S)\s*ASSISTANT:\s*(?P<answer>\S.*)", re.DOTALL)
    for name, header in (("user-turn", "USER:  \n"), ("assistant-echo", "USER:\nASSISTANT: "))
}


def parse_label(text: str, where: str) -> int | None:
    """'0' or '1' (spreadsheets may store 1.0, read as '1'); blank means unlabelled."""
    text = text.strip()
    if not text:
        return None
    if text not in ("0", "1"):
        raise DatasetError(f"{where}: label must be 0 or 1, got {text!r}")
    return int(text)


def strip_turns(prompt: str, output: str) -> tuple[str, str | None, dict[str, str | None]]:
    """The prompt, the response and what `meta` records of the stripping, for one row's `prompt` and `output`."""
    if not output.strip():
        return prompt, None, {}
    for name, template in TEMPLATES.items():
        match = template.fullmatch(output)
        if match:
            question = match["question"]
            return (
                question,
                match["answer"],
                {"output_template": name, "output": output, **({"sheet_prompt": prompt} if prompt != question else {})},
            )
    return prompt, output, {"output_template": None}


def read_sgm_sheet(
    path: str, *, image_dir: str | None = None, skip_missing_images: bool = False, allow_outside_images: bool = False
) -> list[Sample]:
    """One sample per row; images are looked up in `image_dir` (by default the sheet's own folder)."""
    image_dir = os.path.dirname(os.path.abspath(path)) if image_dir is None else image_dir
    collector = SampleCollector(
        path, image_root=image_dir, skip_missing_images=skip_missing_images, allow_outside_images=allow_outside_images
    )
    for where, number, row in read_rows(path, required=REQUIRED, optional=OPTIONAL, what="SGM sheet"):
        with collector.row():
            name, prompt = row["name"].strip(), row["prompt"]
            if not name:
                raise DatasetError(f"{where}: missing 'name' (the image file)")
            if not prompt.strip():
                raise DatasetError(f"{where}: missing 'prompt'")
            category, scenario = row["category"].strip(), row["scenario"].strip()
            prompt, response, stripped = strip_turns(prompt, row["output"])
            sample = Sample(
                id=f"{os.path.splitext(name)[0]}/row{number}",
                prompt=prompt,
                image=resolve(name, image_dir),
                response=response,
                label=parse_label(row["label"], where),
                category=category or scenario or None,
                meta={"name": name, **({"scenario": scenario} if category and scenario else {}), **stripped},
            )
            collector.add(sample, where, name)
    return collector.finish()
