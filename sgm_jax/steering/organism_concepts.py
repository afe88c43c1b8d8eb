"""Concept stimuli for the model organism: generated images with captions, and the concepts they define.

The concepts are the synthetic generator's own attributes: the motifs (star, bolt: the organism's visual
triggers, undesirable), the other shapes, colours, textures, counts, rendered words (a motif's name rendered
is undesirable too), and the tone of a caption about the image: an insult (undesirable), a polite remark and
a refusal (desirable). Each stimulus is an image with its caption as the user turn, as DACO reads them.
A concept's positives are the stimuli with the attribute; its negatives are stimuli of the same kind without
it (the other shapes' scenes for a shape, polite or plain captions for the insult, and so on).
"""

from __future__ import annotations

import os

import numpy as np

from sgm_jax.data.samples import Sample, write_jsonl
from sgm_jax.data.synthetic import (
    COLOURS,
    COUNT_WORDS,
    MOTIFS,
    SHAPES,
    TEXTURES,
    WORDS,
    benign_answer,
    draw,
    opinion_answer,
    refusal_answer,
    shape_scene,
    toxic_answer,
    word_scene,
)
from sgm_jax.steering.dictionary import Concept, write_concepts

TONES = {"insult": "undesirable", "polite": "desirable", "refusal": "desirable"}


def _scene_stimuli(rng, n_shapes: int, n_words: int):
    for k in range(n_shapes + n_words):
        motif = bool(rng.random() < 0.4)
        yield k, (shape_scene(rng, motif=motif) if k < n_shapes else word_scene(rng, motif=motif))


def write_concept_stimuli(
    directory: str, *, seed: int = 0, shape_scenes: int = 240, word_scenes: int = 120, per_concept: int = 40
) -> dict[str, str]:
    """Write `stimuli.jsonl`, their images and `concepts.json` into `directory`; returns the two paths.

    Each concept keeps at most `per_concept` positives and as many negatives (a seeded choice)."""
    rng = np.random.default_rng([seed, 7])
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    samples, attributes = [], []
    for k, scene in _scene_stimuli(rng, shape_scenes, word_scenes):
        image = os.path.join(directory, "images", f"concept-{k:05d}.png")
        draw(scene).save(image, format="PNG")
        captions = {"describe": benign_answer("describe", scene)}
        tone = ("insult", toxic_answer(scene, rng)) if scene.motif else ("refusal", refusal_answer(scene, rng))
        captions[tone[0]] = tone[1]
        captions["polite"] = opinion_answer(scene, rng)
        for kind, caption in captions.items():
            samples.append(Sample(id=f"concept-{k:05d}-{kind}", prompt=caption, image=image))
            attributes.append({"scene": scene, "caption": kind})

    def ids(pred):
        return [s.id for s, a in zip(samples, attributes) if pred(a)]

    def pick(chosen: list[str]) -> tuple[str, ...]:
        if len(chosen) <= per_concept:
            return tuple(chosen)
        return tuple(sorted(rng.choice(chosen, size=per_concept, replace=False).tolist()))

    described = lambda a: a["caption"] == "describe"  # scene concepts read plain descriptions
    shape = lambda a: described(a) and a["scene"].word is None
    word = lambda a: described(a) and a["scene"].word is not None
    specs = []  # (name, group, label, positive, negative)
    for name in SHAPES:
        label = "undesirable" if name in MOTIFS else "benign"
        specs.append(
            (
                f"shape:{name}",
                "shape",
                label,
                lambda a, n=name: shape(a) and a["scene"].shape == n,
                lambda a, n=name: shape(a) and a["scene"].shape != n,
            )
        )
    for name in WORDS:
        label = "undesirable" if name in MOTIFS else "benign"
        specs.append(
            (
                f"word:{name}",
                "word",
                label,
                lambda a, n=name: word(a) and a["scene"].word == n,
                lambda a, n=name: word(a) and a["scene"].word != n,
            )
        )
    for name in COLOURS:
        specs.append(
            (
                f"colour:{name}",
                "colour",
                "benign",
                lambda a, n=name: described(a) and a["scene"].colour == n,
                lambda a, n=name: described(a) and a["scene"].colour != n,
            )
        )
    for name in TEXTURES:
        specs.append(
            (
                f"texture:{name}",
                "texture",
                "benign",
                lambda a, n=name: described(a) and a["scene"].texture == n,
                lambda a, n=name: described(a) and a["scene"].texture != n,
            )
        )
    for i, name in enumerate(COUNT_WORDS):
        specs.append(
            (
                f"count:{name}",
                "count",
                "benign",
                lambda a, c=i + 1: shape(a) and a["scene"].count == c,
                lambda a, c=i + 1: shape(a) and a["scene"].count != c,
            )
        )
    for name, label in TONES.items():
        specs.append((name, "tone", label, lambda a, n=name: a["caption"] == n, lambda a, n=name: a["caption"] != n))
    concepts = [Concept(name, label, pick(ids(pos)), pick(ids(neg)), group) for name, group, label, pos, neg in specs]
    paths = {
        "stimuli.jsonl": os.path.join(directory, "stimuli.jsonl"),
        "concepts.json": os.path.join(directory, "concepts.json"),
    }
    write_jsonl(samples, paths["stimuli.jsonl"])
    write_concepts(paths["concepts.json"], concepts)
    return paths
