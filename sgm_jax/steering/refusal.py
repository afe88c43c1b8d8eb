"""The refusal direction (Arditi et al., NeurIPS 2024; andyrdt/refusal_direction): one direction of the residual
stream that mediates refusal, found from harmful and harmless instructions, ablated or added as residual edits.

- **Candidates**: `r[p, l] = mean(harmful) - mean(harmless)` of the stream entering decoder layer `l`, at each of
  the last `p` positions of the rendered prompt (the chat template's tokens after the instruction), in float64.
- **Selection** (the paper's rule): for each candidate, the refusal score (log-odds of the refusal tokens at the
  last position) of the harmful instructions with the direction ablated, of the harmless ones with it added at its
  layer, and the KL divergence of the harmless instructions' last-position distribution under ablation. Candidates
  from the last 20% of layers, with KL above 0.1, or adding less than 0 to the harmless score are dropped; the one
  that lowers the harmful score most is chosen.
- **Ablation** `x - r r^T x` (`r` unit) of every write into the stream: the stream entering the first decoder layer
  (embeddings and image features alike) and each decoder layer's attention (self or cross) and MLP outputs. The
  stream is their sum, so this equals the paper's hooks, which also project every layer's input.
- **Addition** `x + r` (the mean difference itself, coefficient 1) to the stream entering the chosen layer.
- **Orthogonalisation** (`sgm_jax.weights.orthogonalize`): the same ablation folded into the weights.

Edits are `Steering` state: a candidate's new direction reuses the compiled forward.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from sgm_jax.data.encode import encode, render
from sgm_jax.data.samples import Sample
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches, shared_length
from sgm_jax.models.batch import ModelBatch, model_batch
from sgm_jax.models.compiled import compiled
from sgm_jax.models.partitioning import place_batch
from sgm_jax.models.site import Steering
from sgm_jax.responses.sites import stream_writers
from sgm_jax.runtime.artifacts import DIRECTION, KIND_KEY, check_kind
from sgm_jax.runtime.atomic import atomic_write
from sgm_jax.runtime.errors import InputError
from sgm_jax.steering.edit import ResidualEdit, steer

METADATA_KEY = "sgm_jax.direction"
REFUSAL_WORDS = ("I", "As")
"""The first tokens of a refusal the paper scores ("I cannot ...", "As an AI ..."): Qwen's and Gemma's lists."""


class DirectionAblation(ResidualEdit):
    """`h - (h . r) r` for a unit direction `r`."""

    def __init__(self, direction: np.ndarray):
        direction = np.asarray(direction, np.float64)
        self.width = direction.shape[0]
        self.direction = Steering(jnp.asarray(direction / (np.linalg.norm(direction) + 1e-8), jnp.float32))

    def __call__(self, h: jax.Array) -> jax.Array:
        r = self.direction[...].astype(h.dtype)
        return h - (h @ r)[..., None] * r

    def describe(self) -> dict[str, Any]:
        return {"edit": "direction-ablation", "width": self.width}


class DirectionAddition(ResidualEdit):
    """`h + v` at every position."""

    def __init__(self, vector: np.ndarray):
        self.width = np.shape(vector)[0]
        self.vector = Steering(jnp.asarray(vector, jnp.float32))

    def __call__(self, h: jax.Array) -> jax.Array:
        return h + self.vector[...].astype(h.dtype)

    def describe(self) -> dict[str, Any]:
        return {"edit": "direction-addition", "width": self.width}


def ablation_sites(model: nnx.Module) -> list[str]:
    """Where ablation edits go: the stream entering the first decoder layer, and every write into it."""
    return [f"{model.decoder_layers}.0:in", *stream_writers(model)]


def ablated(model: nnx.Module, direction: np.ndarray) -> nnx.Module:
    """`model` with `direction` projected out of everything written into its residual stream."""
    return steer(model, {site: DirectionAblation(direction) for site in ablation_sites(model)})


def added(model: nnx.Module, vector: np.ndarray, layer: int) -> nnx.Module:
    """`model` with `vector` added to the stream entering decoder layer `layer`."""
    return steer(model, {f"{model.decoder_layers}.{layer}:in": DirectionAddition(vector)})


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Instructions rendered and batched once, for every forward run over them."""

    batches: list[tuple[list[int], ModelBatch]]
    count: int


