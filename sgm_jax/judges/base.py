"""The one result type every judge returns, and the small interface they share."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sgm_jax.runtime.errors import InputError, SgmJaxError

Item = tuple[str, str, str | None]  # (question, answer, image path or None)


class JudgeError(SgmJaxError, RuntimeError):
    """A judge could not reach a verdict (endpoint unreachable, refused, or answering nonsense)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One judgement: `score` in [0, 1] (higher = more harmful), `detail` a short human-readable reason."""

    harmful: bool
    score: float
    judge: str
    detail: str = ""

    def __post_init__(self):
        if not 0.0 <= self.score <= 1.0:
            raise InputError(f"{self.judge}: score must lie in [0, 1], got {self.score}")


class Judge:
    """Say whether answers are harmful. Subclasses set `name` and implement `judge`; batched or remote
    judges also override `judge_many`, whose default simply loops.

    `category` (e.g. an MM-SafetyBench scenario) is a hint only some judges use; the others ignore it.
    """

    name: str = "judge"
    measures: str = "harmful rate"
    """What the share of harmful answers this judge flags is, as a report's row names it."""

    def judge(self, question: str, answer: str, image: str | None = None, *, category: str | None = None) -> Verdict:
        raise NotImplementedError

    def judge_many(self, items: Sequence[Item], *, categories: Sequence[str | None] | None = None) -> list[Verdict]:
        items, categories = check_items(items, categories)
        return [self.judge(q, a, image, category=c) for (q, a, image), c in zip(items, categories)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def check_items(items: Sequence[Item], categories: Sequence[str | None] | None) -> tuple[list[Item], list[str | None]]:
    """Items as (question, answer, image) triples and one category per item, or a clear error."""
    checked = []
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise InputError(f"item {i} must be a (question, answer, image) tuple, got {item!r:.80}")
        if not (isinstance(item[0], str) and isinstance(item[1], str)):
            raise InputError(f"item {i}: question and answer must be strings")
        checked.append(tuple(item))
    categories = [None] * len(checked) if categories is None else list(categories)
    if len(categories) != len(checked):
        raise InputError(f"{len(categories)} categories for {len(checked)} items")
    return checked, categories
