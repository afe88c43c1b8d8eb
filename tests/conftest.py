"""Test-wide environment: 8 host CPU devices for the sharding tests, and no network for Hugging Face."""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402  (after XLA_FLAGS is set)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled programs after it: with a whole suite's worth kept in one process, an
    XLA compile crashed (segfault) about 70% through; released per module, the process stays small and the
    suite passes."""
    yield
    jax.clear_caches()
