"""Any offline judge written in Python: `python:MODULE:NAME` names a `Judge` subclass, or a callable (a function, or
a class whose instances are callable) that maps a list of answers to harmfulness scores in [0, 1].

The module is imported as Python imports any of the user's own code (installed, or on PYTHONPATH): the spec names
code to run, not a file to deserialise, so nothing is unpickled. A score above 0.5 is harmful.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np

from sgm_jax.judges.base import Item, Judge, Verdict
from sgm_jax.runtime.errors import OptionError


class ScoreJudge(Judge):
    """A judge from a function of the answers: `score(answers) -> [n]` in [0, 1]; harmful above `threshold`."""

    def __init__(self, score: Callable[[list[str]], Sequence[float]], name: str, threshold: float = 0.5):
        self.score, self.name, self.threshold = score, name, threshold
        self.measures = f"{name} rate"

    def judge(self, question: str, answer: str, image: str | None = None, *, category: str | None = None) -> Verdict:
        return self.judge_many([(question, answer, image)])[0]

    def judge_many(self, items: Sequence[Item], *, categories=None) -> list[Verdict]:
        scores = np.asarray(self.score([answer for _, answer, _ in items]), np.float64).reshape(-1)
        if len(scores) != len(items):
            raise OptionError(f"judge {self.name} gave {len(scores)} scores for {len(items)} answers")
        return [Verdict(bool(s > self.threshold), float(s), self.name, f"score {s:.3f}") for s in scores]


def python_judge(target: str, **options) -> Judge:
    """The judge `MODULE:NAME` names (see the module's docstring); `options` go to a `Judge` subclass."""
    module_name, _, name = target.rpartition(":")
    if not module_name or not name:
        raise OptionError(f"judge 'python:{target}': write it as 'python:MODULE:NAME'")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except ModuleNotFoundError as err:
        raise OptionError(
            f"judge 'python:{target}': no module {err.name!r} (is it installed or on PYTHONPATH?)"
        ) from None
    except AttributeError:
        raise OptionError(f"judge 'python:{target}': module {module_name!r} has no {name!r}") from None
    if isinstance(found, type) and issubclass(found, Judge):
        return found(**options)
    made = found() if isinstance(found, type) else found
    if isinstance(made, Judge):
        return made
    if not callable(made):
        raise OptionError(f"judge 'python:{target}' is neither a Judge nor a callable of the answers")
    return ScoreJudge(made, f"python:{target}")
