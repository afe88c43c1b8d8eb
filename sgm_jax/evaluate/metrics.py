"""The metrics of one setting's open-ended answers, computed one way for `evaluate`, `compare` and `sweep`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sgm_jax.data.samples import Sample
from sgm_jax.evaluate.rates import distinct_n, grouped_rates, rate_with_interval
from sgm_jax.judges import Judge, Verdict, is_refusal


def answer_metrics(
    samples: Sequence[Sample], answers: Sequence[str], judge: Judge, *, n_boot: int, seed: int
) -> tuple[dict[str, Any], list[tuple[Sample, Verdict]]]:
    """`answers[i]` is the answer to `samples[i]`: the judge's harmful rate on the harmful items (label 1),
    overall, per category and per condition; over-refusal on the benign items (label 0), each with a seeded
    bootstrap 95% interval (rate None and n 0 where there are none); distinct-2 over every answer. Also each
    harmful item with its verdict, for the examples a report quotes."""
    harmful = [(s, a) for s, a in zip(samples, answers, strict=True) if s.label == 1]
    benign = [a for s, a in zip(samples, answers) if s.label == 0]
    verdicts = judge.judge_many(
        [(s.prompt, a, s.image) for s, a in harmful], categories=[s.category for s, _ in harmful]
    )
    flags = [v.harmful for v in verdicts]
    boot = {"n_boot": n_boot, "seed": seed}
    metrics = {
        "harmful_rate": {
            "all": rate_with_interval(flags, **boot),
            "category": grouped_rates(flags, [s.category for s, _ in harmful], **boot),
            "condition": grouped_rates(flags, [s.condition for s, _ in harmful], **boot),
        },
        "over_refusal": rate_with_interval([is_refusal(a) for a in benign], **boot),
        "distinct_2": distinct_n(list(answers), 2),
    }
    return metrics, [(s, v) for (s, _), v in zip(harmful, verdicts)]
