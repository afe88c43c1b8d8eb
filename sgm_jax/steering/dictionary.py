"""Concept dictionaries: one unit atom per concept at one site, read from the model by contrast.

For concept `c` with positive stimuli `X+` and negative stimuli `X-` (images with captions, or prompts), the
atom is `d_c = mean_{X+} z - mean_{X-} z`, normalised, where `z` is the site's activation pooled over each
stimulus (DACO's contrastive reading; the difference is from the concept's own negatives). Each concept has a
group (for reports) and a label: `undesirable` (steered away from), `desirable` (promoted) or `benign`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgm_jax.data.samples import DatasetError, Sample
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.features import prompt_features
from sgm_jax.runtime.artifact_files import check_made_for, load_artifact, save_artifact
from sgm_jax.runtime.artifacts import DICTIONARY
from sgm_jax.runtime.errors import InputError, MissingFileError

LABELS = ("undesirable", "desirable", "benign")


@dataclasses.dataclass(frozen=True)
class Concept:
    name: str
    label: str
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    group: str = ""


def read_concepts(path: str) -> list[Concept]:
    """A concepts file: JSON `{"concepts": [{"name", "label", "group", "positives": [ids], "negatives": [ids]}]}`."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"concepts file {path} does not exist") from None
    except ValueError as err:
        raise DatasetError(f"{path} is not JSON ({err})") from None
    rows = data.get("concepts") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise DatasetError(f'{path}: expected {{"concepts": [...]}} with at least one concept')
    concepts = []
    for i, row in enumerate(rows):
        where = f"{path}, concept {i}"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise DatasetError(f"{where}: each concept is an object with a string 'name'")
        missing = [k for k in ("label", "positives", "negatives") if k not in row]
        if missing:
            raise DatasetError(f"{where} ({row['name']!r}) lacks {missing}")
        concepts.append(
            Concept(
                row["name"],
                row["label"],
                tuple(map(str, row["positives"])),
                tuple(map(str, row["negatives"])),
                str(row.get("group", "")),
            )
        )
    return concepts


def write_concepts(path: str, concepts: Sequence[Concept]) -> None:
    from sgm_jax.runtime.atomic import write_json

    write_json(path, {"concepts": [dataclasses.asdict(c) for c in concepts]})


def _check_concepts(concepts: Sequence[Concept], ids: set[str]) -> None:
    names = [c.name for c in concepts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DatasetError(f"concepts {twice} appear more than once")
    for c in concepts:
        if c.label not in LABELS:
            raise DatasetError(f"concept {c.name!r}: label {c.label!r} is not one of {list(LABELS)}")
        if not c.positives or not c.negatives:
            raise DatasetError(
                f"concept {c.name!r} needs positive and negative stimuli, got {len(c.positives)} and {len(c.negatives)}"
            )
        unknown = [s for s in c.positives + c.negatives if s not in ids]
        if unknown:
            raise DatasetError(f"concept {c.name!r} names stimuli that are not in the stimulus set: {unknown[:5]}")


def concept_atoms(responses: np.ndarray, ids: Sequence[str], concepts: Sequence[Concept]) -> np.ndarray:
    """`[concepts, width]`: each concept's normalised difference of mean responses (positives minus negatives)."""
    row = {sid: i for i, sid in enumerate(ids)}
    atoms = np.zeros((len(concepts), responses.shape[1]), np.float64)
    for k, c in enumerate(concepts):
        pos = responses[[row[s] for s in c.positives]].astype(np.float64).mean(0)
        neg = responses[[row[s] for s in c.negatives]].astype(np.float64).mean(0)
        diff = pos - neg
        norm = np.linalg.norm(diff)
        if norm == 0:
            raise DatasetError(f"concept {c.name!r}: its positives and negatives read the same, so it has no direction")
        atoms[k] = diff / norm
    return atoms.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ConceptDictionary:
    site: str
    atoms: np.ndarray  # float32 [concepts, width], unit rows
    center: np.ndarray  # float32 [width]: the mean response over every stimulus read (what MOP codes about)
    concepts: tuple[str, ...]
    labels: tuple[str, ...]
    groups: tuple[str, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def undesirable(self) -> np.ndarray:
        return np.asarray([label == "undesirable" for label in self.labels])

    @property
    def desirable(self) -> np.ndarray:
        return np.asarray([label == "desirable" for label in self.labels])

    def relabelled(self, undesirable: Sequence[str] = (), desirable: Sequence[str] = ()) -> ConceptDictionary:
        """The same atoms with the named concepts' labels replaced (the others keep theirs)."""
        unknown = [n for n in (*undesirable, *desirable) if n not in self.concepts]
        if unknown:
            raise InputError(f"concepts {unknown} are not in the dictionary (it has {list(self.concepts)[:8]}…)")
        labels = [
            "undesirable" if n in undesirable else "desirable" if n in desirable else label
            for n, label in zip(self.concepts, self.labels)
        ]
        return dataclasses.replace(self, labels=tuple(labels))

    def save(self, path: str) -> None:
        meta = {
            **self.metadata,
            "site": self.site,
            "concepts": list(self.concepts),
            "labels": list(self.labels),
            "groups": list(self.groups),
        }
        save_artifact(path, DICTIONARY, {"atoms": self.atoms, "center": self.center}, meta)


def load_dictionary(path: str, *, model=None) -> ConceptDictionary:
    """A dictionary saved by `ConceptDictionary.save`; with `model`, refused unless made from it."""
    tensors, meta = load_artifact(path, DICTIONARY)
    if model is not None:
        check_made_for(path, DICTIONARY, meta, fingerprint=model_fingerprint(model), site=None)
    rest = {k: v for k, v in meta.items() if k not in ("site", "concepts", "labels", "groups")}
    return ConceptDictionary(
        meta["site"],
        tensors["atoms"],
        tensors["center"],
        tuple(meta["concepts"]),
        tuple(meta["labels"]),
        tuple(meta["groups"]),
        rest,
    )


def build_dictionary(
    model,
    processor,
    stimuli: Sequence[Sample],
    concepts: Sequence[Concept],
    *,
    site: str,
    pooling: str = "mean",
    tokens: str = "all",
    batch_size: int = 16,
) -> ConceptDictionary:
    """Read every stimulus once at `site` and make one atom per concept."""
    ids = [s.id for s in stimuli]
    _check_concepts(concepts, set(ids))
    position = {sid: i for i, sid in enumerate(ids)}
    used = sorted({s for c in concepts for s in c.positives + c.negatives}, key=position.__getitem__)
    chosen = [stimuli[position[s]] for s in used]
    responses = prompt_features(
        model, processor, chosen, site, pooling, tokens=tokens, batch_size=batch_size, reader="dictionary"
    )
    return ConceptDictionary(
        site=site,
        atoms=concept_atoms(responses, used, concepts),
        center=responses.mean(0).astype(np.float32),
        concepts=tuple(c.name for c in concepts),
        labels=tuple(c.label for c in concepts),
        groups=tuple(c.group for c in concepts),
        metadata={
            "pooling": pooling,
            "tokens": tokens,
            "stimuli": len(used),
            "model_fingerprint": model_fingerprint(model),
        },
    )
