"""The decoder's cache as an explicit pytree: passed into a cached forward and returned updated.

Rows are left-padded and advance in lockstep, so every row writes its new tokens
into the same slots (`length` onwards); `valid` marks which slots hold real tokens
(padding never does) and `next_position` is each row's RoPE position for its next
token, counted from its first real token as HF `generate` does. Each layer keeps its
own entry in `layers`, which it takes and gives back (`sgm_jax.models.decoder`): a
self-attention layer's keys and values, a cross-attention layer's projected image
keys, or None where a layer keeps nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerKV:
    """One self-attention layer's keys (RoPE applied) and values, `[batch, max_len, kv_heads, head_dim]` each."""

    keys: jax.Array
    values: jax.Array

    def write(self, keys: jax.Array, values: jax.Array, at: jax.Array) -> LayerKV:
        """These slots with `[batch, new, kv_heads, head_dim]` entries written from slot `at`."""
        start = (0, at, 0, 0)
        return LayerKV(
            jax.lax.dynamic_update_slice(self.keys, keys.astype(self.keys.dtype), start),
            jax.lax.dynamic_update_slice(self.values, values.astype(self.values.dtype), start),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    layers: tuple[Any, ...]  # per decoder layer: its entry (LayerKV, a family's own, or None)
    valid: jax.Array  # [batch, max_len] bool: the slot holds a real token
    length: jax.Array  # int32 scalar: slots written so far (the next write index)
    next_position: jax.Array  # [batch] int32: RoPE position of each row's next real token

    @classmethod
    def empty(cls, layers: tuple[Any, ...], *, batch: int, max_len: int) -> KVCache:
        """A cache with nothing written yet, over the layers' empty entries (`self_attention_entry`)."""
        return cls(
            layers=layers,
            valid=jnp.zeros((batch, max_len), bool),
            length=jnp.zeros((), jnp.int32),
            next_position=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    def first_rows(self, n: int) -> KVCache:
        """The cache of rows `[:n]` only (a decoder that ran extra rows, such as a second view, drops them)."""
        return KVCache(
            layers=jax.tree.map(lambda x: x[:n], self.layers),
            valid=self.valid[:n],
            length=self.length,
            next_position=self.next_position[:n],
        )

    def forget_last(self, count: jax.Array) -> KVCache:
        """The cache as if each row's last `count[row]` tokens had never been run: their slots no longer
        attended to and the row's next position moved back by as many, so what follows sits right after what
        is kept (attention sees only relative positions and valid slots, so this equals never feeding them).
        Entries that hold no per-token state (a cross-attention layer's image keys) are unchanged."""
        slots = jnp.arange(self.max_len)[None, :]
        written = self.length - count[:, None]
        return dataclasses.replace(
            self,
            valid=self.valid & ~((slots >= written) & (slots < self.length)),
            next_position=self.next_position - count.astype(jnp.int32),
        )


def self_attention_entry(*, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype) -> LayerKV:
    """An empty self-attention layer's entry."""
    zeros = lambda: jnp.zeros((batch, max_len, kv_heads, head_dim), dtype)
    return LayerKV(zeros(), zeros())
