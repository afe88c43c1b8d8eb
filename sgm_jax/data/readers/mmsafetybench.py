"""MM-SafetyBench as published (github.com/isXinLiu/MM-SafetyBench): 13 scenarios of harmful queries.

Layout of the data root:
  processed_questions/<scenario>.json   {"0": {"Question": ..., "Key Phrase": ..., "Rephrased Question": ...,
                                                "Rephrased Question(SD)": ..., ...}, "1": ...}
  imgs/<scenario>/{SD,SD_TYPO,TYPO}/<id>.jpg

Each image type is asked with the question field the benchmark pairs it with (SD with
"Rephrased Question(SD)", SD_TYPO and TYPO with "Rephrased Question"); the text-only
condition asks the original "Question" with no image. Every item is harmful (label 1) and
its scenario (spelt as published, e.g. "01-Illegal_Activitiy") is its category.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from sgm_jax.data.readers.collect import SampleCollector, resolve
from sgm_jax.data.samples import DatasetError, Sample

IMAGE_TYPES = {"SD": "Rephrased Question(SD)", "SD_TYPO": "Rephrased Question", "TYPO": "Rephrased Question"}
TEXT_ONLY_FIELD = "Question"
QUESTIONS_DIR = "processed_questions"
IMAGES_DIR = "imgs"
_META_FIELDS = {
    "Question": "question",
    "Key Phrase": "key_phrase",
    "Phrase Type": "phrase_type",
    "Changed Question": "changed_question",
}


def scenarios_in(root: str) -> list[str]:
    """The scenario names a data root holds, in file-name order."""
    folder = os.path.join(root, QUESTIONS_DIR)
    if not os.path.isdir(folder):
        raise DatasetError(f"{root}: not an MM-SafetyBench data root (no {QUESTIONS_DIR}/ folder)")
    return sorted(name[: -len(".json")] for name in os.listdir(folder) if name.endswith(".json"))


def _questions(path: str) -> list[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason})") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected a JSON object mapping question ids to questions, got {type(data).__name__}"
        )
    if not data:
        raise DatasetError(f"{path}: no questions")
    return sorted(data.items(), key=_numeric_first)


def _numeric_first(item: tuple[str, Any]) -> tuple[int, int, str]:
    """Question ids "0", "1", ..., "10" in number order (not "10" before "2")."""
    key = item[0]
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _field(question: dict[str, Any], name: str, where: str) -> str:
    value = question.get(name)
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: missing {name!r}")
    return value


def read_mmsafetybench(
    root: str,
    *,
    image_types: Sequence[str] = ("SD", "SD_TYPO", "TYPO"),
    text_only: bool = False,
    scenarios: Sequence[str] | None = None,
    skip_missing_images: bool = False,
    allow_outside_images: bool = False,
) -> list[Sample]:
    """Every chosen scenario's questions under each chosen image type (and text-only if asked), scenario by scenario.

    Conditions are "sd", "sd_typo", "typo" and "text_only"; ids read "<scenario>/<condition>/<question id>".
    """
    image_types = [image_types] if isinstance(image_types, str) else list(image_types)
    if isinstance(scenarios, str):
        scenarios = [scenarios]
    unknown_types = [t for t in image_types if t not in IMAGE_TYPES]
    if unknown_types:
        raise DatasetError(f"{root}: unknown MM-SafetyBench image types {unknown_types} (known: {list(IMAGE_TYPES)})")
    if not image_types and not text_only:
        raise DatasetError(f"{root}: no image types and no text-only questions chosen, so nothing to read")
    available = scenarios_in(root)
    if scenarios is None:
        scenarios = available
    unknown_scenarios = [s for s in scenarios if s not in available]
    if unknown_scenarios:
        raise DatasetError(f"{root}: no scenarios {unknown_scenarios} in {QUESTIONS_DIR}/ (it has {available})")
    collector = SampleCollector(
        root, skip_missing_images=skip_missing_images, allow_outside_images=allow_outside_images
    )
    for scenario in scenarios:
        path = os.path.join(root, QUESTIONS_DIR, f"{scenario}.json")
        for question_id, question in _questions(path):
            with collector.row():
                where = f"{path}: question {question_id!r}"
                if not isinstance(question, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(question).__name__}")
                meta = {
                    key: question[field] for field, key in _META_FIELDS.items() if isinstance(question.get(field), str)
                }
                for image_type in image_types:
                    condition = image_type.lower()
                    image = os.path.join(IMAGES_DIR, scenario, image_type, f"{question_id}.jpg")
                    sample = Sample(
                        id=f"{scenario}/{condition}/{question_id}",
                        prompt=_field(question, IMAGE_TYPES[image_type], where),
                        image=resolve(image, root),
                        label=1,
                        category=scenario,
                        condition=condition,
                        meta=dict(meta),
                    )
                    collector.add(sample, where, image)
                if text_only:
                    collector.add(
                        Sample(
                            id=f"{scenario}/text_only/{question_id}",
                            prompt=_field(question, TEXT_ONLY_FIELD, where),
                            label=1,
                            category=scenario,
                            condition="text_only",
                            meta=dict(meta),
                        ),
                        where,
                    )
    return collector.finish()
