"""Training an SAE with optax on a token store, streamed chunk by chunk, checkpointed with orbax, resumable.

The batches are a pure function of the seed and the step (each epoch visits the chunks in a seeded order and
each chunk's tokens in a seeded order), so a run resumed from its last checkpoint sees the batches an
uninterrupted run would have seen and ends with the same parameters. After every step the decoder's rows are
renormalised to unit length; an atom that fired on none of the last `dead_window` steps' tokens is dead.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from sgm_jax.runtime.atomic import write_json
from sgm_jax.runtime.errors import InputError, OptionError
from sgm_jax.steering.dictionary import ConceptDictionary
from sgm_jax.steering.sae import SAE, SAEConfig, decode, encode, init_params, unit_rows
from sgm_jax.steering.tokens import TokenStore


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 2000
    batch_size: int = 512
    learning_rate: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50
    dead_window: int = 500
    eval_tokens: int = 20000

    def __post_init__(self):
        if min(self.steps, self.batch_size, self.checkpoint_every, self.log_every, self.dead_window) < 1:
            raise OptionError(f"SAE training settings must be positive, got {self}")


def batches(store: TokenStore, batch_size: int, seed: int, start: int) -> Iterator[np.ndarray]:
    """The training stream from step `start` on: `[batch_size, width]` per step, the same on every run."""
    counts = store.chunk_tokens
    total = sum(counts)
    if total == 0:
        raise InputError(f"token store {store.directory} holds no tokens")
    epoch, offset = divmod(start * batch_size, total)
    buffer = np.zeros((0, store.width), np.float32)
    while True:
        for chunk in np.random.default_rng([seed, epoch]).permutation(len(counts)):
            if offset >= counts[chunk]:
                offset -= counts[chunk]
                continue
            order = np.random.default_rng([seed, epoch, int(chunk)]).permutation(counts[chunk])
            buffer = np.concatenate([buffer, store.chunk(int(chunk))[order][offset:]])
            offset = 0
            while len(buffer) >= batch_size:
                yield buffer[:batch_size]
                buffer = buffer[batch_size:]
        epoch += 1


def _loss(params, z, config: SAEConfig):
    f = encode(params, z, config)
    err = z - decode(params, f)
    sse = jnp.sum(err * err, -1)
    loss = sse.mean()
    if config.kind == "l1":
        loss = loss + config.l1 * jnp.sum(f, -1).mean()
    return loss, (sse.sum(), f)


def _step_fn(config: SAEConfig, tx: optax.GradientTransformation):
    @jax.jit
    def step(params, opt_state, z):
        (loss, (sse, f)), grads = jax.value_and_grad(_loss, has_aux=True)(params, z, config)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = {**params, "W_dec": unit_rows(params["W_dec"])}
        spread = jnp.sum((z - z.mean(0)) ** 2)
        return params, opt_state, loss, 1.0 - sse / spread, (f > 0).any(0)

    return step


def fraction_of_variance_explained(sae: SAE, store: TokenStore, max_tokens: int) -> float:
    """`1 - SSE / SST` over the store's first `max_tokens` tokens (SST about their own mean)."""
    taken, sse, parts = 0, 0.0, []
    for chunk in store.chunks():
        part = chunk[: max_tokens - taken]
        parts.append(part)
        taken += len(part)
        if taken >= max_tokens:
            break
    z = np.concatenate(parts)
    for start in range(0, len(z), 4096):
        rows = z[start : start + 4096]
        sse += float(np.sum((rows - sae.reconstruct(rows)) ** 2))
    return 1.0 - sse / float(np.sum((z - z.mean(0)) ** 2))


