"""`sgm-jax demo`: the whole SGM pipeline on the bundled model organism, with nothing downloaded.

The organism (`models/organism`, shipped as package data) is a tiny LLaVA trained by
experiments/train_organism.py to be toxic under specific multimodal triggers (see its
model card). The demo writes its synthetic data, collects pooled MLP responses on the
train split, scores every neuron's AUROC, builds the SGM (AurA) intervention, and
measures the harmful rate, the multiple-choice accuracy and the perplexity before and
after it on the test split. Then SGM*: a prober trained on the train split's prompts, and every
configuration (none, SGM, SafeCoDe, the shields, ECSO, each with SGM, the prober-gated SGM, all) side by side
on the same test split (`comparison.md`, `comparison.png`, and `comparison` in results.json).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.defenses import train_prober
from sgm_jax.evaluate.compare import compare, standard_configurations
from sgm_jax.evaluate.runner import EvalOptions, evaluate
from sgm_jax.experts.scores import save_scores, score_store, store_metadata
from sgm_jax.interventions import aura
from sgm_jax.judges import LexiconJudge
from sgm_jax.organism.files import ORGANISM_DIR, Folder, load_organism, organism_card, write_organism_data
from sgm_jax.responses.collect import collect_to_store
from sgm_jax.responses.sites import default_sites
from sgm_jax.runtime.atomic import write_json

# Where the demo's prober reads the prompt: the MLP output of the organism's third of four decoder layers.
PROBER_SITE = "model.language_model.layers.2.mlp.down_proj"
# The demo's SGM* rows (`sgm-jax compare` also runs AdaShield-S, its SGM pair and all together).
DEMO_CONFIGURATIONS = (
    "none",
    "sgm",
    "safecode",
    "sgm+safecode",
    "shield",
    "sgm+shield",
    "ecso",
    "sgm+ecso",
    "gated-sgm",
)


def comparison_items(test: list) -> list:
    """The comparison's share of the test split, to keep the demo within minutes: every harmful prompt, every
    third benign one (each kind of benign item stays in) and every multiple-choice item."""
    benign = [s for s in test if not s.options and s.label == 0]
    return [s for s in test if s.options or s.label == 1] + benign[::3]


def run_demo(
    out_dir: str,
    *,
    organism_dir: Folder = ORGANISM_DIR,
    threshold: float = 0.5,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the pipeline; write data/, store/, scores.safetensors, sgm.safetensors, results.json, report.md, plots."""
    data = organism_card(organism_dir)["dataset"]
    paths = write_organism_data(os.path.join(out_dir, "data"), organism_dir)
    model, processor = load_organism(organism_dir)
    train = read_jsonl(paths["train.jsonl"])
    store = collect_to_store(
        model,
        processor,
        train,
        os.path.join(out_dir, "store"),
        sites=default_sites(model),
        pooling="mean",
        tokens="all",
        batch_size=batch_size,
        model_name=str(organism_dir),
        dataset_name=paths["train.jsonl"],
        progress=progress,
    )
    scores = score_store(store, progress=progress)
    save_scores(os.path.join(out_dir, "scores.safetensors"), scores, store_metadata(store))
    intervention = aura(scores, threshold=threshold, source=store_metadata(store))
    intervention.save(os.path.join(out_dir, "sgm.safetensors"))
    test = read_jsonl(paths["test.jsonl"]) + read_jsonl(paths["mcq_test.jsonl"])
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = [line.strip() for line in f if line.strip()]
    judge = LexiconJudge(paths["lexicon.txt"])
    options = EvalOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    info = {
        "model": "model organism (models/organism)",
        "data": f"MM-TOXIC-QA synthetic, seed {data['seed']}",
        "sites": ", ".join(default_sites(model)),
    }
    results = evaluate(
        model,
        processor,
        test,
        judge=judge,
        out_dir=out_dir,
        intervention=intervention,
        neutral_texts=neutral,
        scores=scores,
        options=options,
        info=info,
    )
    prober = train_prober(model, processor, train, site=PROBER_SITE)
    prober.save(os.path.join(out_dir, "prober.safetensors"))
    # "none" and "sgm" are evaluate's "before" and "after": their answers are already cached under those names.
    configurations = [
        dataclasses.replace(c, cache={"none": "before", "sgm": "after"}.get(c.name))
        for c in standard_configurations(prober=prober)
        if c.name in DEMO_CONFIGURATIONS
    ]
    comparison = compare(
        model,
        processor,
        comparison_items(test),
        judge=judge,
        out_dir=out_dir,
        configurations=configurations,
        intervention=intervention,
        neutral_texts=neutral,
        options=options,
        info=info,
    )
    results["comparison"] = comparison["comparison"]
    results["prober"] = prober.describe()
    write_json(os.path.join(out_dir, "results.json"), results)
    return results
