"""Expert scores: per-site AUROC of a response store, saved as safetensors with JSON metadata."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from sgm_jax.experts.auroc import NonFiniteError, auroc
from sgm_jax.responses.store import ResponseStore, StoreError
from sgm_jax.runtime import distributed
from sgm_jax.runtime.artifacts import KIND_KEY, SCORES, check_kind
from sgm_jax.runtime.atomic import atomic_write

METADATA_KEY = "sgm_jax"


def score_store(store: ResponseStore, *, mesh=None, progress: bool = True) -> dict[str, np.ndarray]:
    """`{site: AUROC [width]}` of every site in a complete store, labels from its manifest. In a job over several
    processes each scores its share of every site's neurons (the store's folder must be visible to all) and
    every process gets every score."""
    labels = store.labels
    unlabelled = [sid for sid, label in zip(store.sample_ids, labels) if label is None]
    if unlabelled:
        raise StoreError(
            f"store {store.directory}: {len(unlabelled)} samples have no label "
            f"(first: {unlabelled[:5]}); AUROC needs label 0/1 on every sample"
        )
    labels = np.asarray(labels, np.int32)
    group = distributed.workers()
    scores = {}
    for site in tqdm(list(store.sites), desc="score", unit="site", disable=not progress):
        responses = store.load(site)
        bounds = np.linspace(0, responses.shape[1], group.count + 1).astype(int)  # this process's neurons
        try:
            mine = auroc(responses[:, bounds[group.index] : bounds[group.index + 1]], labels, mesh=mesh)
        except NonFiniteError as err:
            raise StoreError(
                f"store {store.directory}, site {site!r}: {err} (rows are samples in store order"
                + (f"; columns count from neuron {bounds[group.index]})" if group.index else ")")
            ) from None
        parts = distributed.all_gather_bytes(mine.tobytes())
        scores[site] = np.concatenate([np.frombuffer(p, np.float32) for p in parts])
    return scores


def save_scores(path: str, scores: dict[str, np.ndarray], metadata: dict) -> None:
    tensors = {site: np.ascontiguousarray(s, np.float32) for site, s in scores.items()}
    header = {KIND_KEY: SCORES, METADATA_KEY: json.dumps(metadata)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_scores(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """`({site: AUROC}, metadata)` from a scores file written by `save_scores`."""
    check_kind(path, SCORES)
    with safe_open(path, "numpy") as f:
        metadata = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, metadata


def store_metadata(store: ResponseStore) -> dict:
    """What a scores file records about where its numbers came from."""
    m = store.manifest
    labels = np.asarray(m["labels"])
    return {
        "store": os.path.abspath(store.directory),
        "model": m["model"],
        "model_fingerprint": m["model_fingerprint"],
        "pooling": m["pooling"],
        "tokens": m["tokens"],
        "dataset": m["dataset"],
        "dataset_hash": m["dataset_hash"],
        "n_positive": int((labels == 1).sum()),
        "n_negative": int((labels == 0).sum()),
        "sites": m["sites"],
    }
