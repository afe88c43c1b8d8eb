"""Sparse autoencoders of one site's activations, with the decoder initialised from a concept dictionary.

    f(z) = TopK_k(relu(W_enc (z - b_dec) + b_enc))     (or relu(...) with an L1 penalty)
    z_hat = f W_dec + b_dec                             (W_dec `[atoms, width]`, unit rows)

DACO's initialisation: the first atoms are the dictionary's normalised concept atoms, the rest random unit
vectors; `W_enc = W_dec^T`, `b_dec` the mean activation, `b_enc = 0`. Parameters are a plain dict of arrays,
so optax trains them and safetensors saves them as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.runtime.artifact_files import check_made_for, load_artifact, save_artifact
from sgm_jax.runtime.artifacts import SAE as SAE_KIND
from sgm_jax.runtime.errors import OptionError

KINDS = ("topk", "l1")
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    width: int
    atoms: int
    kind: str = "topk"
    k: int = 16
    l1: float = 1e-3

    def __post_init__(self):
        if self.kind not in KINDS:
            raise OptionError(f"SAE kind {self.kind!r} is not one of {list(KINDS)}")
        if self.atoms < 1 or self.width < 1 or (self.kind == "topk" and not 1 <= self.k <= self.atoms):
            raise OptionError(f"SAE needs atoms >= 1 and 1 <= k <= atoms, got {self}")


def encode(params: dict[str, jax.Array], z: jax.Array, config: SAEConfig) -> jax.Array:
    """Atom activations `[..., atoms]` of `z` `[..., width]`."""
    pre = jax.nn.relu((z - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
    if config.kind == "l1":
        return pre
    values, index = jax.lax.top_k(pre, config.k)
    flat = jnp.zeros((values.size // config.k, config.atoms), pre.dtype)
    rows = jnp.arange(flat.shape[0])[:, None]
    flat = flat.at[rows, index.reshape(-1, config.k)].set(values.reshape(-1, config.k))
    return flat.reshape(pre.shape)


def decode(params: dict[str, jax.Array], f: jax.Array) -> jax.Array:
    return f @ params["W_dec"] + params["b_dec"]


def unit_rows(w: jax.Array) -> jax.Array:
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def init_params(config: SAEConfig, *, mean: np.ndarray, concept_atoms: np.ndarray | None, seed: int) -> dict:
    """DACO's initialisation (random unit atoms only, without `concept_atoms`)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(config.atoms, config.width)).astype(np.float32)
    if concept_atoms is not None:
        n = concept_atoms.shape[0]
        if n > config.atoms or concept_atoms.shape[1] != config.width:
            raise OptionError(
                f"the dictionary has {n} atoms of width {concept_atoms.shape[1]}; the SAE has {config.atoms} atoms "
                f"of width {config.width}"
            )
        w[:n] = concept_atoms
    w = np.asarray(unit_rows(jnp.asarray(w)))
    return {
        "W_enc": w.T.copy(),
        "b_enc": np.zeros(config.atoms, np.float32),
        "W_dec": w,
        "b_dec": np.asarray(mean, np.float32),
    }


@dataclasses.dataclass(frozen=True)
class SAE:
    """A trained SAE of `site`; `concepts` names its first atoms (those a dictionary initialised)."""

    site: str
    config: SAEConfig
    params: dict[str, np.ndarray]
    concepts: tuple[str, ...] = ()
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def digest(self) -> str:
        """Identity of the decoder (what an annotation was made for)."""
        return hashlib.sha256(np.ascontiguousarray(self.params["W_dec"]).tobytes()).hexdigest()[:32]

    def reconstruct(self, z: np.ndarray) -> np.ndarray:
        p = {k: jnp.asarray(v) for k, v in self.params.items()}
        return np.asarray(decode(p, encode(p, jnp.asarray(z), self.config)))

    def save(self, path: str) -> None:
        meta = {
            **self.metadata,
            "site": self.site,
            "config": dataclasses.asdict(self.config),
            "concepts": list(self.concepts),
            "digest": self.digest(),
        }
        save_artifact(path, SAE_KIND, dict(self.params), meta)


def load_sae(path: str, *, model=None, site: str | None = None) -> SAE:
    """An SAE saved by `SAE.save`; with `model` (and `site`), refused unless made for them."""
    tensors, meta = load_artifact(path, SAE_KIND)
    check_made_for(path, SAE_KIND, meta, fingerprint=None if model is None else model_fingerprint(model), site=site)
    rest = {k: v for k, v in meta.items() if k not in ("site", "config", "concepts", "digest")}
    return SAE(
        meta["site"], SAEConfig(**meta["config"]), {k: tensors[k] for k in PARAMS}, tuple(meta["concepts"]), rest
    )
