"""The decoder's key/value cache as an explicit pytree: passed into a cached forward and returned updated.

Rows are left-padded and advance in lockstep, so every row writes its new tokens
into the same slots (`length` onwards); `valid` marks which slots hold real tokens
(padding never does) and `next_position` is each row's RoPE position for its next
token, counted from its first real token as HF `generate` does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    keys: tuple[jax.Array, ...]  # per decoder layer: [batch, max_len, kv_heads, head_dim], RoPE applied
    values: tuple[jax.Array, ...]  # per decoder layer: [batch, max_len, kv_heads, head_dim]
    valid: jax.Array  # [batch, max_len] bool: the slot holds a real token
    length: jax.Array  # int32 scalar: slots written so far (the next write index)
    next_position: jax.Array  # [batch] int32: RoPE position of each row's next real token

    @classmethod
    def empty(cls, *, layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype) -> KVCache:
        zeros = lambda: jnp.zeros((batch, max_len, kv_heads, head_dim), dtype)
        return cls(
            keys=tuple(zeros() for _ in range(layers)),
            values=tuple(zeros() for _ in range(layers)),
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
            keys=tuple(k[:n] for k in self.keys),
            values=tuple(v[:n] for v in self.values),
            valid=self.valid[:n],
            length=self.length,
            next_position=self.next_position[:n],
        )

    def forget_last(self, count: jax.Array) -> KVCache:
        """The cache as if each row's last `count[row]` tokens had never been run: their slots no longer
        attended to and the row's next position moved back by as many, so what follows sits right after what
        is kept (attention sees only relative positions and valid slots, so this equals never feeding them)."""
        slots = jnp.arange(self.max_len)[None, :]
        written = self.length - count[:, None]
        return dataclasses.replace(
            self,
            valid=self.valid & ~((slots >= written) & (slots < self.length)),
            next_position=self.next_position - count.astype(jnp.int32),
        )


class LayerCache:
    """One layer's keys and values during one cached call; its attention appends the new tokens' entries here.

    The attention module is a neuron site, whose output is what gates multiply and
    capture records, so it returns only its hidden state; the updated keys and values
    travel back through this holder, and the cached forward returns them in a new `KVCache`.
    """

    def __init__(self, keys: jax.Array, values: jax.Array, start: jax.Array):
        self.keys, self.values, self.start = keys, values, start

    def append(self, keys: jax.Array, values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Write `[batch, new, kv_heads, head_dim]` entries at `start`; return every slot's keys and values."""
        at = (0, self.start, 0, 0)
        self.keys = jax.lax.dynamic_update_slice(self.keys, keys.astype(self.keys.dtype), at)
        self.values = jax.lax.dynamic_update_slice(self.values, values.astype(self.values.dtype), at)
        return self.keys, self.values
