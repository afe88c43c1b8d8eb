"""KV-cached, jit-compiled decoding: one prefill over the prompt, then a `lax.while_loop` of one-token steps.

Both phases run through the same modules (so the same gates: an intervention acts
identically on the prompt and on every new token), in one jitted function of the
model's split state, so new alpha values never recompile. The cache is built fresh
by each call from the gated model's own prefill and never outlives it, so no step
can read keys or values that were computed without the intervention. Prompts are
left-padded to a bucketed length (`sgm_jax.decoding.batching`) and the number of new tokens is a
traced limit inside a bucketed buffer (`token_buffer`), so a research loop over many
prompts, or a defense that generates a 4-token check, a caption and an answer, compiles a
handful of shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.batch import model_batch
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.compiled import compiled
from sgm_jax.models.partitioning import place_batch
from sgm_jax.runtime.errors import InputError


def generate(
    model: CausalLM,
    input_ids,
    *,
    attention_mask=None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    processor=None,
    **images,
) -> np.ndarray:
    """New tokens `[batch, n]` after each left-padded prompt row (numpy int32).

    `images` are the image inputs as the processor returns them (`pixel_values=...`).

    Greedy when `temperature == 0`; otherwise samples from `softmax(logits / temperature)`
    restricted to the `top_k` most likely tokens (0 = all) and then to the smallest set
    holding `top_p` of the probability (1.0 = all), reproducibly per `seed`.

    A row stops at its first EOS token and emits `pad_token_id` after it; generation ends
    when every row has stopped (then `n < max_new_tokens`, as in transformers) or after
    `max_new_tokens`. `eos_token_id` (one id or several) and `pad_token_id` default to
    the checkpoint's (generation_config.json, else config.json, as transformers does), then
    to the tokenizer's when `processor` is given; with no EOS id (or an empty list) every
    row runs the full `max_new_tokens`. The pad id falls back to the first EOS id, then 0.
    """
    args, static = decode_arguments(
        model,
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        processor=processor,
        **images,
    )
    tokens, steps = decode(model, *args, **static)
    return np.asarray(tokens)[:, : int(steps)]


def decode_arguments(
    model: CausalLM,
    input_ids,
    *,
    attention_mask=None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    processor=None,
    **images,
) -> tuple[tuple, dict]:
    """`(args, static)` for `decode(model, *args, **static)`, checked and padded as `generate` describes: the
    host-side half of generation, shared with a sweep that decodes the same prompts under K gate states."""
    ids, mask = _prompt(input_ids, attention_mask)
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    batch = model_batch(model, {"input_ids": ids, "attention_mask": mask, **images})
    batch = place_batch(model, batch, len(ids))
    eos, pad = special_ids(model, processor, eos_token_id, pad_token_id)
    sampling = {
        "temperature": np.float32(temperature if temperature > 0 else 1.0),
        "top_k": np.int32(top_k),
        "top_p": np.float32(top_p),
    }
    args = (
        batch.input_ids,
        batch.attention_mask,
        batch.inputs,
        np.asarray(eos, np.int32),
        np.int32(pad),
        jax.random.key(seed),
        sampling,
    )
    args += (np.int32(max_new_tokens),)
    return args, {"buffer": token_buffer(max_new_tokens), "greedy": temperature == 0}


def token_buffer(max_new_tokens: int) -> int:
    """The compiled room for new tokens: the next power of two, at least 32. The count itself is traced, so
    every count up to the buffer shares one program; the cost is cache slots that stay masked."""
    return max(32, 1 << (int(max_new_tokens) - 1).bit_length())


def _prompt(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise InputError(f"input_ids must be [batch, seq], got shape {ids.shape}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask {mask.shape} and input_ids {ids.shape} must have the same shape")
    mask = (mask > 0).astype(np.int32)
    empty = np.flatnonzero(mask.sum(1) == 0)
    if len(empty):
        raise InputError(f"prompt rows {empty.tolist()} have no tokens (attention_mask is all 0)")
    right_padded = np.flatnonzero((np.diff(mask, axis=1) < 0).any(1))
    if len(right_padded):
        raise InputError(
            f"prompt rows {right_padded.tolist()} have padding after their tokens; generation needs "
            f"padding on the left (tokenizer.padding_side = 'left')"
        )
    return ids.astype(np.int32), mask


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")


def special_ids(model, processor, eos_token_id, pad_token_id) -> tuple[tuple[int, ...], int]:
    """EOS ids and the pad id as transformers' `generate` picks them: as given, else the checkpoint's
    generation_config.json / config (`model.special_tokens`, set by `load_model`), else the tokenizer's,
    else none (never stop); the pad id falls back to the first EOS id, then 0."""
    checkpoint = dict(model.special_tokens)
    tokenizer = getattr(processor, "tokenizer", processor)
    if eos_token_id is None:
        eos_token_id = checkpoint.get("eos_token_id")
    if pad_token_id is None:
        pad_token_id = checkpoint.get("pad_token_id")
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = tokenizer.eos_token_id
    if pad_token_id is None and tokenizer is not None:
        pad_token_id = tokenizer.pad_token_id
    eos = (
        ()
        if eos_token_id is None
        else ((int(eos_token_id),) if np.isscalar(eos_token_id) else tuple(int(i) for i in eos_token_id))
    )
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    return eos, int(pad_token_id)


def next_token(logits: jax.Array, key: jax.Array, sampling: dict[str, jax.Array], *, greedy: bool) -> jax.Array:
    """Traceable: one token per row from `[batch, vocab]` logits (transformers' order: temperature, top-k, top-p)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling["temperature"]
    vocab = logits.shape[-1]
    descending = -jnp.sort(-logits, axis=-1)
    kth = jnp.take(descending, jnp.clip(sampling["top_k"], 1, vocab) - 1, axis=-1)[:, None]
    logits = jnp.where((sampling["top_k"] > 0) & (logits < kth), -jnp.inf, logits)
    descending = jnp.where((sampling["top_k"] > 0) & (descending < kth), -jnp.inf, descending)
    probs = jax.nn.softmax(descending, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs < sampling["top_p"]) | (sampling["top_p"] >= 1)
    cutoff = jnp.min(jnp.where(keep, descending, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@compiled(static_argnames=("buffer", "greedy"))
def decode(
    model: CausalLM, input_ids, attention_mask, images, eos, pad, key, sampling, limit, *, buffer: int, greedy: bool
):
    """New tokens `[batch, buffer]` (pad after each row's EOS and after `limit` tokens) and how many steps ran."""
    batch, length = input_ids.shape
    cache = model.init_cache(batch, length + buffer)
    return _decode_loop(
        lambda: model.forward_with_cache(input_ids, cache, attention_mask=attention_mask, last_only=True, **images),
        lambda previous, cache: model.forward_with_cache(previous, cache, last_only=True),
        functools.partial(next_token, sampling=sampling, greedy=greedy),
        eos,
        pad,
        key,
        limit,
        buffer,
    )


@compiled(static_argnames=("graphdef", "buffer", "greedy"))
def decode_swept(
    gates, rest, input_ids, attention_mask, images, eos, pad, key, sampling, limit, *, graphdef, buffer, greedy
):
    """`decode` under K gate states (`sgm_jax.interventions.GateStack`): tokens `[K, batch, buffer]` and
    each setting's step count `[K]`, what K separate calls give. The loop runs outside the vmap and each pass of
    the model inside it: a vmapped while loop would carry one step counter per setting and turn every cache
    write into a scatter (measured on the organism: 1.5x slower than K calls one by one)."""
    batch, length = input_ids.shape
    model = lambda g: nnx.merge(graphdef, g, rest)
    cache = jax.vmap(lambda g: model(g).init_cache(batch, length + buffer))(gates)
    pick = functools.partial(next_token, sampling=sampling, greedy=greedy)
    tokens, _ = _decode_loop(
        lambda: jax.vmap(
            lambda g, c: model(g).forward_with_cache(
                input_ids, c, attention_mask=attention_mask, last_only=True, **images
            )
        )(gates, cache),
        lambda previous, cache: jax.vmap(lambda g, p, c: model(g).forward_with_cache(p, c, last_only=True))(
            gates, previous, cache
        ),
        jax.vmap(pick, in_axes=(0, None)),  # each setting draws as its own call would
        eos,
        pad,
        key,
        limit,
        buffer,
    )
    # a setting's own call stops once each of its rows has ended (a pad id that is also an EOS id fills the
    # buffer past `limit`: not an ending)
    ended = jnp.isin(tokens, eos) & (jnp.arange(buffer) < limit)
    last = jnp.where(ended.any(-1), jnp.argmax(ended, axis=-1), limit - 1).max(-1)
    return tokens, jnp.minimum(last + 1, limit).astype(jnp.int32)


def _decode_loop(prefill, step, choose, eos, pad, key, limit, buffer: int):
    """Greedy or sampled decoding after `prefill() -> (logits [..., batch, vocab], cache)`, one token a step
    with `step(previous [..., batch, 1], cache)`, until `limit` (at most `buffer`) tokens or every row's EOS."""
    finished = lambda token: jnp.isin(token, eos)
    logits, cache = prefill()
    first = choose(logits, jax.random.fold_in(key, 0))
    tokens = jnp.full(first.shape + (buffer,), pad, jnp.int32).at[..., 0].set(first)

    def running(carry):
        count, _, done, _ = carry
        return (count < limit) & ~jnp.all(done)

    def step_once(carry):
        count, tokens, done, cache = carry
        previous = jax.lax.dynamic_slice_in_dim(tokens, count - 1, 1, axis=-1)
        logits, cache = step(previous, cache)
        token = jnp.where(done, pad, choose(logits, jax.random.fold_in(key, count)))
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[..., None], count, axis=-1)
        return count + 1, tokens, done | finished(token), cache

    steps, tokens, _, _ = jax.lax.while_loop(running, step_once, (jnp.int32(1), tokens, finished(first), cache))
    return tokens, steps
