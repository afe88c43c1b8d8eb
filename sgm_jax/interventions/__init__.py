"""Interventions (per-neuron gates by site) and the methods that fill them from expert scores."""

from sgm_jax.interventions.gates import intervene
from sgm_jax.interventions.intervention import Intervention, compose, load_intervention
from sgm_jax.interventions.methods import aura, damp, det0, transport
from sgm_jax.interventions.sweep import GateStack, sweep, swept_sites, transported_sites

__all__ = [
    "GateStack",
    "Intervention",
    "aura",
    "compose",
    "damp",
    "det0",
    "intervene",
    "load_intervention",
    "sweep",
    "swept_sites",
    "transport",
    "transported_sites",
]
