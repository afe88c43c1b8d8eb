"""Counting XLA compiles: how a sweep, a benchmark or a test shows that new settings did not compile again."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class CompileCount:
    count: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """Count the backend compiles (and their seconds) of every jitted program that runs inside the block."""
    seen = CompileCount()

    def listener(event: str, duration: float, **_) -> None:
        if event == _EVENT:
            seen.count += 1
            seen.seconds += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
