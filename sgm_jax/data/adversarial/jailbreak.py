"""Jailbreak templates: text wrapped around a sample's question to talk the model out of refusing.

A template file is a JSON list of strings, or a text file with one template per block
separated by blank lines. Each template holds the placeholder `{prompt}` where the question
goes; it is replaced literally, so templates may contain other braces.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

from sgm_jax.data.samples import DatasetError, Sample

PLACEHOLDER = "{prompt}"


def read_jailbreak_templates(path: str) -> list[str]:
    """The templates in `path`, in order; a template without `{prompt}` is an error naming its index (from 0)."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        try:
            templates = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(templates, list):
            raise DatasetError(f"{path}: expected a JSON list of template strings, got {type(templates).__name__}")
        for index, template in enumerate(templates):
            if not isinstance(template, str):
                raise DatasetError(
                    f"{path}: template {index} (counting from 0) is a {type(template).__name__}, not a string"
                )
    else:
        templates = [block.strip("\n") for block in re.split(r"\n[ \t]*\n", text) if block.strip()]
    if not templates:
        raise DatasetError(f"{path}: no templates")
    for index, template in enumerate(templates):
        if PLACEHOLDER not in template:
            raise DatasetError(
                f"{path}: template {index} (counting from 0, starting {template[:40]!r}) has no "
                f"{PLACEHOLDER} placeholder for the question"
            )
    return templates


def apply_jailbreak(sample: Sample, template: str, index: int) -> Sample:
    """The sample's question inside `template`, number `index` of its file: condition "jailbreak",
    id "<id>/jailbreak<index>"; the template's index is kept in meta."""
    if PLACEHOLDER not in template:
        raise DatasetError(f"jailbreak template {index} has no {PLACEHOLDER} placeholder for the question")
    return dataclasses.replace(
        sample,
        id=f"{sample.id}/jailbreak{index}",
        prompt=template.replace(PLACEHOLDER, sample.prompt),
        response=None,
        condition="jailbreak",
        meta={**sample.meta, "source_id": sample.id, "jailbreak_template": index},
    )
