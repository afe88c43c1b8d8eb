"""The response store: pooled activations on disk, written in chunks, resumable, no pickle.

Layout of a store directory:
  manifest.json                what the store holds and how it was made (model fingerprint, sites and
                               widths, pooling, tokens, dataset hash, batch size, sample ids, labels)
  chunks/NNNNNN.safetensors    one per planned batch: `rows` (sample indices) and one tensor per site
  responses/<site>.npy         after `finalize`: `[n_samples, width]` float32 per site, rows in sample order

Every file is written to a temporary name and renamed into place, so an interruption
(Ctrl-C, kill -9) leaves only whole chunks. A resumed run skips the planned batches
whose chunk exists and recomputes the rest with the same plan, so it finishes with the
arrays an uninterrupted run gives, bitwise: no sample lost, none counted twice.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sgm_jax.artifacts import RESPONSES, check_kind
from sgm_jax.atomic import atomic_write, write_json
from sgm_jax.errors import SgmJaxError

FORMAT = "sgm_jax.responses/1"
# Fields that must agree for a store to be resumed or read back for the same purpose.
IDENTITY = ("model_fingerprint", "sites", "pooling", "tokens", "dataset_hash", "batch_size", "image_size")


class StoreError(SgmJaxError, ValueError):
    """A store that is malformed or was made for something else."""


def site_filename(site: str) -> str:
    return site.replace(":", "@") + ".npy"


class ResponseStore:
    def __init__(self, directory: str):
        self.directory = directory
        check_kind(directory, RESPONSES, StoreError)
        path = os.path.join(directory, "manifest.json")
        with open(path) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")

    @classmethod
    def create_or_resume(cls, directory: str, manifest: dict[str, Any]) -> ResponseStore:
        """Open the store at `directory` if it was made the same way, else create it; refuse a different one."""
        if os.path.exists(os.path.join(directory, "manifest.json")):
            store = cls(directory)
            store.check(**{k: manifest[k] for k in IDENTITY})
            if store.manifest["sample_ids"] != manifest["sample_ids"]:
                raise StoreError(f"store {directory} holds other samples than this dataset")
            store._remove_partial_writes()
            return store
        os.makedirs(os.path.join(directory, "chunks"), exist_ok=True)
        write_json(
            os.path.join(directory, "manifest.json"),
            {"format": FORMAT, "kind": RESPONSES, **manifest, "complete": False},
        )
        return cls(directory)

    def check(self, **expected: Any) -> None:
        """Raise naming every identity field (model_fingerprint, pooling, dataset_hash, ...) that differs."""
        wrong = [
            f"{k}: store has {self.manifest.get(k)!r}, asked for {v!r}"
            for k, v in expected.items()
            if self.manifest.get(k) != v
        ]
        if wrong:
            raise StoreError(f"store {self.directory} was made differently — " + "; ".join(wrong))

    @property
    def sites(self) -> dict[str, int]:
        return dict(self.manifest["sites"])

    @property
    def sample_ids(self) -> list[str]:
        return list(self.manifest["sample_ids"])

    @property
    def labels(self) -> list[int | None]:
        return list(self.manifest["labels"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def _chunk_path(self, index: int) -> str:
        return os.path.join(self.directory, "chunks", f"{index:06d}.safetensors")

    def _remove_partial_writes(self) -> None:
        """Temporary files a killed run left behind; whole chunks are kept."""
        for folder in (
            self.directory,
            os.path.join(self.directory, "chunks"),
            os.path.join(self.directory, "responses"),
        ):
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if name.startswith(".tmp-"):
                        os.remove(os.path.join(folder, name))

    def done_batches(self) -> set[int]:
        folder = os.path.join(self.directory, "chunks")
        names = os.listdir(folder) if os.path.isdir(folder) else []
        return {int(n.split(".")[0]) for n in names if n.endswith(".safetensors") and not n.startswith(".")}

    def write_batch(self, index: int, rows: np.ndarray, responses: dict[str, np.ndarray]) -> None:
        tensors = {"rows": np.asarray(rows, np.int64)}
        tensors.update({f"site/{name}": np.ascontiguousarray(value, np.float32) for name, value in responses.items()})
        atomic_write(self._chunk_path(index), lambda tmp: save_file(tensors, tmp))

    def finalize(self, plan: list[list[int]]) -> None:
        """Assemble the chunks into one `[n_samples, width]` array per site, then drop the chunks."""
        n = len(self.sample_ids)
        out_dir = os.path.join(self.directory, "responses")
        os.makedirs(out_dir, exist_ok=True)
        seen = np.zeros(n, bool)
        for index, planned in enumerate(plan):
            with safe_open(self._chunk_path(index), "numpy") as f:
                rows = f.get_tensor("rows")
            if rows.tolist() != list(planned) or seen[rows].any():
                raise StoreError(
                    f"chunk {self._chunk_path(index)} holds rows {rows.tolist()[:8]}…, "
                    f"the plan says {list(planned)[:8]}…"
                )
            seen[rows] = True
        if not seen.all():
            raise StoreError(f"store {self.directory} misses samples {np.flatnonzero(~seen)[:10].tolist()}")
        for site, width in self.sites.items():

            def write(tmp, site=site, width=width):
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, width))
                for index in range(len(plan)):
                    with safe_open(self._chunk_path(index), "numpy") as f:
                        array[f.get_tensor("rows")] = f.get_tensor(f"site/{site}")
                array.flush()
                del array

            atomic_write(os.path.join(out_dir, site_filename(site)), write)
        self.manifest["complete"] = True
        write_json(os.path.join(self.directory, "manifest.json"), self.manifest)
        shutil.rmtree(os.path.join(self.directory, "chunks"))

    def load(self, site: str, *, mmap: bool = True) -> np.ndarray:
        """`[n_samples, width]` responses of one site (memory-mapped by default)."""
        if not self.complete:
            raise StoreError(f"store {self.directory} is incomplete: rerun the same collect command to finish it")
        if site not in self.sites:
            raise StoreError(f"store {self.directory} has no site {site!r} (it has {list(self.sites)[:5]}…)")
        path = os.path.join(self.directory, "responses", site_filename(site))
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
