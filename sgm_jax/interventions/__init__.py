"""Interventions (per-neuron gates by site) and the methods that fill them from expert scores."""

from sgm_jax.interventions.gates import intervene, stacked_gates, sweep
from sgm_jax.interventions.intervention import Intervention, compose, load_intervention
from sgm_jax.interventions.methods import aura, damp, det0

__all__ = [
    "Intervention",
    "aura",
    "compose",
    "damp",
    "det0",
    "intervene",
    "load_intervention",
    "stacked_gates",
    "sweep",
]
