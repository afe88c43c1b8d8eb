"""Adversarial conditions for evaluating interventions: typographic images, trigger prompts, jailbreak templates."""

from sgm_jax.data.adversarial.jailbreak import apply_jailbreak, read_jailbreak_templates
from sgm_jax.data.adversarial.triggers import TRIGGERS, apply_trigger
from sgm_jax.data.adversarial.typography import typographic_image, wrap
from sgm_jax.data.adversarial.variants import (
    FIGSTEP_PROMPT,
    TYPOGRAPHIC_PROMPTS,
    adversarial_variants,
    image_file_name,
    typographic_variant,
)

__all__ = [
    "FIGSTEP_PROMPT",
    "TRIGGERS",
    "TYPOGRAPHIC_PROMPTS",
    "adversarial_variants",
    "apply_jailbreak",
    "apply_trigger",
    "image_file_name",
    "read_jailbreak_templates",
    "typographic_image",
    "typographic_variant",
    "wrap",
]
