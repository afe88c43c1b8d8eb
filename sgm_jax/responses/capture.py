"""Pooled activation capture inside jit: only `[batch, width]` per site leaves the device.

Site modules sow their activations only when asked (`Site.record`), `nnx.capture`
collects them, and pooling happens in the same jitted function: over each row's
valid tokens (optionally only text or only image positions) for token-domain sites,
as each site makes them (`Site.keep`, so a batch's activations at every site are
never alive at once), and over each image's own positions for vision-tower and
projector sites, once the model has said which rows are whose. Inputs are
padded to a few bucketed shapes so a long collection compiles a handful of times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sgm_jax.models.batch import ModelBatch, model_batch
from sgm_jax.models.causal_lm import CausalLM
from sgm_jax.models.compiled import compiled
from sgm_jax.models.partitioning import place_batch
from sgm_jax.responses.sites import INPUT_SUFFIX, SiteRef, resolve
from sgm_jax.runtime.choices import POOLINGS, TOKENS
from sgm_jax.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class CaptureSpec:
    """What to record and how to pool it; hashable, so it is a static argument of the jitted capture."""

    refs: tuple[SiteRef, ...]
    pooling: str = "mean"
    tokens: str = "all"

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise InputError(f"pooling={self.pooling!r} is not one of {list(POOLINGS)}")
        if self.tokens not in TOKENS:
            raise InputError(f"tokens={self.tokens!r} is not one of {list(TOKENS)}")

    @property
    def image_domain(self) -> bool:
        return any(ref.image_domain for ref in self.refs)


def token_selection(input_ids, attention_mask, tokens: str, image_token: int | None):
    """Which positions a token-domain site pools over: real tokens, optionally only text or only image ones.

    Works on numpy (host checks) and jax (inside the trace) arrays alike.
    """
    valid = attention_mask > 0
    if tokens == "all":
        return valid
    is_image = input_ids == (-1 if image_token is None else image_token)
    return valid & (is_image if tokens == "image" else ~is_image)


def _record(model: nnx.Module, refs: Iterable[SiteRef], keep=None) -> None:
    """Ask the sites of `refs` to sow what they see; `keep` (token-domain sites only) reduces it where it is made."""
    wanted: dict[tuple, set[str]] = {}
    for ref in refs:
        wanted.setdefault(ref.path, set()).add(ref.end)
    image_paths = {ref.path for ref in refs if ref.image_domain}
    for path, node in nnx.iter_graph(model):
        if tuple(path) in wanted:
            node.record = frozenset(wanted[tuple(path)])
            if keep is not None and tuple(path) not in image_paths:
                node.keep = keep


def _pool(values: jax.Array, select: jax.Array, pooling: str) -> jax.Array:
    """Pool `[rows, positions, width]` over the positions where `select` `[rows, positions]` is true."""
    values = values.astype(jnp.float32)
    if pooling == "mean":
        weights = select.astype(jnp.float32)
        return jnp.einsum("rp,rpw->rw", weights, values) / weights.sum(-1, keepdims=True)
    if pooling == "max":
        return jnp.where(select[..., None], values, -jnp.inf).max(axis=1)
    last = select.shape[1] - 1 - jnp.argmax(select[:, ::-1], axis=1)
    return jnp.take_along_axis(values, last[:, None, None], axis=1)[:, 0]


def _pool_segments(values: jax.Array, segments: jax.Array, count: int, pooling: str) -> jax.Array:
    """Pool packed rows `[rows, width]` into `[count, width]` by the image index of each row (-1: padding)."""
    values = values.astype(jnp.float32)
    ids = jnp.where(segments >= 0, segments, count)  # padding rows pool into an extra segment, dropped
    rows = jax.ops.segment_sum(jnp.ones_like(ids, jnp.float32), ids, num_segments=count + 1)[:count, None]
    if pooling == "mean":
        pooled = jax.ops.segment_sum(values, ids, num_segments=count + 1)[:count] / jnp.maximum(rows, 1.0)
    elif pooling == "max":
        pooled = jax.ops.segment_max(values, ids, num_segments=count + 1)[:count]
    else:
        last = jax.ops.segment_max(jnp.arange(len(ids)), ids, num_segments=count + 1)[:count]
        pooled = values[jnp.clip(last, 0, len(ids) - 1)]
    return jnp.where(rows > 0, pooled, 0.0)  # image slots with no image (padding slots) hold zeros


def declared_segments(name: str, segments: dict[str, jax.Array]) -> jax.Array | None:
    """The segments the model declared for site `name` (`ModelOutput.image_segments`): its own entry, else its
    nearest ancestor's (`a.b.c:in`, `a.b.c`, `a.b`, `a`); None where the site's rows are images."""
    for candidate in (name, name.removesuffix(INPUT_SUFFIX)):
        if candidate in segments:
            return segments[candidate]
    parts = name.removesuffix(INPUT_SUFFIX).split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in segments:
            return segments[".".join(parts[:end])]
    return None


def _per_image(name: str, values: jax.Array, segments: jax.Array | None, count: int, pooling: str) -> jax.Array:
    """An image-domain site's values pooled to `[count, width]`. With `segments` (the image of each row, every
    position of a row pooling into it; or of each position, -1 for padding, as Mllama's padded tiles), rows are
    packed patches `[rows, width]` or tiles `[tiles, positions, width]`; without, rows are images."""
    if segments is None:
        if values.ndim == 2:  # a per-image vector (the tower's pooled output): one position per image
            values = values[:, None]
        return _pool(values, jnp.ones(values.shape[:2], bool), pooling)
    flat = values.reshape(-1, values.shape[-1])
    if segments.shape[0] == values.shape[0] and values.ndim == 3:  # one image per row: each of its positions
        segments = jnp.repeat(segments, values.shape[1])
    if segments.shape[0] != flat.shape[0]:
        raise InputError(
            f"site {name}: {values.shape[:-1]} rows and positions, but the model declared {segments.shape[0]} "
            "segments for it (ModelOutput.image_segments)"
        )
    return _pool_segments(flat, segments, count, pooling)


def pooled_responses(
    model: nnx.Module, batch: ModelBatch, image_rows: jax.Array | None, spec: CaptureSpec
) -> dict[str, jax.Array]:
    """Traceable: run `model.forward` on `batch` recording `spec.refs` and pool each site to `[batch, width]`.

    `image_rows` is the batch row of each image slot (-1 for a padding slot), or None when there are no images.
    """
    valid = token_selection(batch.input_ids, batch.attention_mask, spec.tokens, model.image_token_id)
    _record(model, spec.refs, keep=lambda values: _pool(values, valid, spec.pooling))
    outputs, sown = nnx.capture(model.forward, nnx.Intermediate)(
        batch.input_ids, attention_mask=batch.attention_mask, **batch.inputs
    )
    sown = {tuple(path): value.get_value()[0] for path, value in nnx.to_flat_state(sown)}

    out = {}
    for ref in spec.refs:
        values = sown[ref.path + (ref.end,)]
        if not ref.image_domain:  # pooled where the site made it
            out[ref.name] = values
            continue
        segments = declared_segments(ref.name, outputs.image_segments)
        per_image = _per_image(ref.name, values, segments, image_rows.shape[0], spec.pooling)
        rows = image_rows[None, :] == jnp.arange(valid.shape[0])[:, None]
        out[ref.name] = _pool(jnp.broadcast_to(per_image, rows.shape + per_image.shape[-1:]), rows, spec.pooling)
    return out


_pooled_compiled = compiled(pooled_responses, static_argnames=("spec",))


def prepare_batch(
    batch: Mapping[str, Any] | ModelBatch, model: CausalLM, spec: CaptureSpec
) -> tuple[ModelBatch, np.ndarray | None]:
    """A checked batch (a raw one is prepared, a `ModelBatch` taken as it is) with its images padded to one slot
    per row at least (so the image-domain pooling has a static shape), and each image slot's batch row (-1 for a
    padding slot; None for a batch without image inputs)."""
    prepared, image_rows = model_batch(model, batch), None
    if prepared.inputs:
        rows, image_rows = len(prepared.input_ids), model.image_rows(prepared.input_ids, prepared.inputs)
        slots = max(rows, -(-len(image_rows) // rows) * rows)
        prepared = prepared.replace(inputs={**prepared.inputs, **model.pad_images(prepared.inputs, slots)})
        image_rows = np.concatenate([image_rows, -np.ones(slots - len(image_rows), np.int32)])
    _check_pool_targets(prepared, image_rows, spec, model.image_token_id)
    return prepared, image_rows


def _check_pool_targets(
    prepared: ModelBatch, image_rows: np.ndarray | None, spec: CaptureSpec, image_token: int | None
) -> None:
    """Every row must have something to pool: real tokens of the asked type, and an image for image-domain sites."""
    valid = token_selection(prepared.input_ids, prepared.attention_mask, spec.tokens, image_token)
    empty = np.flatnonzero(~valid.any(1))
    if len(empty):
        raise InputError(f"batch rows {empty.tolist()} have no {spec.tokens!r} tokens to pool")
    if spec.image_domain:
        image_refs = [r.name for r in spec.refs if r.image_domain]
        rows = np.zeros(0, np.int32) if image_rows is None else image_rows
        missing = sorted(set(range(valid.shape[0])) - set(rows.tolist()))
        if missing:
            raise InputError(f"batch rows {missing} have no image, but sites {image_refs[:3]} pool over images")


def _pooled_arguments(model: CausalLM, batch: Mapping[str, Any] | ModelBatch, spec: CaptureSpec) -> tuple:
    prepared, image_rows = prepare_batch(batch, model, spec)
    return model, place_batch(model, prepared, len(prepared.input_ids)), image_rows


def pooled_batch(model: CausalLM, batch: Mapping[str, Any] | ModelBatch, spec: CaptureSpec) -> dict[str, np.ndarray]:
    """Pooled responses of one batch (raw or prepared) as host arrays `{site: [rows, width]}`."""
    out = _pooled_compiled(*_pooled_arguments(model, batch, spec), spec=spec)
    return {name: np.asarray(value) for name, value in out.items()}


def compile_pooled(model: CausalLM, batch: Mapping[str, Any] | ModelBatch, spec: CaptureSpec) -> None:
    """Compile, ahead of time, the program `pooled_batch` runs on `batch`; `model` may be abstract."""
    _pooled_compiled.trace(*_pooled_arguments(model, batch, spec), spec=spec).lower().compile()


def collect_responses(
    model: nnx.Module, batches: Iterable[Mapping[str, Any]], *, sites, pooling: str = "mean", tokens: str = "all"
) -> dict[str, np.ndarray]:
    """Pooled activations `{site: [n_samples, width]}` over `batches`, rows in sample order (globs expanded)."""
    spec = CaptureSpec(tuple(resolve(model, sites)), pooling, tokens)
    chunks = [pooled_batch(model, batch, spec) for batch in batches]
    if not chunks:
        raise InputError("collect_responses got no batches")
    return {ref.name: np.concatenate([c[ref.name] for c in chunks]) for ref in spec.refs}


def token_responses(model: nnx.Module, batch: ModelBatch, refs: tuple[SiteRef, ...]):
    """Traceable: the activations `{site: [batch, seq, width]}` of token-domain sites at every position."""
    _record(model, refs)
    _, sown = nnx.capture(model.forward, nnx.Intermediate)(
        batch.input_ids, attention_mask=batch.attention_mask, **batch.inputs
    )
    sown = {tuple(path): value.get_value()[0] for path, value in nnx.to_flat_state(sown)}
    return {ref.name: sown[ref.path + (ref.end,)].astype(jnp.float32) for ref in refs}


_token_compiled = compiled(token_responses, static_argnames=("refs",))


def token_batch(
    model: CausalLM, batch: Mapping[str, Any] | ModelBatch, refs: tuple[SiteRef, ...]
) -> dict[str, np.ndarray]:
    """One batch's activations at every real token, `{site: [tokens, width]}` (rows in order, padding dropped)."""
    image_refs = [ref.name for ref in refs if ref.image_domain]
    if image_refs:
        raise InputError(f"sites {image_refs[:3]} see images, not tokens: per-token capture reads decoder sites")
    prepared = model_batch(model, batch)
    out = _token_compiled(model, prepared, refs=refs)
    valid = np.asarray(prepared.attention_mask) > 0
    return {name: np.asarray(value)[valid] for name, value in out.items()}
