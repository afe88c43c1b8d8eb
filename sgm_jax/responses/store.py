"""The response store: pooled activations on disk, written in chunks, resumable, self-checking, no pickle.

Layout of a store directory:
  manifest.json                what the store holds and how it was made (model fingerprint, sites and
                               widths, pooling, tokens, dataset hash, batch size, sample ids, labels), its
                               identity digest and, once complete, a sha256 of every responses file
  chunks/NNNNNN.safetensors    one per planned batch: `rows` (sample indices) and one tensor per site; its
                               header holds the sha256 of its tensors and the identity of the collection
  responses/<site>.npy         after `finalize`: `[n_samples, width]` float32 per site, rows in sample order
  .lock                        held by the process writing the store (see `sgm_jax.runtime.locks`)

Every file is written to a temporary name and renamed into place, so an interruption
(Ctrl-C, kill -9) leaves only whole chunks. A resumed run skips the planned batches
whose chunk exists and is intact and recomputes the rest with the same plan, so it finishes with the
arrays an uninterrupted run gives, bitwise: no sample lost, none counted twice. A chunk that was damaged
on disk (truncated, a flipped bit, made for another collection) is dropped and recomputed; a damaged
manifest is rebuilt keeping the chunks made for the same collection; a damaged responses file is named
when read and recollected by rerunning the collect command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from sgm_jax.runtime.artifacts import RESPONSES, check_kind
from sgm_jax.runtime.atomic import atomic_write, write_json
from sgm_jax.runtime.errors import SgmJaxError

FORMAT = "sgm_jax.responses/1"
# Fields that must agree for a store to be resumed or read back for the same purpose.
IDENTITY = ("model_fingerprint", "sites", "pooling", "tokens", "dataset_hash", "batch_size", "image_size")


class StoreError(SgmJaxError, ValueError):
    """A store that is malformed, damaged or was made for something else."""


def identity_digest(manifest: dict[str, Any]) -> str:
    """What a chunk must have been made for to belong to the store: the identity fields and the sample ids."""
    fields = {k: manifest.get(k) for k in IDENTITY} | {"sample_ids": manifest["sample_ids"]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(path: str) -> dict[str, Any] | None:
    """The manifest at `path`, or None when it is empty, torn or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def site_filename(site: str) -> str:
    return site.replace(":", "@") + ".npy"


