"""sgm_jax: neuron-level safety interventions (SGM / AurA) for multimodal LLMs in JAX/Flax NNX.

The package is the method's stages, each importing only the stages before it (tests/test_packaging.py checks):
runtime, data, models, decoding, responses, experts, interventions, weights, steering, judges, defenses, evaluate,
organism, sweeps, cli. The public names below, and the stage packages read as attributes (`sgm_jax.experts`), load
on first use (PEP 562): `import sgm_jax` and `sgm-jax --help` do not pay for jax.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sgm_jax.decoding.generate import generate
    from sgm_jax.defenses import answer
    from sgm_jax.experts.auroc import auroc
    from sgm_jax.experts.scores import load_scores
    from sgm_jax.interventions import (
        Intervention,
        aura,
        compose,
        damp,
        det0,
        intervene,
        load_intervention,
        sweep,
        transport,
    )
    from sgm_jax.responses.capture import collect_responses
    from sgm_jax.responses.sites import list_sites
    from sgm_jax.weights.export import export_hf
    from sgm_jax.weights.loading import build_model, load_model

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
    "transport",
]

_SOURCES = {
    "Intervention": "sgm_jax.interventions",
    "answer": "sgm_jax.defenses",
    "auroc": "sgm_jax.experts.auroc",
    "aura": "sgm_jax.interventions",
    "build_model": "sgm_jax.weights.loading",
    "collect_responses": "sgm_jax.responses.capture",
    "compose": "sgm_jax.interventions",
    "damp": "sgm_jax.interventions",
    "det0": "sgm_jax.interventions",
    "export_hf": "sgm_jax.weights.export",
    "generate": "sgm_jax.decoding.generate",
    "intervene": "sgm_jax.interventions",
    "list_sites": "sgm_jax.responses.sites",
    "load_intervention": "sgm_jax.interventions",
    "load_model": "sgm_jax.weights.loading",
    "load_scores": "sgm_jax.experts.scores",
    "sweep": "sgm_jax.interventions",
    "transport": "sgm_jax.interventions",
}


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
