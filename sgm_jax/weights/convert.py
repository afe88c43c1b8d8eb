"""Hugging Face safetensors -> NNX parameters through the key map the module tree declares.

Our module tree mirrors HF's module names one-to-one and each leaf layer
declares its tensors (`hf_params`), so the key map is derived, not written by
hand. Files are read with `safetensors`, one tensor at a time, without torch.
Every mismatch (missing, unexpected, mis-shaped) is collected and reported at
once, in the checkpoint's own key names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open

from sgm_jax.models.causal_lm import Layout
from sgm_jax.runtime.errors import CheckpointError

# Buffers that older checkpoints stored although transformers recomputes them on load.
_DERIVED_BUFFERS = re.compile(r"(\.rotary_emb\.inv_freq|\.embeddings\.position_ids)$")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where one HF tensor goes: the owning module, its attribute, and the torch -> ours axis permutation."""

    module: nnx.Module
    attr: str
    perm: tuple[int, ...]

    @property
    def variable(self) -> nnx.Variable:
        return getattr(self.module, self.attr)

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = self.variable.shape
        torch_shape = [0] * len(shape)
        for ours, theirs in enumerate(self.perm):
            torch_shape[theirs] = shape[ours]
        return tuple(torch_shape)


def module_path(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def hf_targets(model: nnx.Module) -> dict[str, Target]:
    """In-memory HF tensor name -> target, for every parameter the model has."""
    targets = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module):
            for attr, (suffix, perm) in getattr(node, "hf_params", {}).items():
                if getattr(node, attr) is not None:
                    targets[f"{module_path(path)}.{suffix}"] = Target(node, attr, perm)
    return targets


def renamed(key: str, layout: Layout) -> str:
    """`key` with the first matching prefix of `layout` replaced (a family's load or save layout)."""
    for prefix, replacement in layout:
        if key.startswith(prefix):
            return replacement + key[len(prefix) :]
    return key


def checkpoint_files(directory: str) -> dict[str, str]:
    """File tensor name -> safetensors file, from `model.safetensors` or a sharded index."""
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        missing = sorted({v for v in weight_map.values() if not os.path.exists(os.path.join(directory, v))})
        if missing:
            raise CheckpointError(f"{index} names shard files that are not in {directory}: {missing}")
        return {k: os.path.join(directory, v) for k, v in weight_map.items()}
    if os.path.exists(single):
        with _weights(single) as f:
            return {k: single for k in f.keys()}
    found = sorted(n for n in os.listdir(directory) if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    hint = f" (found {found}: sgm_jax reads only safetensors, never pickle)" if found else ""
    raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json{hint}")


@contextlib.contextmanager
def _weights(path: str) -> Iterator:
    """A weights file opened for reading; a damaged or truncated one (header or data) is named."""
    try:
        with safe_open(path, "numpy") as f:
            yield f
    except SafetensorError as err:
        raise CheckpointError(
            f"{path}: a damaged or incomplete safetensors file ({err}); copy or download it again"
        ) from None


def _by_file(files: dict[str, str], keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(files[key], []).append(key)
    return groups


def iter_tensors(files: dict[str, str], keys: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield `(key, array)` one at a time, opening each shard once."""
    for path, file_keys in _by_file(files, keys).items():
        with _weights(path) as f:
            for key in file_keys:
                yield key, f.get_tensor(key)


def file_shapes(files: dict[str, str], keys: list[str]) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers, without reading the data."""
    shapes = {}
    for path, file_keys in _by_file(files, keys).items():
        with _weights(path) as f:
            for key in file_keys:
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def load_into(
    model: nnx.Module,
    directory: str,
    layout: Layout,
    *,
    dtype,
    place: Callable[[np.ndarray, nnx.Variable], jax.Array] | None = None,
) -> None:
    """Fill an abstract (`nnx.eval_shape`) model from `directory`'s safetensors, strictly.

    `layout` maps the checkpoint's key prefixes to in-memory names (the family's `load_layout`);
    `place(array, variable)` puts each converted host array on devices (default: the default device).
    """
    files = checkpoint_files(directory)
    targets = hf_targets(model)
    by_name: dict[str, str] = {}
    duplicates = []
    for key in files:
        name = renamed(key, layout)
        if _DERIVED_BUFFERS.search(name):
            continue
        if name in by_name:
            duplicates.append(f"{by_name[name]} and {key}")
        by_name[name] = key
    tied_head = None
    if "lm_head.weight" in by_name and "lm_head.weight" not in targets:
        tied_head = by_name.pop("lm_head.weight")
        embedding = next((name for name in targets if name.endswith("embed_tokens.weight")), None)
        if embedding is not None and embedding not in by_name:  # `safetensors.torch.save_model` keeps one name
            by_name[embedding], tied_head = tied_head, None  # of a tied pair, and it may be the head's

    problems = []
    missing = sorted(set(targets) - set(by_name))
    unexpected = sorted(key for name, key in by_name.items() if name not in targets)
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {unexpected}")
    if duplicates:
        problems.append(f"tensors given twice under different layouts: {duplicates}")
    found = {key: targets[name] for name, key in by_name.items() if name in targets}
    shapes = file_shapes(files, list(found))
    wrong = [
        f"{key}: checkpoint {list(shapes[key])}, config implies {list(t.torch_shape)}"
        for key, t in found.items()
        if shapes[key] != t.torch_shape
    ]
    if wrong:
        problems.append(f"wrong shapes: {wrong}")
    if problems:
        raise CheckpointError(f"checkpoint {directory} does not match its config: " + "; ".join(problems))
    if tied_head is not None:
        embed_key = next(key for name, key in by_name.items() if name.endswith("embed_tokens.weight"))
        _check_tied_head(files, tied_head, embed_key)

    dtype = jnp.dtype(dtype)
    # device_put, not jnp.asarray: in this jax, asarray compiles a staging program per new shape
    place = place or (lambda array, variable: jax.device_put(array))
    for key, array in iter_tensors(files, list(found)):
        target = found[key]
        host = np.ascontiguousarray(np.transpose(array, target.perm).astype(dtype))
        target.variable.set_value(place(host, target.variable))


def _check_tied_head(files: dict[str, str], head_key: str, embed_key: str) -> None:
    """A tied model may still find `lm_head.weight` on disk; accept it only if it is the embedding."""
    tensors = dict(iter_tensors(files, [head_key, embed_key]))
    if not np.array_equal(tensors[head_key], tensors[embed_key]):
        raise CheckpointError(
            f"{head_key} differs from {embed_key} but the config ties the word embeddings (tie_word_embeddings=true)"
        )
