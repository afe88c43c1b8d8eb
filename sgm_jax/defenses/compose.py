"""Answering with a stack of defenses and an intervention: the stages of `base.py`, in their fixed order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sgm_jax.data.samples import Sample
from sgm_jax.decoding.answering import plain_answers
from sgm_jax.decoding.lengths import run_length
from sgm_jax.defenses.base import STAGES, Defense
from sgm_jax.interventions import intervene
from sgm_jax.runtime.errors import OptionError


def by_stage(defenses: Sequence[Defense]) -> dict[str, list[Defense]]:
    """The defenses grouped by stage, checked: at most one route, outer loop and decoder each."""
    stages = {stage: [] for stage in STAGES}
    for defense in defenses:
        if defense.stage not in stages:
            raise OptionError(f"defense {defense.name!r} has an unknown stage {defense.stage!r}")
        stages[defense.stage].append(defense)
    for stage in ("route", "outer", "decode"):
        if len(stages[stage]) > 1:
            names = ", ".join(d.name for d in stages[stage])
            raise OptionError(f"at most one {stage} defense can be stacked, got {names}")
    return stages


def steered(model, defenses: Sequence[Defense]):
    """`model` with the steering defenses' edits on it (itself when there are none)."""
    for defense in by_stage(defenses)["steer"]:
        model = defense.apply(model)
    return model


def answer_batch(
    base,
    model,
    processor,
    samples: Sequence[Sample],
    defenses: Sequence[Defense] = (),
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    rows: int = 0,
    length: int = 0,
) -> list[str]:
    """Answers of one batch: `base` is the model without the intervention, `model` the one with it (the same
    object when there is none); the steering defenses edit `model`. Every generation pass runs padded to
    `rows` rows (at least the batch's size) and `length` tokens (the run's prompt length): a run's short last
    batch, and the subsets a defense answers (routed or flagged rows), reuse its full batches' compiled
    programs."""
    stages = by_stage(defenses)
    if stages["route"] and model is base:
        raise OptionError(f"the {stages['route'][0].name} routes rows to an intervention, but none is given")
    model = steered(model, defenses)
    options = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "rows": max(rows, len(samples)),
        "length": length,
    }

    def run(target, rows: list[Sample]) -> list[str]:
        def inner(rows: list[Sample]) -> list[str]:
            for shield in stages["prompt"]:
                rows = [shield.transform(s, processor) for s in rows]
            if stages["decode"]:
                return stages["decode"][0].answer(base, target, processor, rows, **options)
            return plain_answers(target, processor, rows, **options)

        if stages["outer"]:
            return stages["outer"][0].answer(inner, base, target, processor, rows, **options)
        return inner(rows)

    samples = list(samples)
    if not stages["route"]:
        return run(model, samples)
    flags = np.asarray(stages["route"][0].flags(base, processor, samples), bool)
    answers: list[str] = [""] * len(samples)
    for use, target in ((flags, model), (~flags, base)):
        rows = np.flatnonzero(use)
        for i, answer in zip(rows, run(target, [samples[i] for i in rows]) if len(rows) else ()):
            answers[i] = answer
    return answers


def answer(
    model,
    processor,
    samples: Sequence[Sample],
    *,
    intervention=None,
    defenses: Sequence[Defense] = (),
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Answers to `samples` (prompts with their images) by `model` with `intervention`'s gates and `defenses`
    stacked on it, in the samples' order: the sample-level counterpart of `sgm_jax.generate`, which works on
    token ids and so cannot host a defense that rewrites the prompt or noises the image."""
    gated = model if intervention is None else intervene(model, intervention)
    length = run_length(model, processor, samples)
    order = sorted(range(len(samples)), key=lambda i: (len(samples[i].prompt), i))
    answers: list[str] = [""] * len(samples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        texts = answer_batch(
            model,
            gated,
            processor,
            [samples[i] for i in rows],
            defenses,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            rows=min(batch_size, len(order)),
            length=length,
        )
        for i, text in zip(rows, texts):
            answers[i] = text
    return answers
