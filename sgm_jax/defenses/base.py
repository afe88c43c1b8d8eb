"""What a defense is: a named, configured step that acts at one stage of answering.

Stages, and the order they stack in (documented, tested where it matters):
0. `steer`   — edits of the residual stream (MOP, DACO) put on the model the configuration answers with,
               like its intervention: every pass of every view and every likelihood (MCQ, perplexity) sees them.
               With the prober gate, they go where the intervention goes. Several may stack, one per site.
1. `route`   — which rows the configuration's intervention applies to (the prober gate); others use the base
               model. Every later stage runs on the model a row was routed to, so SGM's gates act in every
               pass of every view a defense runs.
2. `outer`   — a loop around everything below (ECSO: answer, self-check, caption, answer without the image).
3. `prompt`  — rewrites of the user turn, in the order given (shields).
4. `decode`  — replaces plain decoding (SafeCoDe). At most one.
"""

from __future__ import annotations

from typing import Any, ClassVar

STAGES = ("steer", "route", "outer", "prompt", "decode")


class Defense:
    """Base of every defense. Subclasses set `name` and `stage` and implement that stage's method:
    `steer` -> `apply(model)`; `route` -> `flags(base, processor, samples)`;
    `outer` -> `answer(inner, base, model, processor, samples, ...)`;
    `prompt` -> `transform(sample, processor)`; `decode` -> `answer(base, model, processor, samples, ...)`.
    `describe()` is what identifies its settings (answer caches and reports key on it)."""

    name: ClassVar[str] = "defense"
    stage: ClassVar[str] = "prompt"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
