"""JAX's persistent compilation cache, on by default: a second run with the same shapes compiles nothing.

A 7B program takes minutes to compile on a TPU, and every command compiles several; without a cache each rerun
pays them again. `enable` turns on JAX's own cache under the user's cache folder (`$XDG_CACHE_HOME/sgm_jax/xla`,
else `~/.cache/sgm_jax/xla`), storing every program whatever its size or compile time (JAX's defaults skip
programs that compile in under a second, which are most of a small model's). `SGM_JAX_COMPILE_CACHE` (or
`sgm-jax --compile-cache`) moves it, and `off` turns it off. The commands and `sgm_jax.load_model` call it; a
folder JAX was already given (`JAX_COMPILATION_CACHE_DIR`, `jax.config`) is kept.
"""

from __future__ import annotations

import os

ENV = "SGM_JAX_COMPILE_CACHE"
OFF = "off"


def user_cache(name: str) -> str:
    """`name`'s folder in sgm_jax's part of the user's cache folder (`$XDG_CACHE_HOME`, else `~/.cache`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sgm_jax", name)


def default_directory() -> str:
    return user_cache("xla")


def enable(directory: str | None = None) -> str | None:
    """Turn on the persistent compilation cache at `directory` (else `$SGM_JAX_COMPILE_CACHE`, else the default);
    `off` turns it off. Returns the folder in use, or None when off."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    chosen = directory or os.environ.get(ENV)
    if chosen is None and jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir  # the user's own JAX setting wins over our default
    enabled = chosen != OFF
    chosen = os.path.abspath(os.path.expanduser(chosen or default_directory())) if enabled else None
    if (enabled, chosen) != (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir):
        compilation_cache.reset_cache()  # JAX settles on a cache at its first compile: let it look again
        jax.config.update("jax_enable_compilation_cache", enabled)
        jax.config.update("jax_compilation_cache_dir", chosen)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # -1: every size (0 lets JAX choose)
    return chosen