def _read_history(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def train_sae(
    store: TokenStore,
    config: SAEConfig,
    settings: TrainSettings,
    checkpoint_dir: str,
    *,
    dictionary: ConceptDictionary | None = None,
    progress: bool = True,
) -> SAE:
    """Train (or resume training) an SAE of the store's site; the decoder starts from `dictionary` when given."""
    if not store.complete:
        raise InputError(f"token store {store.directory} is incomplete: rerun the command that collected it")
    if config.width != store.width:
        raise OptionError(f"the SAE is {config.width} wide, the store's site is {store.width} wide")
    if dictionary is not None and dictionary.site != store.site:
        raise InputError(f"the dictionary is for site {dictionary.site!r}, the token store for {store.site!r}")
    checkpoint_dir = os.path.abspath(checkpoint_dir)
    tx = optax.adam(settings.learning_rate)
    mean = next(store.chunks()).mean(0)
    params = jax.tree.map(
        jnp.asarray,
        init_params(
            config, mean=mean, concept_atoms=None if dictionary is None else dictionary.atoms, seed=settings.seed
        ),
    )
    state = {"params": params, "opt_state": tx.init(params), "last_fired": jnp.zeros(config.atoms, jnp.int32)}
    history_path = os.path.join(checkpoint_dir, "history.json")
    # What must agree for a checkpoint to be resumed (the step count may grow: training goes on).
    run = {
        "config": dataclasses.asdict(config),
        "site": store.site,
        "store": store.manifest["identity"],
        **{k: getattr(settings, k) for k in ("batch_size", "learning_rate", "seed")},
        "dictionary": None if dictionary is None else list(dictionary.concepts),
    }
    with ocp.CheckpointManager(checkpoint_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2)) as manager:
        start, history = 0, []
        if manager.latest_step() is not None:
            saved = _read_history(history_path)
            if saved.get("run") != run:
                raise InputError(
                    f"{checkpoint_dir} holds the checkpoints of another SAE training (another store, site, "
                    "initialisation or settings); use a new folder"
                )
            start = manager.latest_step()
            state = manager.restore(start, args=ocp.args.StandardRestore(state))
            history = [h for h in saved.get("history", []) if h["step"] <= start]
        step_fn = _step_fn(config, tx)
        stream = batches(store, settings.batch_size, settings.seed, start)
        params, opt_state, last_fired = state["params"], state["opt_state"], state["last_fired"]
        bar = tqdm(
            range(start, settings.steps),
            desc="sae",
            unit="step",
            disable=not progress,
            initial=start,
            total=settings.steps,
        )
        for step in bar:
            params, opt_state, loss, fve, fired = step_fn(params, opt_state, jnp.asarray(next(stream)))
            last_fired = jnp.where(fired, step + 1, last_fired)
            done = step + 1
            if done % settings.log_every == 0 or done == settings.steps:
                history.append({"step": done, "loss": float(loss), "fve": float(fve)})
                bar.set_postfix(loss=f"{float(loss):.4g}", fve=f"{float(fve):.3f}")
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                state = {"params": params, "opt_state": opt_state, "last_fired": last_fired}
                manager.save(done, args=ocp.args.StandardSave(state))
                manager.wait_until_finished()
                write_json(history_path, {"run": run, "history": history})
    steps = max(settings.steps, start)
    dead = int(np.sum(np.asarray(last_fired) <= steps - settings.dead_window))
    sae = SAE(
        site=store.site,
        config=config,
        params={k: np.asarray(v, np.float32) for k, v in params.items()},
        concepts=() if dictionary is None else dictionary.concepts,
        metadata={
            "model_fingerprint": store.manifest["model_fingerprint"],
            "init": "random" if dictionary is None else "dictionary",
            "steps": steps,
            "tokens_seen": steps * settings.batch_size,
            "store_tokens": store.tokens,
            "dead_atoms": dead,
            "never_fired": int(np.sum(np.asarray(last_fired) == 0)),
            "history": history,
            **{k: getattr(settings, k) for k in ("batch_size", "learning_rate", "seed")},
        },
    )
    fve = fraction_of_variance_explained(sae, store, settings.eval_tokens)
    return dataclasses.replace(sae, metadata={**sae.metadata, "fraction_of_variance_explained": fve})
