"""SafeCoDe (Safety-aware Contrastive Decoding), the official code's main path, inside one jitted decode.

A verdict per sample (from a pluggable source, never the test label) picks the branch:
- unsafe (and K >= 2): at the first response position score every refusal phrase by the contrastive
  probability `softmax(z_real - alpha z_noised)` of its tokens, shortlist the `top_k`, prefer one that
  says sorry / cannot / unable, force its first K tokens, then sample a short continuation (T 0.7, p 0.85);
- safe: up to K guided steps on `softmax(z_real - alpha/2 z_noised)` with the refusal tokens damped by
  `1 - lambda/2` (greedy first token, skipping a quote; then T 0.8), stopped early once the prefix is two
  words with a capitalised first word of two letters, dropped if it holds "|", "$" or "MS" (the first token
  kept if clean); then ordinary sampling on the real view (T 0.8, p 0.9).
The noised view (one seeded Gaussian draw, sigma 0.1 in [0, 1] pixel space, re-quantised to 8 bits, then the
checkpoint's own processor) runs as extra batch rows sharing the text and the cache layout, only during the
guided steps: afterwards the decode continues on the real rows alone, so the second view costs nothing then.
Whatever gates the model carries act on both views and every step.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sgm_jax.data.encode import encode
from sgm_jax.data.images import load_rgb
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.batching import collate, pad_token_id
from sgm_jax.decoding.generate import next_token, special_ids
from sgm_jax.decoding.lengths import check_lengths
from sgm_jax.defenses.base import Defense
from sgm_jax.defenses.refusal_tokens import RefusalVocabulary, refusal_vocabulary
from sgm_jax.defenses.verdicts import VerdictSource
from sgm_jax.models.batch import ModelBatch, model_batch
from sgm_jax.models.compiled import compiled
from sgm_jax.models.partitioning import place_batch
from sgm_jax.runtime.buckets import bucket_rows
from sgm_jax.runtime.errors import InputError, OptionError

# Continuation budget after the guided tokens on an unsafe verdict, by family (official table: LLaVA 20,
# Qwen 30); families the official code does not run take LLaVA's. The safe budget is 256 for both.
UNSAFE_TOKENS = {"qwen2_vl": 30, "qwen2_5_vl": 30}
UNSAFE_TOKENS_DEFAULT = 20
SAFE_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class SafeCoDe(Defense):
    """The decoder's settings, defaults from the official code (`safecode/main.py`, docs/REPRODUCE.md).

    It samples with its own settings (as the official code does); an evaluation's temperature does not change
    them, while its `max_new_tokens` bounds every answer. Set the temperatures to 0 for a greedy SafeCoDe."""

    verdicts: VerdictSource
    alpha: float = 0.3
    max_steps: int = 5
    top_k: int = 20
    lambda_supp: float = 1.0
    noise_std: float = 0.1
    noise_seed: int = 0
    unsafe_tokens: int | None = None  # None: the family's (20 LLaVA, 30 Qwen)
    safe_tokens: int = SAFE_TOKENS
    guided_temperature: float = 0.8  # 0 (here and below): greedy
    safe_temperature: float = 0.8
    safe_top_p: float = 0.9
    unsafe_temperature: float = 0.7
    unsafe_top_p: float = 0.85

    name = "safecode"
    stage = "decode"

    def __post_init__(self):
        if not 0 <= self.lambda_supp <= 2:
            raise OptionError(f"SafeCoDe lambda_supp must be in [0, 2] (2 bans refusal tokens), got {self.lambda_supp}")
        for field in ("max_steps", "top_k", "safe_tokens"):
            if getattr(self, field) < 1:
                raise OptionError(f"SafeCoDe {field} must be >= 1, got {getattr(self, field)}")
        if self.unsafe_tokens is not None and self.unsafe_tokens < 1:
            raise OptionError(f"SafeCoDe unsafe_tokens must be >= 1, got {self.unsafe_tokens}")
        if self.noise_std < 0 or self.alpha < 0:
            raise OptionError("SafeCoDe alpha and noise_std must be >= 0")

    def describe(self) -> dict:
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "verdicts"}
        return {"name": self.name, "verdicts": self.verdicts.describe(), **settings}

    def budgets(self, model) -> tuple[int, int]:
        """(unsafe, safe) continuation budgets for this model."""
        unsafe = self.unsafe_tokens or UNSAFE_TOKENS.get(model.model_type, UNSAFE_TOKENS_DEFAULT)
        return int(unsafe), int(self.safe_tokens)

    def answer(
        self, base, model, processor, samples: Sequence[Sample], *, max_new_tokens, seed, rows, length, **_
    ) -> list[str]:
        unsafe = self.verdicts.flags(base, processor, samples)
        tokens = safecode_tokens(
            model, processor, samples, unsafe, self, max_new_tokens=max_new_tokens, seed=seed, rows=rows, length=length
        )
        tokenizer = getattr(processor, "tokenizer", processor)
        return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]


def noised_image(image: Image.Image, std: float, seed: int, sample_id: str) -> Image.Image:
    """The official noised view: RGB in [0, 1] at native resolution plus one N(0, std^2) draw per pixel and
    channel, clipped and re-quantised to 8 bits. The draw is seeded per (seed, sample id), so it is the same
    on every run and for every configuration."""
    salt = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng([seed, salt])
    pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    noisy = np.clip(pixels + rng.normal(0.0, std, pixels.shape).astype(np.float32), 0.0, 1.0)
    return Image.fromarray(np.round(noisy * 255.0).astype(np.uint8))


def two_view_batch(model, processor, samples: Sequence[Sample], settings: SafeCoDe, length: int = 0) -> ModelBatch:
    """Rows `[real..., noised...]`: the same prompts, the second half with the noised image (a text-only
    sample repeats its own row, so its contrast is `(1 - alpha) z`), left-padded to `length` tokens at least."""
    prompts = [dataclasses.replace(s, response=None) for s in samples]
    real = [encode(s, processor) for s in prompts]
    noised = [
        encode(s, processor, image=noised_image(load_rgb(s.image), settings.noise_std, settings.noise_seed, s.id))
        if s.image
        else r
        for s, r in zip(prompts, real)
    ]
    return model_batch(model, collate(real + noised, pad_token_id(processor), length=length), pad_token_id(processor))


def safecode_tokens(
    model,
    processor,
    samples: Sequence[Sample],
    unsafe: np.ndarray,
    settings: SafeCoDe,
    *,
    max_new_tokens: int | None = None,
    seed: int = 0,
    rows: int = 0,
    length: int = 0,
) -> list[np.ndarray]:
    """The new tokens of each sample under SafeCoDe (numpy, each row trimmed to what was written).

    `unsafe` is the verdict per sample. `max_new_tokens`, when given, bounds every answer (guided tokens
    included) on top of the verdict's budget, so a comparison gives each configuration the same room. The
    batch is decoded padded to `rows` rows (default: the next power of two) with repeated rows, then dropped,
    and to `length` tokens at least.
    """
    n = len(samples)
    padded = list(samples) + [samples[-1]] * ((rows or bucket_rows(n)) - n)
    unsafe = np.resize(np.asarray(unsafe, bool), len(padded))
    unsafe[n:] = unsafe[n - 1]
    batch = two_view_batch(model, processor, padded, settings, length)
    k = int(settings.max_steps)
    caps = np.asarray(settings.budgets(model), np.int32)
    buffer = k + int(caps.max())
    if max_new_tokens is not None:
        buffer = min(buffer, int(max_new_tokens))
    prompts = [dataclasses.replace(s, response=None) for s in samples]
    check_lengths(model, prompts, [int(m.sum()) for m in batch.attention_mask[:n]], new_tokens=buffer)
    eos, pad = special_ids(model, processor, None, None)
    vocab = refusal_vocabulary(getattr(processor, "tokenizer", processor), _vocab(processor))
    if unsafe.any() and not vocab.phrases:
        raise InputError(
            "SafeCoDe's unsafe branch forces a refusal phrase, but this tokenizer can write none of them "
            f"(each holds its unknown token: {', '.join(vocab.dropped[:5])}, ...)"
        )
    tables = _tables(vocab)
    knobs = {
        "alpha": np.float32(settings.alpha),
        "lambda_supp": np.float32(settings.lambda_supp),
        "top_k": np.int32(settings.top_k),
        "guided_temperature": np.float32(settings.guided_temperature),
        "caps": caps,
        "safe": _sampling(settings.safe_temperature, settings.safe_top_p),
        "unsafe": _sampling(settings.unsafe_temperature, settings.unsafe_top_p),
    }
    batch = place_batch(model, batch, len(batch.input_ids))  # both views' rows split over a sharded model's chips
    out, lengths = _decode(
        model,
        batch.input_ids,
        batch.attention_mask,
        batch.inputs,
        tables,
        unsafe,
        np.asarray(eos, np.int32),
        np.int32(pad),
        jax.random.key(seed),
        knobs,
        guided_steps=k,
        buffer=buffer,
    )
    out, lengths = np.asarray(out)[:n], np.asarray(lengths)[:n]
    return [row[:length] for row, length in zip(out, lengths)]


def _vocab(processor) -> int:
    return len(getattr(processor, "tokenizer", processor))


def _sampling(temperature: float, top_p: float) -> dict[str, np.ndarray]:
    return {"temperature": np.float32(temperature), "top_k": np.int32(0), "top_p": np.float32(top_p)}


def _tables(vocab: RefusalVocabulary) -> dict[str, np.ndarray]:
    pieces = {f.name: getattr(vocab.pieces, f.name) for f in dataclasses.fields(vocab.pieces)}
    return {
        "refusal": vocab.refusal,
        "phrase_counts": vocab.phrase_counts,
        "phrase_tokens": vocab.phrase_tokens,
        "phrase_lengths": vocab.phrase_lengths,
        "preferred": vocab.preferred,
        **pieces,
    }


def _padded(tables: dict[str, jax.Array], vocab: int) -> dict[str, jax.Array]:
    """Per-token tables widened to the model's logits (a padded vocabulary's extra ids: no text, no refusal)."""
    out = {}
    for key, value in tables.items():
        if key in ("phrase_tokens", "phrase_lengths", "preferred"):
            out[key] = value
        else:
            extra = vocab - value.shape[-1]
            out[key] = jnp.pad(value, [(0, 0)] * (value.ndim - 1) + [(0, extra)])
    return out


def contrast(real: jax.Array, noised: jax.Array, alpha) -> jax.Array:
    """`softmax(z_real - alpha * z_noised)` in float32."""
    return jax.nn.softmax(real.astype(jnp.float32) - alpha * noised.astype(jnp.float32), axis=-1)


def damp_refusals(probs: jax.Array, refusal: jax.Array, lambda_supp) -> jax.Array:
    """Refusal-token probabilities times `1 - lambda/2`, renormalised (the undamped row where that sums to 0)."""
    damped = jnp.where(refusal, probs * (1.0 - lambda_supp / 2.0), probs)
    total = damped.sum(-1, keepdims=True)
    return jnp.where(total > 0, damped / jnp.where(total > 0, total, 1.0), probs)


def chosen_phrase(probs: jax.Array, tables: dict[str, jax.Array], top_k) -> jax.Array:
    """Per row, the phrase the unsafe branch forces: among the `top_k` best bag-of-token scores the best
    preferred one, else the best one (ties go to the earlier phrase of the list, as a stable sort)."""
    scores = probs @ tables["phrase_counts"].T  # [batch, phrases]
    n = scores.shape[-1]
    index = jnp.arange(n)
    better = (scores[:, None, :] > scores[:, :, None]) | (
        (scores[:, None, :] == scores[:, :, None]) & (index[None, None, :] < index[None, :, None])
    )
    shortlisted = better.sum(-1) < top_k
    preferred = shortlisted & tables["preferred"][None, :]
    best_preferred = jnp.argmax(jnp.where(preferred, scores, -jnp.inf), axis=-1)
    return jnp.where(preferred.any(-1), best_preferred, jnp.argmax(scores, axis=-1))


def _continuation(logits, key, sampling, needed) -> jax.Array:
    """A token by the branch's continuation sampler (temperature 0 = greedy). The sampler sorts the vocabulary,
    so it runs (a real branch, not a select) only when sampling and when some row in `needed` uses it."""
    hot = {**sampling, "temperature": jnp.maximum(sampling["temperature"], 1e-6)}
    return jax.lax.cond(
        jnp.any(needed) & (sampling["temperature"] > 0),
        lambda: next_token(logits, key, hot, greedy=False),
        lambda: jnp.argmax(logits, -1).astype(jnp.int32),
    )


def _words(state, tok, t):
    """Advance the word automaton (phase 0 nothing yet, 1 in the first word, 2 after it, 3 a second word
    begun; `n` the first word's length capped at 2, `up` its capital) by one token's piece."""
    phase, n, up = state
    empty, lead, run, upper = t["empty"][tok], t["lead_space"][tok], t["run_len"][tok], t["run_upper"][tok]
    after_run = jnp.where(t["second_run"][tok], 3, jnp.where(t["space_after_run"][tok], 2, 1))
    from_start = (after_run, run, upper)
    continuing = (after_run, jnp.minimum(n + run, 2), up)
    nonempty_phase = jnp.where(phase == 0, from_start[0], jnp.where(phase == 1, jnp.where(lead, 3, continuing[0]), 3))
    nonempty_n = jnp.where(phase == 0, run, jnp.where((phase == 1) & ~lead, continuing[1], n))
    nonempty_up = jnp.where(phase == 0, upper, up)
    space_phase = jnp.where((phase == 1) & lead, 2, phase)
    return (
        jnp.where(empty, space_phase, nonempty_phase),
        jnp.where(empty, n, nonempty_n),
        jnp.where(empty, up, nonempty_up),
    )


def _write(out, n_out, tok, writes):
    rows = jnp.arange(out.shape[0])
    at = jnp.minimum(n_out, out.shape[1] - 1)
    return out.at[rows, at].set(jnp.where(writes, tok, out[rows, at])), n_out + writes


@compiled(static_argnames=("guided_steps", "buffer"))
def _decode(model, input_ids, attention_mask, images, tables, unsafe, eos, pad, key, knobs, *, guided_steps, buffer):
    rows, length = input_ids.shape
    b = rows // 2
    cache = model.init_cache(rows, length + buffer)
    logits, cache = model.forward_with_cache(input_ids, cache, attention_mask=attention_mask, last_only=True, **images)
    tables = _padded(tables, logits.shape[-1])
    real, noised = logits[:b], logits[b:]
    forcing = unsafe & (guided_steps >= 2)
    phrase = chosen_phrase(contrast(real, noised, knobs["alpha"]), tables, knobs["top_k"])
    forced = tables["phrase_tokens"][phrase]
    forced_len = jnp.minimum(tables["phrase_lengths"][phrase], guided_steps)
    caps = jnp.where(forcing, knobs["caps"][0], knobs["caps"][1])
    is_eos = lambda tok: jnp.isin(tok, eos)
    zeros = jnp.zeros((b,), jnp.int32)
    state = {
        "t": jnp.int32(0),
        "cache": cache,
        "real": real,
        "noised": noised,
        "after_prompt": real,
        "after_first": real,
        "out": jnp.full((b, buffer), pad, jnp.int32),
        "n_out": zeros,
        "phase": zeros,  # 0 guided, 1 continuing, 2 finished
        "limit": jnp.full((b,), buffer, jnp.int32),
        "words": (zeros, zeros, jnp.zeros((b,), bool)),
        "corrupt": jnp.zeros((b,), bool),
        "ends_m": jnp.zeros((b,), bool),
        "first_clean": jnp.ones((b,), bool),
    }

    def continuation(logits, step_key, rows):
        safe = _continuation(logits, step_key, knobs["safe"], rows & ~forcing)
        return jnp.where(forcing, _continuation(logits, step_key, knobs["unsafe"], rows & forcing), safe)

    def guided_step(s):
        t, step_key = s["t"], jax.random.fold_in(key, s["t"])
        guided_key, replace_key = jax.random.split(step_key)
        probs = damp_refusals(
            contrast(s["real"], s["noised"], knobs["alpha"] / 2), tables["refusal"], knobs["lambda_supp"]
        )
        top2 = jax.lax.top_k(probs, 2)[1]
        first = jnp.where(tables["quote"][top2[:, 0]], top2[:, 1], top2[:, 0]).astype(jnp.int32)
        temperature = knobs["guided_temperature"]
        sampled = jax.lax.cond(
            temperature > 0,
            lambda: jax.random.categorical(guided_key, jnp.log(probs + 1e-10) / temperature, axis=-1),
            lambda: top2[:, 0],
        ).astype(jnp.int32)
        guided_token = jnp.where(t == 0, first, sampled)
        forced_token = forced[:, jnp.minimum(t, forced.shape[1] - 1)]
        guided = s["phase"] == 0
        continued = continuation(s["real"], step_key, ~guided)
        tok = jnp.where(guided, jnp.where(forcing, forced_token, guided_token), continued)

        words = _words(s["words"], guided_token, tables)
        corrupt = s["corrupt"] | tables["corrupt"][guided_token] | (s["ends_m"] & tables["starts_s"][guided_token])
        first_clean = jnp.where(t == 0, ~tables["corrupt"][guided_token], s["first_clean"])
        two_words = (words[0] == 3) & (words[1] >= 2) & words[2]
        stop_safe = guided & ~forcing & (((t >= 1) & two_words) | (t == guided_steps - 1))
        stop_forced = guided & forcing & (t == forced_len - 1)
        drop = stop_safe & corrupt
        kept = first_clean.astype(jnp.int32) * (t >= 1)
        replacement = _continuation(
            jnp.where((kept == 1)[:, None], s["after_first"], s["after_prompt"]), replace_key, knobs["safe"], drop
        )
        tok = jnp.where(drop, replacement, tok)
        n_out = jnp.where(drop, kept, s["n_out"])
        writes = s["phase"] < 2
        out, n_out = _write(s["out"], n_out, tok, writes.astype(jnp.int32))
        limit = jnp.where(
            stop_safe, jnp.where(drop, kept, t + 1) + caps, jnp.where(stop_forced, forced_len + caps, s["limit"])
        )
        phase = jnp.where(stop_safe | stop_forced, 1, s["phase"])
        finished = writes & (is_eos(tok) | ((phase == 1) & (n_out >= limit)) | (n_out >= buffer))
        phase = jnp.where(finished, 2, phase)
        forget = jnp.where(drop, t - kept, 0)
        cache = s["cache"].forget_last(jnp.concatenate([forget, forget]))
        feed = jnp.where(writes, tok, pad)
        logits, cache = model.forward_with_cache(jnp.concatenate([feed, feed])[:, None], cache, last_only=True)
        return {
            **s,
            "t": t + 1,
            "cache": cache,
            "real": logits[:b],
            "noised": logits[b:],
            "after_first": jnp.where(t == 0, logits[:b], s["after_first"]),
            "out": out,
            "n_out": n_out,
            "phase": phase,
            "limit": limit,
            "words": words,
            "corrupt": corrupt,
            "ends_m": tables["ends_m"][guided_token],
            "first_clean": first_clean,
        }

    state = jax.lax.while_loop(lambda s: (s["t"] < guided_steps) & jnp.any(s["phase"] == 0), guided_step, state)

    def continue_step(c):
        t, cache, real, out, n_out, phase, limit = c
        tok = continuation(real, jax.random.fold_in(key, t), phase == 1)
        writes = phase == 1
        out, n_out = _write(out, n_out, tok, writes.astype(jnp.int32))
        finished = writes & (is_eos(tok) | (n_out >= limit) | (n_out >= buffer))
        logits, cache = model.forward_with_cache(jnp.where(writes, tok, pad)[:, None], cache, last_only=True)
        return t + 1, cache, logits, out, n_out, jnp.where(finished, 2, phase), limit

    carry = (
        state["t"],
        state["cache"].first_rows(b),
        state["real"],
        state["out"],
        state["n_out"],
        state["phase"],
        state["limit"],
    )
    carry = jax.lax.while_loop(lambda c: (c[0] < guided_steps + buffer) & jnp.any(c[5] == 1), continue_step, carry)
    return carry[3], carry[4]
