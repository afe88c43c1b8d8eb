"""Choosing each concept's stimuli from CLIP-style similarities (DACO's geometric score), bring your own scores.

For concept `c` and an image-caption pair `x`, `dist(c, x) = sqrt(-(ln s(c, x_img) + ln s(c, x_txt)))` with
both similarities in (0, 1]: a pair ranks well only if its image *and* its caption match. The best-ranked
pairs are the concept's positives, the worst-ranked its negatives. Nothing is downloaded: the similarities come
from a CSV file with the columns `concept, stimulus, image_similarity, text_similarity`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping

from sgm_jax.data.samples import DatasetError
from sgm_jax.runtime.errors import MissingFileError
from sgm_jax.steering.dictionary import LABELS, Concept

COLUMNS = ("concept", "stimulus", "image_similarity", "text_similarity")


def geometric_distance(image_similarity: float, text_similarity: float) -> float:
    return math.sqrt(-(math.log(image_similarity) + math.log(text_similarity)))


def read_scores(path: str) -> dict[str, list[tuple[float, str]]]:
    """`{concept: [(distance, stimulus), ...]}` from a scores CSV; a bad row is named by its line."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"scores file {path} does not exist") from None
    out: dict[str, list[tuple[float, str]]] = {}
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DatasetError(f"{path}: the header lacks the columns {missing} (it needs {list(COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            try:
                s_img, s_txt = float(row["image_similarity"]), float(row["text_similarity"])
            except (TypeError, ValueError):
                raise DatasetError(f"{path}, line {line}: similarities must be numbers") from None
            if not (0.0 < s_img <= 1.0 and 0.0 < s_txt <= 1.0):
                raise DatasetError(
                    f"{path}, line {line}: similarities must lie in (0, 1] (rescale cosines, e.g. (1 + cos) / 2), "
                    f"got {s_img} and {s_txt}"
                )
            out.setdefault(row["concept"], []).append((geometric_distance(s_img, s_txt), row["stimulus"]))
    if not out:
        raise DatasetError(f"{path} holds no scores")
    return out


def select_stimuli(
    scores: Mapping[str, list[tuple[float, str]]],
    labels: Mapping[str, str],
    *,
    positives: int,
    negatives: int,
    groups: Mapping[str, str] | None = None,
) -> list[Concept]:
    """Each concept's `positives` best-ranked and `negatives` worst-ranked stimuli (ties by stimulus id)."""
    unlabelled = sorted(set(scores) - set(labels))
    if unlabelled:
        raise DatasetError(f"concepts {unlabelled[:5]} have scores but no label ({', '.join(LABELS)})")
    concepts = []
    for name, ranked in scores.items():
        ranked = sorted(ranked)
        if len(ranked) < positives + negatives:
            raise DatasetError(
                f"concept {name!r} has {len(ranked)} scored stimuli, fewer than {positives} + {negatives} asked for"
            )
        concepts.append(
            Concept(
                name,
                labels[name],
                tuple(s for _, s in ranked[:positives]),
                tuple(s for _, s in ranked[len(ranked) - negatives :]),
                (groups or {}).get(name, ""),
            )
        )
    return concepts
