"""Token log-likelihoods under a model: the shared core of perplexity and multiple-choice scoring.

One jitted function sums the log-probabilities of the marked target tokens of each row;
batches are left-padded and their lengths bucketed, so a whole evaluation compiles a
handful of times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches, shared_length
from sgm_jax.models.batch import ModelBatch, model_batch
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.compiled import compiled
from sgm_jax.models.partitioning import place_batch
from sgm_jax.runtime import distributed
from sgm_jax.runtime.errors import InputError

LOGIT_POSITIONS = 128
"""Positions whose logits over the vocabulary exist at once: the LM head runs over the sequence this many
positions at a time, so a long batch's float32 logits (8 x 640 x 152k for Qwen2-VL: 3.1 GB) never exist whole."""


@compiled
def target_logprobs(model: CausalLM, batch: ModelBatch):
    """Summed log-probability of each row's target tokens `[batch]`, and how many there were."""
    hidden, next_ids = batch.forward(model).text_final[:, :-1], batch.input_ids[:, 1:]
    rows, length = next_ids.shape
    chunks = -(-length // LOGIT_POSITIONS)
    pad = chunks * LOGIT_POSITIONS - length

    def by_chunk(x):  # [rows, length, ...] -> [chunks, rows, LOGIT_POSITIONS, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(rows, chunks, LOGIT_POSITIONS, *x.shape[2:]), 0, 1)

    def chunk_logprobs(chunk):
        h, ids = chunk
        logp = jax.nn.log_softmax(model.logits(h).astype(jnp.float32), axis=-1)
        return jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]

    token_logp = jax.lax.map(chunk_logprobs, (by_chunk(hidden), by_chunk(next_ids)))
    token_logp = jnp.swapaxes(token_logp, 0, 1).reshape(rows, -1)[:, :length]
    mask = batch.targets[:, 1:]
    return jnp.where(mask, token_logp, 0.0).sum(-1), mask.sum(-1)


@dataclasses.dataclass(frozen=True)
class Scored:
    """Summed log-probability of each row's target tokens, and how many there were."""

    logprob: np.ndarray
    tokens: np.ndarray

    @property
    def perplexity(self):
        """Corpus perplexity: exp of the mean negative log-likelihood per target token (a float; `[K]` for the
        scores of a sweep, whose logprob is `[K, rows]`)."""
        nll = -self.logprob.sum(-1) / max(int(self.tokens.sum()), 1)
        return float(np.exp(nll)) if np.ndim(nll) == 0 else np.exp(nll)


def scoring_batches(model: CausalLM, sequences: Sequence[dict[str, np.ndarray]], batch_size: int, pad_id: int):
    """`(rows, batch)` pairs: the sequences grouped by length into checked model batches of `batch_size` rows (a
    short batch filled with repeats, whose results are dropped) and, unless the lengths spread too far, of one
    length (`shared_length`), so the scorings of one run (neutral texts, options, answers, however many of each)
    share a few compiled programs."""
    lengths = [len(s["input_ids"]) for s in sequences]
    plan = plan_batches(lengths, batch_size)
    length = shared_length(lengths, plan)
    for rows in plan:
        batch = model_batch(model, collate([sequences[i] for i in rows], pad_id, batch_size, length), pad_id)
        yield rows, place_batch(model, batch, batch_size)


def score_sequences(
    model: CausalLM, sequences: Sequence[dict[str, np.ndarray]], *, batch_size: int = 8, pad_id: int = 0
) -> Scored:
    """Score encoded sequences: each has `input_ids` `[T]`, `targets` `[T]` (bool: which tokens count)
    and optionally image inputs (`pixel_values` `[1, 3, H, W]`). In a job over several processes the batches
    are shared out and every process gets every score."""
    logprob, tokens = np.zeros(len(sequences)), np.zeros(len(sequences), np.int64)
    batches = list(scoring_batches(model, sequences, batch_size, pad_id))

    def score(item) -> dict[str, np.ndarray]:
        rows, batch = item
        lp, count = target_logprobs(model, batch)
        return {"logprob": np.asarray(lp, np.float64)[: len(rows)], "tokens": np.asarray(count, np.int64)[: len(rows)]}

    for results in distributed.rounds(batches, score, distributed.encode_arrays, distributed.decode_arrays):
        for position, scored in results:
            rows = batches[position][0]
            logprob[rows], tokens[rows] = scored["logprob"], scored["tokens"]
    return Scored(logprob, tokens)


def encode_response(sample: Sample, processor) -> dict[str, np.ndarray]:
    """The sample with its response, targets marking the response tokens (after the rendered prompt)."""
    if sample.response is None:
        raise InputError(f"sample {sample.id!r} has no response to score")
    full = encode(sample, processor)
    prompt = encode(dataclasses.replace(sample, response=None), processor)["input_ids"]
    ids = full["input_ids"]
    shared = int(np.argmin(np.append(ids[: len(prompt)] == prompt[: len(ids)], False)))
    targets = np.zeros(len(ids), bool)
    targets[shared:] = True
    full["targets"] = targets
    return full


def response_scores(model: CausalLM, processor, samples: Sequence[Sample], *, batch_size: int = 8) -> Scored:
    """Log-likelihood of each sample's response given its prompt (and image), through the chat template."""
    return score_sequences(
        model, [encode_response(s, processor) for s in samples], batch_size=batch_size, pad_id=pad_token_id(processor)
    )


def text_sequences(tokenizer, texts: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Plain texts (no chat template) encoded for scoring, every token after the first a target."""
    sequences = []
    for text in texts:
        ids = np.asarray(tokenizer(text)["input_ids"], np.int32)
        if len(ids) < 2:
            raise InputError(f"text {text[:40]!r} has fewer than two tokens; perplexity needs at least two")
        sequences.append({"input_ids": ids, "targets": np.arange(len(ids)) > 0})
    return sequences


def text_scores(model: CausalLM, tokenizer, texts: Sequence[str], *, batch_size: int = 8) -> Scored:
    """Log-likelihood of plain texts (no chat template), every token after the first counted."""
    return score_sequences(
        model, text_sequences(tokenizer, texts), batch_size=batch_size, pad_id=pad_token_id(tokenizer)
    )
