"""Fold gates into the weights and export a plain Hugging Face checkpoint.

Scaling a Linear's output neurons by alpha equals scaling its kernel's columns and
its bias; scaling its input equals scaling the kernel's rows. Every gate that can be
folded exactly is; a gate on a residual stream (a decoder or encoder layer's output
or input) or in front of a norm or activation cannot be, and is named in the error.
The result runs in any serving stack with zero runtime cost.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from sgm_jax.interventions.intervention import transport_changes
from sgm_jax.models.copying import shallow_copy
from sgm_jax.models.layers import Activation, Embedding
from sgm_jax.models.site import GATE_ATTRS, IN, OUT, Fold, Site, child
from sgm_jax.runtime.atomic import atomic_write, write_json
from sgm_jax.runtime.errors import SgmJaxError
from sgm_jax.weights.convert import hf_targets, renamed


class NotFoldableError(SgmJaxError, ValueError):
    """Some gates have no exact weight-space equivalent."""


def _folder(node: Site, owner: Site | None, end: str, tied: bool) -> Fold | None:
    """How to fold a gate at `node`'s `end` into weights, or None if no exact fold exists.

    Each site knows its own fold (`Site.folder`); an activation's output is the input of the Linear its
    owner (the nearest enclosing site) says it feeds, and a tied embedding is also the LM head, so scaling
    it would change the logits.
    """
    if isinstance(node, Embedding) and tied:
        return None
    if end == OUT and isinstance(node, Activation):
        feeds = getattr(owner, "activation_feeds", None)
        return child(owner, feeds).folder(IN) if feeds else None
    return node.folder(end)


def _owner(nodes: dict[tuple, nnx.Module], path: tuple) -> Site | None:
    """The nearest site above `path` (skipping lists such as a merger's `mlp`)."""
    return next((nodes[path[:k]] for k in range(len(path) - 1, -1, -1) if isinstance(nodes.get(path[:k]), Site)), None)


def fold_gates(model: nnx.Module) -> nnx.Module:
    """A gate-free model computing what the gated `model` computes, the alphas folded into its weights.

    `model` is left as it was; weights no gate touches are shared, not copied.
    """
    folded = shallow_copy(model)
    nodes = {tuple(path): node for path, node in nnx.iter_graph(folded) if isinstance(node, nnx.Module)}
    tied = getattr(folded, "lm_head", True) is None
    plan, refused = [], []
    edited = [
        ".".join(map(str, p))
        for p, n in nodes.items()
        if isinstance(n, Site) and (n.edit is not None or n.edit_in is not None)
    ]
    if edited:
        raise NotFoldableError(
            f"these sites carry steering edits (MOP, DACO), a function of each token's state that no weight "
            f"can hold: {edited}; export the model without them"
        )
    for path, node in nodes.items():
        if not isinstance(node, Site):
            continue
        for end, attr in GATE_ATTRS.items():
            gate = getattr(node, attr)
            if gate is None:
                continue
            name = ".".join(map(str, path)) + (":in" if end == IN else "")
            fold = _folder(node, _owner(nodes, path), end, tied)
            if fold is None:
                refused.append(name)
            plan.append((node, attr, fold, np.asarray(gate[...], np.float32)))
    if refused:
        raise NotFoldableError(
            f"these gates have no exact equivalent in the weights (residual streams, inputs "
            f"of norms or activations, tied embeddings): {refused}"
        )
    shifts = _transport_plan(nodes, tied, plan)
    for node, attr, fold, alpha in plan:
        fold(alpha)
        delattr(node, attr)
    for fold, shift in shifts:  # after the scales, which also scale the bias a shift adds to
        fold(shift)
    return folded


def _transport_plan(nodes: dict[tuple, nnx.Module], tied: bool, plan: list) -> list[tuple[Fold, np.ndarray]]:
    """Fold transports: each scale joins `plan` as a gate, each shift is returned with the bias it adds to.

    Only a transport over all reals is affine (Mean-AcT); Linear-AcT's, applied inside the source's range only,
    is not, and a shift needs a bias at the site's output (Llama's MLP has one only with `mlp_bias`)."""
    bounded, unbiased, shifts = [], [], []
    for path, node in nodes.items():
        if not isinstance(node, Site) or node.transport_out is None:
            continue
        name = ".".join(map(str, path))
        scale, shift, low, high = np.asarray(node.transport_out[...], np.float32)
        moved = transport_changes(np.stack([scale, shift, low, high]))
        if not moved.any():  # an identity transport (a sweep's frame) folds to nothing
            plan.append((node, "transport_out", lambda alpha: None, scale))
            continue
        if np.isfinite(low[moved]).any() or np.isfinite(high[moved]).any():
            bounded.append(name)
            continue
        fold = _folder(node, _owner(nodes, path), OUT, tied)
        add = node.shift_folder() if shift.any() else None
        if fold is None or (shift.any() and add is None):
            unbiased.append(name)
            continue
        plan.append((node, "transport_out", fold, np.where(moved, scale, 1.0).astype(np.float32)))
        if add is not None:
            shifts.append((add, np.where(moved, shift, 0.0).astype(np.float32)))
    if bounded:
        raise NotFoldableError(
            f"these transports act only inside a range of values (Linear-AcT's support), which no weight can "
            f"hold: {bounded}; export needs a transport over all reals (Mean-AcT)"
        )
    if unbiased:
        raise NotFoldableError(
            f"these transports shift a site whose output has no bias to hold the shift, or no exact fold (the "
            f"checkpoint's config carries no bias there, e.g. Llama with mlp_bias false): {unbiased}"
        )
    return shifts


def export_hf(model: nnx.Module, out_dir: str, *, processor=None, max_shard_bytes: int = 5 << 30) -> str:
    """Write `model` (gates folded in) as a Hugging Face checkpoint that `transformers` loads as is."""
    folded = fold_gates(model)
    config = folded.spec.to_hf()
    os.makedirs(out_dir, exist_ok=True)
    tensors, dtype = {}, None
    for name, target in hf_targets(folded).items():
        array = np.asarray(target.variable[...])
        saved = renamed(name, type(folded).save_layout)
        tensors[saved] = np.ascontiguousarray(np.transpose(array, np.argsort(target.perm)))
        dtype = array.dtype
    config["dtype"] = str(dtype)
    _write_safetensors(out_dir, tensors, max_shard_bytes)
    write_json(os.path.join(out_dir, "config.json"), config)
    generation = {key: value for key, value in folded.special_tokens if value is not None}
    if generation:  # the checkpoint's EOS and pad ids, so `generate` stops where it stopped before export
        write_json(os.path.join(out_dir, "generation_config.json"), generation)
    if processor is not None:
        processor.save_pretrained(out_dir)
    return out_dir


def _write_safetensors(out_dir: str, tensors: dict[str, np.ndarray], max_shard_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key in sorted(tensors):
        if shards[-1] and size + tensors[key].nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += tensors[key].nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        atomic_write(os.path.join(out_dir, "model.safetensors"), lambda tmp: save_file(shards[0], tmp, metadata))
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        atomic_write(os.path.join(out_dir, name), lambda tmp, shard=shard: save_file(shard, tmp, metadata))
        weight_map.update({key: name for key in shard})
    total = sum(t.nbytes for t in tensors.values())
    write_json(
        os.path.join(out_dir, "model.safetensors.index.json"),
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
