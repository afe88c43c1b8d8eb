"""A safety prober (AutoSteer's idea): a logistic probe on the model's pooled activations at one site.

Trained on the train split's prompts (rendered with the generation prompt, no response: the probe must
decide before anything is generated) with optax, on standardised features, full batch. Saved as one
safetensors file (weights, bias, feature mean and scale) whose header holds the metadata: site, pooling,
threshold, train accuracy and the base model's fingerprint. It serves as SafeCoDe's verdict source and as
the `route` stage that applies an intervention only to the rows it flags (`ProberGate`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from safetensors import SafetensorError
from safetensors.numpy import load_file, safe_open

from sgm_jax.data.samples import DatasetError, Sample
from sgm_jax.defenses.base import Defense
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.features import prompt_features
from sgm_jax.responses.sites import site_refs
from sgm_jax.runtime.atomic import atomic_write
from sgm_jax.runtime.errors import InputError, MissingFileError

FORMAT = "sgm_jax.prober/1"


@dataclasses.dataclass(frozen=True)
class Prober:
    site: str
    weight: np.ndarray  # float32 [width]
    bias: float
    mean: np.ndarray  # float32 [width]: feature standardisation
    scale: np.ndarray
    pooling: str = "last"
    threshold: float = 0.5
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    # P(harmful) of prompts already read, by model, processor and what the prompt renders from: a comparison
    # asks for the same prompts' verdicts under every configuration that reads the prober.
    _seen: dict[tuple, float] = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"site": self.site, "pooling": self.pooling, "threshold": self.threshold, **self.metadata}

    def probabilities(self, base, processor, samples: Sequence[Sample], *, batch_size: int = 16) -> np.ndarray:
        """P(harmful) per sample from the base model's activations at the probe's site (a prompt this prober
        has read before under the same model and processor is not run again)."""
        site = site_refs(base).get(self.site)
        if site is not None and site.width != self.weight.shape[0]:
            raise InputError(
                f"prober for site {self.site!r} has {self.weight.shape[0]} inputs, the model's site has "
                f"{site.width} neurons: it was trained on another model"
            )
        model = (model_fingerprint(base), id(processor))
        keys = [(*model, s.prompt, s.system, s.image, _stat(s.image)) for s in samples]
        first: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            if key not in self._seen:
                first.setdefault(key, i)
        todo = list(first.values())
        if todo:
            chosen = [samples[i] for i in todo]
            features = prompt_features(base, processor, chosen, self.site, self.pooling, batch_size=batch_size)
            logits = ((features - self.mean) / self.scale) @ self.weight + self.bias
            self._seen.update(zip((keys[i] for i in todo), 1.0 / (1.0 + np.exp(-logits))))
        return np.asarray([self._seen[k] for k in keys])

    def flags(self, base, processor, samples: Sequence[Sample]) -> np.ndarray:
        return self.probabilities(base, processor, samples) >= self.threshold

    def save(self, path: str) -> None:
        from safetensors.numpy import save_file

        header = {
            "format": FORMAT,
            "site": self.site,
            "bias": repr(float(self.bias)),
            "pooling": self.pooling,
            "threshold": repr(float(self.threshold)),
            "metadata": json.dumps(self.metadata),
        }
        tensors = {"weight": self.weight, "mean": self.mean, "scale": self.scale}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _stat(path: str | None) -> tuple[int, int] | None:
    """An image file's modification time and size (a rewritten file is a new prompt)."""
    try:
        stat = os.stat(path) if path else None
    except OSError:
        return None
    return None if stat is None else (stat.st_mtime_ns, stat.st_size)


def load_prober(path: str) -> Prober:
    """A prober saved by `Prober.save`; another file is refused naming what it is not."""
    try:
        with safe_open(path, "np") as f:
            header = f.metadata() or {}
        tensors = load_file(path)
    except FileNotFoundError:
        raise MissingFileError(f"prober file {path} does not exist") from None
    except (SafetensorError, OSError) as err:
        raise InputError(f"{path} is not a readable safetensors file ({err})") from None
    if header.get("format") != FORMAT or set(tensors) != {"weight", "mean", "scale"}:
        raise InputError(f"{path} is not a prober (made by `sgm-jax prober`); its header says {header.get('format')!r}")
    return Prober(
        site=header["site"],
        weight=tensors["weight"],
        bias=float(header["bias"]),
        mean=tensors["mean"],
        scale=tensors["scale"],
        pooling=header["pooling"],
        threshold=float(header["threshold"]),
        metadata=json.loads(header["metadata"]),
    )


def train_prober(
    base,
    processor,
    samples: Sequence[Sample],
    *,
    site: str,
    pooling: str = "last",
    steps: int = 300,
    learning_rate: float = 0.05,
    l2: float = 1e-3,
    threshold: float = 0.5,
    batch_size: int = 16,
) -> Prober:
    """A logistic probe for label 1 (harmful) vs 0 on the prompts of `samples` (open-ended, labelled)."""
    labelled = [s for s in samples if s.label in (0, 1) and not s.options]
    labels = np.asarray([s.label for s in labelled], np.float32)
    if len(set(labels.tolist())) < 2:
        raise DatasetError("the prober needs prompts of both labels (1 harmful, 0 benign) to train on")
    features = prompt_features(base, processor, labelled, site, pooling, batch_size=batch_size)
    mean, scale = features.mean(0), features.std(0) + 1e-6
    x = jax.device_put(((features - mean) / scale).astype(np.float32))
    y = jax.device_put(labels)
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    tx = optax.adam(learning_rate)

    def loss(p):
        logits = x @ p["w"] + p["b"]
        return optax.sigmoid_binary_cross_entropy(logits, y).mean() + l2 * jnp.sum(p["w"] ** 2)

    @jax.jit
    def fit(p):
        def step(carry, _):
            p, state = carry
            value, grads = jax.value_and_grad(loss)(p)
            updates, state = tx.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), value

        (p, _), losses = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
        return p, losses

    params, losses = fit(params)
    w, b = np.asarray(params["w"], np.float32), float(params["b"])
    accuracy = float((((np.asarray(x) @ w + b) > 0) == (labels > 0.5)).mean())
    return Prober(
        site=site,
        weight=w,
        bias=b,
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        pooling=pooling,
        threshold=threshold,
        metadata={
            "train_samples": len(labelled),
            "train_accuracy": accuracy,
            "final_loss": float(losses[-1]),
            "model_fingerprint": model_fingerprint(base),
        },
    )


class ProberGate(Defense):
    """Apply the configuration's intervention only to the rows the prober flags; the rest are answered by the
    base model, exactly as with no intervention (the DSAS idea: SGM that costs nothing on benign inputs)."""

    name = "prober-gate"
    stage = "route"

    def __init__(self, prober: Prober):
        self.prober = prober

    def describe(self):
        return {"name": self.name, **self.prober.describe()}

    def flags(self, base, processor, samples):
        return self.prober.flags(base, processor, samples)
