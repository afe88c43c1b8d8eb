"""Concept steering for the model organism: its concept dictionary and a dictionary-initialised SAE.

Every step writes its artifact under one folder and a rerun picks up where it stopped (the token store and
the SAE's checkpoints resume; the dictionary is a quick read of the stimuli, made again).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.data.samples import Sample
from sgm_jax.steering.dictionary import ConceptDictionary, build_dictionary, read_concepts
from sgm_jax.steering.organism_concepts import write_concept_stimuli
from sgm_jax.steering.sae import SAE, SAEConfig
from sgm_jax.steering.sae_training import TrainSettings, train_sae
from sgm_jax.steering.tokens import collect_tokens

# Where the organism's concepts steer best: the output of the last of its four decoder layers, as measured on a
# validation split (experiments/daco_organism.py tunes the layer). Projecting the insult and motif directions out
# of the first three layers' outputs moves the harmful rate little or costs reasoning; out of the last it removes
# the insults and keeps the answers.
ORGANISM_SITE = "model.language_model.layers.3"


@dataclasses.dataclass(frozen=True)
class OrganismSteering:
    site: str = ORGANISM_SITE
    atoms: int = 256
    k: int = 16
    train: TrainSettings = TrainSettings(steps=1500, batch_size=256, learning_rate=1e-3, checkpoint_every=500)
    seed: int = 0


def organism_steering(
    model,
    processor,
    train: Sequence[Sample],
    out_dir: str,
    settings: OrganismSteering = OrganismSteering(),
    *,
    progress: bool = True,
) -> tuple[ConceptDictionary, SAE]:
    """Write `concepts/` (stimuli), `dictionary.safetensors`, `tokens/`, `sae_checkpoints/` and `sae.safetensors`
    under `out_dir`; the SAE reads the train split (prompts with their responses) and the stimuli."""
    paths = write_concept_stimuli(os.path.join(out_dir, "concepts"), seed=settings.seed)
    stimuli = read_jsonl(paths["stimuli.jsonl"])
    dictionary = build_dictionary(model, processor, stimuli, read_concepts(paths["concepts.json"]), site=settings.site)
    dictionary.save(os.path.join(out_dir, "dictionary.safetensors"))
    store = collect_tokens(
        model, processor, list(train) + stimuli, os.path.join(out_dir, "tokens"), site=settings.site, progress=progress
    )
    config = SAEConfig(store.width, settings.atoms, "topk", settings.k)
    sae = train_sae(
        store,
        config,
        settings.train,
        os.path.join(out_dir, "sae_checkpoints"),
        dictionary=dictionary,
        progress=progress,
    )
    sae.save(os.path.join(out_dir, "sae.safetensors"))
    return dictionary, sae
