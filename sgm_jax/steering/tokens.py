"""The token store: one site's activations at every real token of a dataset, on disk, for SAE training.

The same discipline as the response store (`sgm_jax.responses.store`): a manifest with the collection's identity, one
safetensors chunk per planned batch (its tokens' activations, their sample rows, a checksum and the identity
in the header), atomic writes, and a resumed run that keeps the intact chunks and recomputes the rest with the
same plan. Chunks are kept (not assembled): training streams them one at a time, so a dataset larger than
memory works.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from sgm_jax.data.encode import encode
from sgm_jax.data.samples import Sample, dataset_hash
from sgm_jax.decoding.batching import collate, pad_token_id, plan_batches
from sgm_jax.models.fingerprint import model_fingerprint
from sgm_jax.responses.capture import token_batch
from sgm_jax.responses.sites import resolve
from sgm_jax.responses.store import tensors_digest
from sgm_jax.runtime.artifacts import TOKENS, check_kind
from sgm_jax.runtime.atomic import atomic_write, write_json
from sgm_jax.runtime.errors import InputError
from sgm_jax.runtime.locks import writer_lock

FORMAT = "sgm_jax.tokens/1"
IDENTITY = ("model_fingerprint", "site", "dataset_hash", "batch_size")


class TokenStore:
    def __init__(self, directory: str):
        check_kind(directory, TOKENS, InputError)
        with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.directory = directory

    @property
    def site(self) -> str:
        return self.manifest["site"]

    @property
    def width(self) -> int:
        return int(self.manifest["width"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def chunk_tokens(self) -> list[int]:
        return list(self.manifest["chunk_tokens"])

    @property
    def tokens(self) -> int:
        return sum(self.chunk_tokens)

    def chunk_path(self, index: int) -> str:
        return os.path.join(self.directory, "chunks", f"{index:06d}.safetensors")

    def chunk_problem(self, index: int) -> str | None:
        try:
            with safe_open(self.chunk_path(index), "numpy") as f:
                header = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            return f"unreadable ({err})"
        if header.get("identity") != self.manifest["identity"]:
            return "made for another collection"
        if header.get("sha256") != tensors_digest(tensors):
            return "its data differs from its checksum"
        return None

    def chunk(self, index: int) -> np.ndarray:
        """`[tokens, width]` float32 of one chunk, checked."""
        problem = self.chunk_problem(index)
        if problem is not None:
            raise InputError(
                f"token store {self.directory}: chunk {index} is damaged ({problem}); rerun the command that "
                "collected it to recompute it"
            )
        with safe_open(self.chunk_path(index), "numpy") as f:
            return f.get_tensor("activations")

    def chunks(self) -> Iterator[np.ndarray]:
        for index in range(len(self.chunk_tokens)):
            yield self.chunk(index)


def collect_tokens(
    model,
    processor,
    samples: Sequence[Sample],
    out_dir: str,
    *,
    site: str,
    batch_size: int = 16,
    progress: bool = True,
) -> TokenStore:
    """Activations of `site` at every real token of each sample (prompt and response), resuming if the store
    exists and was made the same way."""
    (ref,) = resolve(model, [site])
    encoded_lengths = [len(encode(s, processor)["input_ids"]) for s in samples]
    plan = plan_batches(encoded_lengths, batch_size)
    identity = {
        "model_fingerprint": model_fingerprint(model),
        "site": ref.name,
        "dataset_hash": dataset_hash(samples),
        "batch_size": batch_size,
    }
    path = os.path.join(out_dir, "manifest.json")
    with writer_lock(out_dir, "token store"):
        store = None
        if os.path.exists(path):
            try:
                store = TokenStore(out_dir)
            except (InputError, ValueError):
                print(f"token store {out_dir}: manifest.json was damaged; rebuilt it", file=sys.stderr)
        if store is not None:
            wrong = [
                f"{k}: store has {store.manifest.get(k)!r}, asked for {v!r}"
                for k, v in identity.items()
                if store.manifest.get(k) != v
            ]
            if wrong:
                raise InputError(f"token store {out_dir} was made differently — " + "; ".join(wrong))
            if store.complete:
                return store
        manifest = {
            "format": FORMAT,
            "kind": TOKENS,
            **identity,
            "width": ref.width,
            "samples": len(samples),
            "chunks": len(plan),
            "identity": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32],
            "complete": False,
        }
        os.makedirs(os.path.join(out_dir, "chunks"), exist_ok=True)
        write_json(path, manifest)
        store = TokenStore(out_dir)
        done = {i for i in range(len(plan)) if os.path.exists(store.chunk_path(i)) and store.chunk_problem(i) is None}
        pad = pad_token_id(processor)
        counts = [0] * len(plan)
        for index in tqdm(range(len(plan)), desc="tokens", unit="batch", disable=not progress):
            if index in done:
                with safe_open(store.chunk_path(index), "numpy") as f:
                    counts[index] = f.get_slice("activations").get_shape()[0]
                continue
            rows = plan[index]
            batch = collate([encode(samples[i], processor) for i in rows], pad)
            lengths = np.asarray(batch["attention_mask"]).sum(1)
            values = token_batch(model, batch, (ref,))[ref.name]
            tensors = {
                "activations": np.ascontiguousarray(values, np.float32),
                "rows": np.repeat(np.asarray(rows, np.int64), lengths),
            }
            header = {"sha256": tensors_digest(tensors), "identity": manifest["identity"]}
            atomic_write(store.chunk_path(index), lambda tmp, t=tensors, h=header: save_file(t, tmp, metadata=h))
            counts[index] = len(values)
        store.manifest.update(chunk_tokens=counts, complete=True)
        write_json(path, store.manifest)
    return store
