"""Readers turning published safety and reasoning datasets into `Sample`s, with file-and-row errors.

`read_dataset(path, format=None, **options)` picks the reader by name or from the file.
"""

from sgm_jax.data.readers.dispatch import FORMATS, detect_format, read_dataset
from sgm_jax.data.readers.jailbreakv import read_jailbreakv
from sgm_jax.data.readers.mcq import read_mcq
from sgm_jax.data.readers.mmsafetybench import read_mmsafetybench
from sgm_jax.data.readers.native import read_jsonl as read_native
from sgm_jax.data.readers.sgm_sheet import read_sgm_sheet

__all__ = [
    "FORMATS",
    "detect_format",
    "read_dataset",
    "read_jailbreakv",
    "read_mcq",
    "read_mmsafetybench",
    "read_native",
    "read_sgm_sheet",
]
