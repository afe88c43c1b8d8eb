"""Median wall time of a callable, warm-up calls excluded: these machines are noisy, medians are what we quote."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