def prompts(model, processor, instructions: Sequence[str], *, batch_size: int = 16) -> Prompts:
    """Instructions rendered as the processor renders prompts (a `RawText` processor: as they are), in
    left-padded model batches of one length, so each row's last positions are its last tokens."""
    if not instructions:
        raise InputError("the refusal direction needs instructions in both sets")
    encoded = [encode(Sample(id=str(i), prompt=text), processor) for i, text in enumerate(instructions)]
    lengths = [len(e["input_ids"]) for e in encoded]
    plan = plan_batches(lengths, batch_size)
    length, pad = shared_length(lengths, plan) or max(lengths), pad_token_id(processor)
    batches = []
    for rows in plan:
        batch = model_batch(model, collate([encoded[i] for i in rows], pad, batch_size, length), pad)
        batches.append((rows, place_batch(model, batch, batch_size)))
    return Prompts(batches, len(instructions))


def instruction_positions(processor) -> int:
    """How many tokens the chat template puts after the instruction (the paper's `eoi_toks`); 1 for raw text."""
    marker = "sgm-jax-instruction-end"
    text = render(Sample(id="x", prompt=marker), processor)
    tokenizer = getattr(processor, "tokenizer", processor)
    after = text[text.rindex(marker) + len(marker) :]
    return max(1, len(tokenizer(after, add_special_tokens=False)["input_ids"]))


@compiled(static_argnames=("positions",))
def _stream_tail(model, batch: ModelBatch, positions: int) -> jax.Array:
    """The stream entering each decoder layer at the last `positions` tokens: `[batch, positions, layers, d]`."""
    stream = batch.forward(model).text_stream[:-1]
    return jnp.stack([s[:, -positions:].astype(jnp.float32) for s in stream], axis=2)


@compiled
def _last_logprobs(model, batch: ModelBatch) -> jax.Array:
    """Log-probabilities of the next token after each prompt `[batch, vocab]` (float32)."""
    hidden = batch.forward(model).text_final[:, -1]
    return jax.nn.log_softmax(model.logits(hidden).astype(jnp.float32), axis=-1)


def mean_stream(model, batched: Prompts, positions: int) -> np.ndarray:
    """The mean stream `[positions, layers, d]` (float64) over the prompts."""
    total = None
    for rows, batch in batched.batches:
        tail = np.asarray(_stream_tail(model, batch, positions), np.float64)[: len(rows)].sum(0)
        total = tail if total is None else total + tail
    return total / batched.count


def candidate_directions(model, harmful: Prompts, harmless: Prompts, positions: int) -> np.ndarray:
    """`mean(harmful) - mean(harmless)` `[positions, layers, d]` (float64), position -positions first."""
    return mean_stream(model, harmful, positions) - mean_stream(model, harmless, positions)


def last_logprobs(model, batched: Prompts) -> np.ndarray:
    """`[prompts, vocab]` next-token log-probabilities (float64) after each prompt."""
    out = None
    for rows, batch in batched.batches:
        logp = np.asarray(_last_logprobs(model, batch), np.float64)[: len(rows)]
        out = np.zeros((batched.count, logp.shape[1])) if out is None else out
        out[rows] = logp
    return out


def refusal_scores(logprobs: np.ndarray, refusal_tokens: Sequence[int], epsilon: float = 1e-8) -> np.ndarray:
    """`log p(refusal) - log(1 - p(refusal))` per prompt, `p` the refusal tokens' summed probability."""
    p = np.exp(logprobs[:, list(refusal_tokens)]).sum(-1)
    return np.log(p + epsilon) - np.log(1 - p + epsilon)


def kl_divergence(base: np.ndarray, other: np.ndarray, epsilon: float = 1e-6) -> np.ndarray:
    """KL(base || other) per prompt from log-probabilities, smoothed as the paper's `kl_div_fn`."""
    p, q = np.exp(base), np.exp(other)
    return np.sum(p * (np.log(p + epsilon) - np.log(q + epsilon)), axis=-1)


def refusal_tokens(processor, words: Sequence[str] = REFUSAL_WORDS) -> list[int]:
    """The first token of each refusal word."""
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in words]
    return list(dict.fromkeys(t[0] for t in ids if t))


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen candidate and every candidate's scores (`[positions, layers]`; position index 0 is -positions)."""

    position: int
    """The chosen position, counted from the end (-1 is the last token)."""
    layer: int
    direction: np.ndarray
    ablation_refusal: np.ndarray
    addition_refusal: np.ndarray
    ablation_kl: np.ndarray
    baseline_harmful: float
    baseline_harmless: float

    def metadata(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "layer": self.layer,
            "ablation_refusal": float(self.ablation_refusal[self.position, self.layer]),
            "addition_refusal": float(self.addition_refusal[self.position, self.layer]),
            "ablation_kl": float(self.ablation_kl[self.position, self.layer]),
            "baseline_harmful": self.baseline_harmful,
            "baseline_harmless": self.baseline_harmless,
        }


