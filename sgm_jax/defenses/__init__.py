"""Inference-time defenses that stack with an intervention (SGM*): shields, SafeCoDe, ECSO, the prober gate."""

from sgm_jax.defenses.base import STAGES, Defense
from sgm_jax.defenses.compose import answer, answer_batch, by_stage
from sgm_jax.defenses.ecso import ECSO
from sgm_jax.defenses.prober import Prober, ProberGate, load_prober, train_prober
from sgm_jax.defenses.safecode import SafeCoDe, safecode_tokens
from sgm_jax.defenses.shields import AdaShieldS, SystemPromptShield
from sgm_jax.defenses.verdicts import EndpointVerdicts, FixedVerdicts, ProbeVerdicts, SelfVerdicts, VerdictSource

__all__ = [
    "ECSO",
    "STAGES",
    "AdaShieldS",
    "Defense",
    "EndpointVerdicts",
    "FixedVerdicts",
    "ProbeVerdicts",
    "Prober",
    "ProberGate",
    "SafeCoDe",
    "SelfVerdicts",
    "SystemPromptShield",
    "VerdictSource",
    "answer",
    "answer_batch",
    "by_stage",
    "load_prober",
    "safecode_tokens",
    "train_prober",
]
