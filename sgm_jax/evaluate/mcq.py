"""Multimodal reasoning: multiple-choice accuracy by option log-likelihood (MMBench-style), optionally circular.

Each item's question is shown with its lettered options; every option is scored as the
assistant's answer ("B. a blue circle") by its summed log-likelihood, and the best one is
the model's choice. Circular evaluation (MMBench's CircularEval) rotates the options
through every position and counts an item only if the model is right every time, which
removes the benefit of a bias towards one letter.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence

import numpy as np
from flax import nnx

from sgm_jax.data.samples import Sample
from sgm_jax.evaluate.likelihood import response_scores
from sgm_jax.runtime.errors import InputError

LETTERS = string.ascii_uppercase


def question_text(question: str, options: Sequence[str]) -> str:
    lines = [question, "Options:"] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines + ["Answer with the option's letter and text."])


def _check(sample: Sample) -> int:
    if not sample.options or len(sample.options) < 2:
        raise InputError(f"sample {sample.id!r} is not a multiple-choice item (needs at least two options)")
    answer, letters = (sample.answer or "").strip().upper(), LETTERS[: len(sample.options)]
    if len(answer) != 1 or answer not in letters:
        raise InputError(
            f"sample {sample.id!r}: answer {sample.answer!r} is not one of the option letters {list(letters)}"
        )
    return letters.index(answer)


@dataclasses.dataclass(frozen=True)
class McqResult:
    accuracy: float
    correct: np.ndarray  # [items] bool
    choices: np.ndarray  # [items, rotations] chosen option index (in the original order)


@dataclasses.dataclass(frozen=True)
class McqRows:
    """Every (item, rotation, option) as a sample whose response is that option, and where each belongs."""

    samples: list[Sample]
    layout: list[tuple[int, int, int]]  # (item, rotation, original option index) per row
    answers: list[int]
    rotations: int


def mcq_rows(samples: Sequence[Sample], *, circular: bool = False) -> McqRows:
    """The rows to score for `samples`; `circular` rotates the options through every position (CircularEval)."""
    answers = [_check(s) for s in samples]
    scored, layout = [], []
    for item, s in enumerate(samples):
        n = len(s.options)
        for shift in range(n if circular else 1):
            order = [(k + shift) % n for k in range(n)]
            shown = [s.options[k] for k in order]
            asked = dataclasses.replace(s, prompt=question_text(s.prompt, shown), options=None, answer=None)
            for position, original in enumerate(order):
                scored.append(
                    dataclasses.replace(
                        asked, id=f"{s.id}/{shift}/{position}", response=f"{LETTERS[position]}. {shown[position]}"
                    )
                )
                layout.append((item, shift, original))
    rotations = max(len(s.options) for s in samples) if circular else 1
    return McqRows(scored, layout, answers, rotations)


def mcq_result(rows: McqRows, logprob: np.ndarray) -> McqResult:
    """The choices and accuracy that the rows' log-likelihoods `[rows]` give."""
    items = len(rows.answers)
    best = np.full((items, rows.rotations), -np.inf)
    choices = np.full((items, rows.rotations), -1)
    for (item, shift, original), lp in zip(rows.layout, logprob):
        if lp > best[item, shift]:
            best[item, shift], choices[item, shift] = lp, original
    answered = choices >= 0
    correct = np.array([(choices[i][answered[i]] == rows.answers[i]).all() for i in range(items)])
    return McqResult(float(correct.mean()), correct, choices)


def mcq_accuracy(
    model: nnx.Module, processor, samples: Sequence[Sample], *, circular: bool = False, batch_size: int = 8
) -> McqResult:
    """Accuracy of choosing the answer by option log-likelihood; `circular` rotates options (CircularEval)."""
    rows = mcq_rows(samples, circular=circular)
    return mcq_result(rows, response_scores(model, processor, rows.samples, batch_size=batch_size).logprob)