def select_direction(
    model,
    candidates: np.ndarray,
    harmful: Prompts,
    harmless: Prompts,
    tokens: Sequence[int],
    *,
    kl_threshold: float = 0.1,
    induce_threshold: float = 0.0,
    prune_layers: float = 0.2,
    progress: bool = True,
) -> Selection:
    """The paper's choice among `candidates` `[positions, layers, d]`, scored on validation prompts."""
    n_pos, n_layers, width = candidates.shape
    base_harmful = refusal_scores(last_logprobs(model, harmful), tokens)
    base_harmless_logp = last_logprobs(model, harmless)
    base_harmless = refusal_scores(base_harmless_logp, tokens)
    # One steered model per kind whose edits' values are replaced per candidate: one compile each.
    ablations = {site: DirectionAblation(np.ones(width)) for site in ablation_sites(model)}
    ablation = steer(model, ablations)
    additions = [DirectionAddition(np.zeros(width)) for _ in range(n_layers)]
    addition = steer(model, {f"{model.decoder_layers}.{i}:in": edit for i, edit in enumerate(additions)})
    scores = np.full((3, n_pos, n_layers), np.nan)
    cells = [(p, layer) for p in range(n_pos) for layer in range(n_layers)]
    for p, layer in tqdm(cells, desc="refusal direction", unit="candidate", disable=not progress):
        r = candidates[p, layer]
        unit = (r / (np.linalg.norm(r) + 1e-8)).astype(np.float32)
        for edit in ablations.values():
            edit.direction.set_value(jnp.asarray(unit))
        scores[0, p, layer] = refusal_scores(last_logprobs(ablation, harmful), tokens).mean()
        scores[2, p, layer] = kl_divergence(base_harmless_logp, last_logprobs(ablation, harmless)).mean()
        for i, edit in enumerate(additions):
            edit.vector.set_value(jnp.asarray(r if i == layer else np.zeros(width), jnp.float32))
        scores[1, p, layer] = refusal_scores(last_logprobs(addition, harmless), tokens).mean()
    chosen = choose(
        candidates, scores, kl_threshold=kl_threshold, induce_threshold=induce_threshold, prune_layers=prune_layers
    )
    if chosen is None:
        raise InputError(
            f"every candidate direction was filtered out (KL above {kl_threshold}, addition below {induce_threshold}, "
            f"in the last {prune_layers:.0%} of layers, or zero); loosen the thresholds or use more instructions"
        )
    p, layer = chosen
    return Selection(
        position=int(p) - n_pos,
        layer=int(layer),
        direction=candidates[p, layer],
        ablation_refusal=scores[0],
        addition_refusal=scores[1],
        ablation_kl=scores[2],
        baseline_harmful=float(base_harmful.mean()),
        baseline_harmless=float(base_harmless.mean()),
    )


def choose(
    candidates: np.ndarray, scores: np.ndarray, *, kl_threshold: float, induce_threshold: float, prune_layers: float
) -> tuple[int, int] | None:
    """The paper's rule over `scores` `[3, positions, layers]` (ablated refusal, added refusal, KL): the lowest
    ablated refusal score among the candidates the thresholds keep, as (position index, layer); None if none is
    kept. Zero candidates are dropped: the template's own tokens at the first layer see the same embedding in both
    sets."""
    n_layers = candidates.shape[1]
    keep = np.isfinite(scores).all(0) & (np.linalg.norm(candidates, axis=-1) > 0)
    keep &= np.arange(n_layers)[None, :] < int(n_layers * (1.0 - prune_layers))
    keep &= (scores[2] <= kl_threshold) & (scores[1] >= induce_threshold)
    if not keep.any():
        return None
    p, layer = np.unravel_index(np.argmin(np.where(keep, scores[0], np.inf)), keep.shape)
    return int(p), int(layer)


def save_direction(path: str, selection: Selection, candidates: np.ndarray, metadata: dict[str, Any]) -> None:
    """The chosen direction, every candidate and their scores, with `metadata` and the choice as JSON."""
    tensors = {
        "direction": np.asarray(selection.direction, np.float32),
        "candidates": np.asarray(candidates, np.float32),
        "ablation_refusal": selection.ablation_refusal.astype(np.float32),
        "addition_refusal": selection.addition_refusal.astype(np.float32),
        "ablation_kl": selection.ablation_kl.astype(np.float32),
    }
    header = {KIND_KEY: DIRECTION, METADATA_KEY: json.dumps({**metadata, **selection.metadata()})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_direction(path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """`(direction [d], metadata)` of a file written by `save_direction`."""
    check_kind(path, DIRECTION)
    with safe_open(path, "numpy") as f:
        return f.get_tensor("direction"), json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
