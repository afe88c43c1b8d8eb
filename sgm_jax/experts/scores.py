"""Expert scores: per-site AUROC of a response store, saved as safetensors with JSON metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

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


def labels_of(store: ResponseStore, needs: str) -> np.ndarray:
    """The store's 0/1 labels, refused with the first unlabelled samples named when any lacks one."""
    labels = store.labels
    unlabelled = [sid for sid, label in zip(store.sample_ids, labels) if label is None]
    if unlabelled:
        raise StoreError(
            f"store {store.directory}: {len(unlabelled)} samples have no label "
            f"(first: {unlabelled[:5]}); {needs} needs label 0/1 on every sample"
        )
    return np.asarray(labels, np.int32)


def per_site(
    store: ResponseStore, statistic: Callable[[np.ndarray], np.ndarray], *, desc: str, progress: bool = True
) -> dict[str, np.ndarray]:
    """`{site: statistic(responses)}` for every site of a store: float32 with the neurons on the last axis. In a
    job over several processes each computes its share of every site's neurons (the store's folder must be
    visible to all) and every process gets every result."""
    group = distributed.workers()
    results = {}
    for site in tqdm(list(store.sites), desc=desc, unit="site", disable=not progress):
        responses = store.load(site)
        bounds = np.linspace(0, responses.shape[1], group.count + 1).astype(int)  # this process's neurons
        try:
            mine = np.ascontiguousarray(statistic(responses[:, bounds[group.index] : bounds[group.index + 1]]))
        except NonFiniteError as err:
            raise StoreError(
                f"store {store.directory}, site {site!r}: {err} (rows are samples in store order"
                + (f"; columns count from neuron {bounds[group.index]})" if group.index else ")")
            ) from None
        parts = distributed.all_gather_bytes(mine.astype(np.float32).tobytes())
        rows = mine.shape[:-1]
        results[site] = np.concatenate([np.frombuffer(p, np.float32).reshape(*rows, -1) for p in parts], axis=-1)
    return results


def score_store(store: ResponseStore, *, mesh=None, progress: bool = True) -> dict[str, np.ndarray]:
    """`{site: AUROC [width]}` of every site in a complete store, labels from its manifest."""
    labels = labels_of(store, "AUROC")
    return per_site(store, lambda r: auroc(r, labels, mesh=mesh), desc="score", progress=progress)


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
