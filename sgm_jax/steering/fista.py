"""The elastic net over a dictionary, by FISTA with a fixed number of iterations (jit- and vmap-friendly).

    argmin_c  0.5 ||x - c D||^2 + lam (tau ||c||_1 + 0.5 (1 - tau) ||c||^2)

with atoms as the rows of `D` `[atoms, width]` and codes `c` `[..., atoms]`, batched over every leading axis of
`x`. Written here rather than taken from a solver library because it must run inside the model's jitted decode
step, on every token, at a fixed cost; the PaCE reference calls SPAMS, which cannot.

Screening: each token's problem can be solved over a sub-dictionary of M atoms (its top-M by `|D x|`, plus
atoms that must stay). When the full problem's support lies inside the kept atoms the answer is unchanged
(the full optimum is feasible and optimal for the smaller problem, and tau < 1 makes it unique).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lipschitz(dictionary: jax.Array, iters: int = 100) -> jax.Array:
    """`||D||_2^2` (the largest eigenvalue of `D D^T`) by power iteration: the gradient's Lipschitz constant."""
    gram = dictionary @ dictionary.T
    v = jnp.ones(gram.shape[0], gram.dtype) / jnp.sqrt(gram.shape[0])

    def step(v, _):
        w = gram @ v
        return w / jnp.maximum(jnp.linalg.norm(w), 1e-30), None

    v, _ = jax.lax.scan(step, v, None, length=iters)
    return (v @ gram @ v) * 1.01  # a hair above the estimate: a step a little too short is still a descent


def _prox(u: jax.Array, lam: float, tau: float, step: jax.Array) -> jax.Array:
    shrunk = jnp.sign(u) * jnp.maximum(jnp.abs(u) - lam * tau * step, 0.0)
    return shrunk / (1.0 + lam * (1.0 - tau) * step)


def elastic_net(
    atoms: jax.Array,
    x: jax.Array,
    *,
    lam: float,
    tau: float,
    iters: int,
    lipschitz_constant: jax.Array,
    gram: jax.Array | None = None,
) -> jax.Array:
    """Codes `[..., atoms]` of `x` `[..., width]` over `atoms`, which is `[atoms, width]` shared by every row or
    `[..., atoms, width]` (a screened sub-dictionary per row). `lipschitz_constant` bounds `||atoms||_2^2`.

    With `gram` (`atoms atoms^T` of a shared dictionary) each iteration's gradient is `c G - x D^T`, `atoms^2`
    multiply-adds a row instead of `2 atoms width`: the cheaper form when there are fewer than twice as many
    atoms as dimensions."""
    shared = atoms.ndim == 2

    def correlate(r):  # r D^T
        return r @ atoms.T if shared else jnp.einsum("...w,...mw->...m", r, atoms)

    codes = jnp.zeros(x.shape[:-1] + (atoms.shape[-2],), x.dtype)
    solve = dict(lam=lam, tau=tau, iters=iters, step=1 / lipschitz_constant)
    if gram is not None:
        return _fista(_gram_gradient(gram, correlate(x)), codes, **solve)

    def gradient(c):  # (c D - x) D^T
        product = c @ atoms if shared else jnp.einsum("...m,...mw->...w", c, atoms)
        return correlate(product - x)

    return _fista(gradient, codes, **solve)


def _gram_gradient(gram: jax.Array, b: jax.Array):
    """`c -> c G - b` for a shared `[m, m]` Gram matrix or one `[..., m, m]` per row."""
    if gram.ndim == 2:
        return lambda c: c @ gram - b
    return lambda c: jnp.einsum("...m,...mn->...n", c, gram) - b


def _fista(gradient, zeros: jax.Array, *, lam: float, tau: float, iters: int, step: jax.Array) -> jax.Array:
    """FISTA's fixed iterations, from `zeros` (the codes' shape), on the elastic net whose smooth part has
    `gradient`."""

    def body(_, carry):
        c, y, t = carry
        c_next = _prox(y - step * gradient(y), lam, tau, step)
        t_next = (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y_next = c_next + ((t - 1.0) / t_next) * (c_next - c)
        return c_next, y_next, t_next

    c, _, _ = jax.lax.fori_loop(0, iters, body, (zeros, zeros, jnp.asarray(1.0, zeros.dtype)))
    return c


def screened_atoms(atoms: jax.Array, x: jax.Array, size: int, keep: jax.Array) -> jax.Array:
    """Indices `[..., size]` of each row's screened atoms: every atom where `keep` (bool `[atoms]`) is set, then
    the rest by `|D x|`, largest first."""
    return _screen(x @ atoms.T, size, keep)


def _screen(correlation: jax.Array, size: int, keep: jax.Array) -> jax.Array:
    score = jnp.where(keep, jnp.inf, jnp.abs(correlation))
    return jax.lax.top_k(score, size)[1]


def screened_elastic_net(
    atoms: jax.Array,
    x: jax.Array,
    *,
    lam: float,
    tau: float,
    iters: int,
    lipschitz_constant: jax.Array,
    size: int,
    keep: jax.Array,
    gram: jax.Array | None = None,
) -> jax.Array:
    """`elastic_net` over each row's top-`size` atoms (plus `keep`), scattered back to `[..., atoms]` codes.

    The full dictionary's Lipschitz constant bounds every sub-dictionary's, so one step size serves all rows.
    With the full dictionary's `gram`, each row's problem is its `[size, size]` block of it and its slice of
    `x D^T` (computed once, for the screen too): `size^2` multiply-adds an iteration instead of
    `2 size width`, and no `[rows, size, width]` copy of the atoms."""
    correlation = x @ atoms.T
    index = _screen(correlation, size, keep)
    solve = dict(lam=lam, tau=tau, iters=iters, step=1 / lipschitz_constant)
    if gram is not None:
        block = gram[index[..., :, None], index[..., None, :]]  # [..., size, size]
        b = jnp.take_along_axis(correlation, index, axis=-1)
        codes = _fista(_gram_gradient(block, b), jnp.zeros_like(b), **solve)
    else:
        sub = atoms[index]  # [..., size, width]
        codes = elastic_net(sub, x, lam=lam, tau=tau, iters=iters, lipschitz_constant=lipschitz_constant)
    full = jnp.zeros(x.shape[:-1] + (atoms.shape[0],), codes.dtype)
    flat_full, flat_index = full.reshape(-1, atoms.shape[0]), index.reshape(-1, size)
    rows = jnp.arange(flat_full.shape[0])[:, None]
    return flat_full.at[rows, flat_index].set(codes.reshape(-1, size)).reshape(full.shape)