class ResponseStore:
    def __init__(self, directory: str):
        self.directory = directory
        path = os.path.join(directory, "manifest.json")
        manifest = _read_manifest(path) if os.path.isfile(path) else None
        if os.path.isfile(path) and manifest is None:
            raise StoreError(
                f"{path} is damaged (empty, torn or not a JSON object); rerun the collect command that made "
                "this store to rebuild it"
            )
        check_kind(directory, RESPONSES, StoreError)
        self.manifest = manifest
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        missing = [k for k in ("sites", "sample_ids", "labels") if k not in self.manifest]  # what reading needs
        if missing:
            raise StoreError(
                f"{path} lacks the fields {missing}; rerun the collect command that made this store to rebuild it"
            )

    @classmethod
    def create_or_resume(cls, directory: str, manifest: dict[str, Any]) -> ResponseStore:
        """Open the store at `directory` if it was made the same way, else create it; refuse a different one.

        The caller holds the store's writer lock. A damaged manifest is rebuilt from `manifest` (chunks made
        for another collection are dropped later, by `intact_batches`)."""
        path = os.path.join(directory, "manifest.json")
        fresh = {"format": FORMAT, "kind": RESPONSES, **manifest, "identity": identity_digest(manifest)}
        if os.path.exists(path):
            if _read_manifest(path) is not None:
                store = cls(directory)
                store.check(**{k: manifest[k] for k in IDENTITY})
                if store.manifest["sample_ids"] != manifest["sample_ids"]:
                    raise StoreError(f"store {directory} holds other samples than this dataset")
                store._remove_partial_writes()
                return store
            print(
                f"store {directory}: manifest.json was damaged; rebuilt it, keeping the chunks made for this "
                "same collection",
                file=sys.stderr,
            )
            shutil.rmtree(os.path.join(directory, "responses"), ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
        write_json(path, {**fresh, "complete": False})  # first: a store that cannot be written leaves nothing
        os.makedirs(os.path.join(directory, "chunks"), exist_ok=True)
        store = cls(directory)
        store._remove_partial_writes()
        return store

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

    def intact_batches(self) -> set[int]:
        """Indices of the chunks on disk that are whole, unaltered and made for this collection; any other chunk
        is removed (and counted on stderr), so the caller recomputes it."""
        folder = os.path.join(self.directory, "chunks")
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        intact, damaged = set(), []
        for name in names:
            if not name.endswith(".safetensors") or name.startswith("."):
                continue
            index = int(name.split(".")[0])
            if self._chunk_problem(index) is None:
                intact.add(index)
            else:
                os.remove(self._chunk_path(index))
                damaged.append(name)
        if damaged:
            print(
                f"store {self.directory}: {len(damaged)} damaged chunks removed and recomputed now "
                f"({', '.join(damaged[:5])}{', ...' if len(damaged) > 5 else ''})",
                file=sys.stderr,
            )
        return intact

    def _chunk_problem(self, index: int) -> str | None:
        """What is wrong with a chunk on disk (unreadable, another collection's, a checksum that differs), or None."""
        try:
            with safe_open(self._chunk_path(index), "numpy") as f:
                metadata = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            return f"unreadable ({err})"
        if metadata.get("identity") != self.manifest.get("identity"):
            return "made for another collection"
        if metadata.get("sha256") != tensors_digest(tensors):
            return "its data differs from its checksum"
        return None

    def write_batch(self, index: int, rows: np.ndarray, responses: dict[str, np.ndarray]) -> None:
        tensors = {"rows": np.asarray(rows, np.int64)}
        tensors.update({f"site/{name}": np.ascontiguousarray(value, np.float32) for name, value in responses.items()})
        header = {"sha256": tensors_digest(tensors), "identity": self.manifest["identity"]}
        atomic_write(self._chunk_path(index), lambda tmp: save_file(tensors, tmp, metadata=header))

    def finalize(self, plan: list[list[int]]) -> None:
        """Check every chunk, assemble them into one `[n_samples, width]` array per site, then drop the chunks."""
        n = len(self.sample_ids)
        out_dir = os.path.join(self.directory, "responses")
        os.makedirs(out_dir, exist_ok=True)
        seen = np.zeros(n, bool)
        for index, planned in enumerate(plan):
            problem = self._chunk_problem(index)
            if problem is not None:
                os.remove(self._chunk_path(index))
                raise StoreError(
                    f"chunk {self._chunk_path(index)} was damaged after it was written ({problem}); it is removed, "
                    "rerun the same command to recompute it"
                )
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
        checksums = {}
        for site, width in self.sites.items():

            def write(tmp, site=site, width=width):
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, width))
                for index in range(len(plan)):
                    with safe_open(self._chunk_path(index), "numpy") as f:
                        array[f.get_tensor("rows")] = f.get_tensor(f"site/{site}")
                array.flush()
                del array
                checksums[site] = file_digest(tmp)

            atomic_write(os.path.join(out_dir, site_filename(site)), write)
        self.manifest["checksums"] = checksums
        self.manifest["complete"] = True
        write_json(os.path.join(self.directory, "manifest.json"), self.manifest)
        shutil.rmtree(os.path.join(self.directory, "chunks"))

    def damaged_responses(self) -> list[str]:
        """The sites of a complete store whose responses file is missing or differs from its checksum."""
        checksums = self.manifest.get("checksums", {})
        return [
            site
            for site in self.sites
            if not os.path.isfile(path := self._responses_path(site)) or file_digest(path) != checksums.get(site)
        ]

    def reopen(self) -> None:
        """Make a complete store whose responses are damaged incomplete again, to be collected anew."""
        shutil.rmtree(os.path.join(self.directory, "responses"), ignore_errors=True)
        os.makedirs(os.path.join(self.directory, "chunks"), exist_ok=True)
        self.manifest["complete"] = False
        self.manifest.pop("checksums", None)
        write_json(os.path.join(self.directory, "manifest.json"), self.manifest)

    def _responses_path(self, site: str) -> str:
        return os.path.join(self.directory, "responses", site_filename(site))

    def load(self, site: str, *, mmap: bool = True, verify: bool = True) -> np.ndarray:
        """`[n_samples, width]` responses of one site (memory-mapped by default), checked against the manifest's
        checksum unless `verify=False`."""
        if not self.complete:
            raise StoreError(f"store {self.directory} is incomplete: rerun the same collect command to finish it")
        if site not in self.sites:
            raise StoreError(f"store {self.directory} has no site {site!r} (it has {list(self.sites)[:5]}…)")
        path = self._responses_path(site)
        damaged = (
            f"{path} (site {site!r}) is damaged or missing; rerun the collect command that made the store "
            "to collect it again"
        )
        if verify and (not os.path.isfile(path) or file_digest(path) != self.manifest.get("checksums", {}).get(site)):
            raise StoreError(damaged)
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise StoreError(f"{damaged} ({err})") from None
        if array.shape != (len(self.sample_ids), self.sites[site]):
            raise StoreError(f"{damaged} (shape {array.shape})")
        return array
