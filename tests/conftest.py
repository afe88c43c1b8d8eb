"""Test-wide environment: 8 host CPU devices for the sharding tests, quick compiles, no network for Hugging Face,
and how the two workers share the suite."""

import os

# The suite's models are tiny, so its time goes to compiling, not running: LLVM's optimisation passes halve the
# compile time and buy nothing here, and XLA:CPU's older loop emitters compile fusions in about 0.6x the time of its
# fusion emitters (measured on the conformance table's Mllama cells). XLA's own graph passes still run; no
# fast-math, so results stay IEEE-exact.
QUICK_COMPILES = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count=8 {QUICK_COMPILES}"
)
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite compiles afresh, as CI does, and writes nothing under the user's cache folder; the cache's own test
# turns it on in a folder of its own.
os.environ["SGM_JAX_COMPILE_CACHE"] = "off"
os.environ["SGM_JAX_ANSWER_CACHE"] = "off"  # no test reuses another's answers, nor writes to the user's cache
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402  (after XLA_FLAGS is set)
import pytest  # noqa: E402


def optimised_environment() -> dict[str, str]:
    """The environment for a process that runs long enough for optimised code to pay (the demo, the notebooks:
    about 1.5x faster with the compiler's default flags)."""
    return {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace(QUICK_COMPILES, "")}


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled programs after it: with a whole suite's worth kept in one process, an
    XLA compile crashed (segfault) about 70% through; released per module, the process stays small and the
    suite passes."""
    yield
    jax.clear_caches()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Two workers (`--dist loadgroup`) share the suite a test file at a time, so a file's module fixtures are built
    once; a file that sets `SPREAD_BY` to the name of its family parameter is shared a family at a time instead, so
    the conformance table's rows run on both workers. The slow end-to-end tests go first (and pyproject.toml keeps
    xdist from reordering groups by size), so neither worker ends the run with minutes of the demo left alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        spread = getattr(item.module, "SPREAD_BY", None)
        callspec = getattr(item, "callspec", None)
        group = item.path.name
        if spread and callspec is not None and spread in callspec.params:
            group += f"[{callspec.params[spread]}]"
        item.add_marker(pytest.mark.xdist_group(group))
