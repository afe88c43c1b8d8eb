"""sgm_jax: neuron-level safety interventions (SGM / AurA) for multimodal LLMs in JAX/Flax NNX.

The public names, and submodules read as attributes (`sgm_jax.scores`), load on first use (PEP 562): `import
sgm_jax` and `sgm-jax --help` do not pay for jax.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgm_jax.auroc import auroc
    from sgm_jax.capture import collect_responses
    from sgm_jax.defenses import answer
    from sgm_jax.export import export_hf
    from sgm_jax.generate import generate
    from sgm_jax.interventions import Intervention, aura, compose, damp, det0, intervene, load_intervention, sweep
    from sgm_jax.loading import build_model, load_model
    from sgm_jax.scores import load_scores
    from sgm_jax.sites import list_sites

__all__ = [
    "Intervention",
    "answer",
    "auroc",
    "aura",
    "build_model",
    "collect_responses",
    "compose",
    "damp",
    "det0",
    "export_hf",
    "generate",
    "intervene",
    "list_sites",
    "load_intervention",
    "load_model",
    "load_scores",
    "sweep",
]

_SOURCES = {
    "Intervention": "sgm_jax.interventions",
    "answer": "sgm_jax.defenses",
    "auroc": "sgm_jax.auroc",
    "aura": "sgm_jax.interventions",
    "build_model": "sgm_jax.loading",
    "collect_responses": "sgm_jax.capture",
    "compose": "sgm_jax.interventions",
    "damp": "sgm_jax.interventions",
    "det0": "sgm_jax.interventions",
    "export_hf": "sgm_jax.export",
    "generate": "sgm_jax.generate",
    "intervene": "sgm_jax.interventions",
    "list_sites": "sgm_jax.sites",
    "load_intervention": "sgm_jax.interventions",
    "load_model": "sgm_jax.loading",
    "load_scores": "sgm_jax.scores",
    "sweep": "sgm_jax.interventions",
}

# `sgm_jax.auroc` and `sgm_jax.generate` are functions named as their modules.
_SHADOWED = frozenset(name for name, source in _SOURCES.items() if source == f"{__name__}.{name}")


def __getattr__(name: str):
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """Loading a submodule binds it on its package; the two functions named as their modules keep their names, as
    the eager `from sgm_jax.generate import generate` of an `__init__` did."""

    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
