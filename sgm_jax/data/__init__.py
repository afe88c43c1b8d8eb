"""Datasets in the native JSONL format, and their encoding into model inputs through the checkpoint's processor."""

from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.data.samples import DatasetError, Sample, dataset_hash, write_jsonl

__all__ = ["DatasetError", "Sample", "dataset_hash", "read_jsonl", "write_jsonl"]
