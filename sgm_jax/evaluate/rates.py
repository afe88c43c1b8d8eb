"""Harmful rate and over-refusal, overall and per group, with bootstrap 95% intervals."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from sgm_jax.runtime.errors import InputError


def rate_with_interval(flags: Sequence[bool], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of 0/1 flags with a percentile bootstrap 95% interval (seeded, so reports are reproducible); None for
    each where there are no flags (a report shows a dash, results.json holds null: JSON has no NaN)."""
    flags = np.asarray(flags, np.float64)
    if flags.size == 0:
        return {"rate": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = flags[rng.integers(0, flags.size, (n_boot, flags.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"rate": float(flags.mean()), "low": float(low), "high": float(high), "n": int(flags.size)}


def grouped_rates(flags: Sequence[bool], groups: Sequence[Hashable], **bootstrap) -> dict[str, dict[str, float]]:
    """`rate_with_interval` over all flags (key "all") and per group value."""
    flags, groups = list(flags), list(groups)
    if len(flags) != len(groups):
        raise InputError(f"{len(flags)} flags but {len(groups)} group labels")
    out = {"all": rate_with_interval(flags, **bootstrap)}
    for group in sorted(set(groups), key=str):
        out[str(group)] = rate_with_interval([f for f, g in zip(flags, groups) if g == group], **bootstrap)
    return out


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique n-grams over all n-grams of the whitespace-split texts (diversity; 0 for none)."""
    grams = [tuple(words[i : i + n]) for text in texts for words in [text.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
