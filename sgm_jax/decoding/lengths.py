"""Prompt lengths against the model's positions: one rule, applied before any work and again per batch.

A prompt (with its response, if it has one, and the tokens to be generated) longer than the checkpoint's
`max_position_embeddings` is an error naming the sample and the limit: positions beyond it were never
trained, so a silently truncated or extrapolated answer would be measured as if it were the model's.
"""

from __future__ import annotations

from collections.abc import Sequence

from sgm_jax.data.encode import render
from sgm_jax.data.samples import Sample
from sgm_jax.runtime.buckets import bucket_length
from sgm_jax.runtime.errors import SgmJaxError


class ContextLengthError(SgmJaxError, ValueError):
    """A sample does not fit the model's positions; the message names it and the limit."""


def estimated_lengths(samples: Sequence[Sample], processor, image_tokens: int) -> list[int]:
    """Token count of each rendered sample plus its image's expansion: cheap, and enough to order samples."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return [len(tokenizer(render(s, processor))["input_ids"]) + (image_tokens if s.image else 0) for s in samples]


def run_length(model, processor, samples: Sequence[Sample]) -> int:
    """The prompt length every generation batch of a run pads to: the bucket of its longest (estimated) prompt.

    One length means one compiled generate program per model for the whole run. A decoding step costs about
    its weight reads whatever the cache length, so the padding costs a little prefill, where a length bucket of
    its own would cost a compile (a minute at 7B on a TPU). A batch longer than the estimate pads to its own.
    """
    if not samples:
        return 0
    return bucket_length(max(estimated_lengths(samples, processor, model.tokens_per_image)))


def check_lengths(model, samples: Sequence[Sample], lengths: Sequence[int], *, new_tokens: int = 0) -> None:
    """Refuse, naming every sample that does not fit (up to 10), if `length + new_tokens` exceeds
    `model.max_positions` (None: the checkpoint states no limit)."""
    limit = getattr(model, "max_positions", None)
    if limit is None:
        return
    over = [(s, n) for s, n in zip(samples, lengths) if n + new_tokens > limit]
    if not over:
        return
    generated = f" + {new_tokens} new tokens" if new_tokens else ""
    lines = [f"{s.where}: {n} tokens{generated} > {limit}" for s, n in over[:10]]
    more = f"\n... and {len(over) - 10} more" if len(over) > 10 else ""
    remedy = "shorten these prompts" + (" or lower --max-new-tokens" if new_tokens else "")
    raise ContextLengthError(
        f"{len(over)} samples are longer than the model's {limit} positions (max_position_embeddings); "
        f"{remedy}:\n" + "\n".join(lines) + more
    )
