"""Counting XLA compiles: how a sweep, a benchmark or a test shows that new settings did not compile again."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Iterator

import jax

_EVENT = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"  # JAX reports a program loaded from the cache as a compile too


@dataclasses.dataclass
class CompileCount:
    count: int = 0
    """Programs compiled."""
    seconds: float = 0.0
    """Seconds spent compiling them."""
    cached: int = 0
    """Programs loaded from the persistent compilation cache instead (`sgm_jax.runtime.compile_cache`)."""
    programs: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    """How many of the compiled programs each jitted function made (one per shape bucket, model structure and
    static arguments it met)."""

    def summary(self) -> str:
        """The compiled programs by function, most first: `decode x2, target_logprobs x6`."""
        return ", ".join(f"{name} x{n}" for name, n in self.programs.most_common())


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """Count the backend compiles (and their seconds) of every jitted program that runs inside the block, and the
    programs the persistent cache supplied."""
    seen = CompileCount()
    hit = []

    def on_event(event: str, **_) -> None:
        if event == _HIT:
            hit.append(True)

    def on_duration(event: str, duration: float, fun_name: str = "?", **_) -> None:
        if event != _EVENT:
            return
        if hit:
            hit.pop()
            seen.cached += 1
        else:
            seen.count += 1
            seen.seconds += duration
            seen.programs[fun_name.removeprefix("jit(").removesuffix(")")] += 1

    jax.monitoring.register_event_listener(on_event)
    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
