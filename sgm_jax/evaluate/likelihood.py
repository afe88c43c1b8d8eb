"""Token log-likelihoods under a model: the shared core of perplexity and multiple-choice scoring.

One jitted function sums the log-probabilities of the marked target tokens of each row;
batches are left-padded and their lengths bucketed, so a whole evaluation compiles a
handful of times.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.capture import bucket_length
from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.models.llava import check_image_tokens


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _target_logprobs(state, input_ids, attention_mask, targets, pixel_values, *, graphdef):
    model = nnx.merge(graphdef, state)
    kwargs = {"attention_mask": attention_mask}
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values
    logits = model.forward(input_ids, **kwargs)["logits"][:, :-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    token_logp = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    mask = targets[:, 1:]
    return jnp.where(mask, token_logp, 0.0).sum(-1), mask.sum(-1)


@dataclasses.dataclass(frozen=True)
class Scored:
    """Summed log-probability of each row's target tokens, and how many there were."""

    logprob: np.ndarray
    tokens: np.ndarray

    @property
    def perplexity(self) -> float:
        """Corpus perplexity: exp of the mean negative log-likelihood per target token."""
        return float(np.exp(-self.logprob.sum() / max(int(self.tokens.sum()), 1)))


def score_sequences(model: nnx.Module, sequences: Sequence[dict[str, np.ndarray]], *, batch_size: int = 8,
                    pad_id: int = 0) -> Scored:
    """Score encoded sequences: each has `input_ids` `[T]`, `targets` `[T]` (bool: which tokens count)
    and optionally `pixel_values` `[1, 3, H, W]`."""
    graphdef, state = nnx.split(model)
    image_token = getattr(model.spec, "image_token_index", None)
    logprob, tokens = np.zeros(len(sequences)), np.zeros(len(sequences), np.int64)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = bucket_length(max(len(sequences[i]["input_ids"]) for i in rows))
        ids = np.full((len(rows), length), pad_id, np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        targets = np.zeros((len(rows), length), bool)
        for r, i in enumerate(rows):
            seq = sequences[i]
            n = len(seq["input_ids"])
            ids[r, length - n:], mask[r, length - n:], targets[r, length - n:] = seq["input_ids"], 1, seq["targets"]
        images = [sequences[i]["pixel_values"] for i in rows if "pixel_values" in sequences[i]]
        pixels = np.concatenate(images) if images else None
        if image_token is not None:
            check_image_tokens(ids, 0 if pixels is None else len(pixels), model.spec)
        lp, count = _target_logprobs(state, ids, mask, targets, pixels, graphdef=graphdef)
        logprob[rows], tokens[rows] = np.asarray(lp), np.asarray(count)
    return Scored(logprob, tokens)


def encode_response(sample: Sample, processor) -> dict[str, np.ndarray]:
    """The sample with its response, targets marking the response tokens (after the rendered prompt)."""
    if sample.response is None:
        raise ValueError(f"sample {sample.id!r} has no response to score")
    full = encode(sample, processor)
    prompt = encode(dataclasses.replace(sample, response=None), processor)["input_ids"]
    ids = full["input_ids"]
    shared = int(np.argmin(np.append(ids[:len(prompt)] == prompt[:len(ids)], False)))
    targets = np.zeros(len(ids), bool)
    targets[shared:] = True
    full["targets"] = targets
    return full


def response_scores(model: nnx.Module, processor, samples: Sequence[Sample], *, batch_size: int = 8) -> Scored:
    """Log-likelihood of each sample's response given its prompt (and image), through the chat template."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return score_sequences(model, [encode_response(s, processor) for s in samples], batch_size=batch_size,
                           pad_id=tokenizer.pad_token_id or 0)


def text_scores(model: nnx.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8) -> Scored:
    """Log-likelihood of plain texts (no chat template), every token after the first counted."""
    sequences = []
    for text in texts:
        ids = np.asarray(tokenizer(text)["input_ids"], np.int32)
        if len(ids) < 2:
            raise ValueError(f"text {text[:40]!r} has fewer than two tokens; perplexity needs at least two")
        sequences.append({"input_ids": ids, "targets": np.arange(len(ids)) > 0})
    return score_sequences(model, sequences, batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0)
