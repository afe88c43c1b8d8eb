"""The default sweep on the model organism (`sgm-jax sweep --demo`): its data, responses and expert scores at
the decoder's MLP sites, the vision tower's and the projector's, and a grid of more than 200 settings over
AurA, Damp and Det0, site groups, thresholds and strengths, measured on a share of the test split."""

from __future__ import annotations

import os
from typing import Any

from sgm_jax.data.readers.native import read_jsonl
from sgm_jax.experts.scores import load_scores, save_scores, score_store, store_metadata
from sgm_jax.judges import LexiconJudge
from sgm_jax.organism.files import ORGANISM_DIR, Folder, load_organism, write_organism_data
from sgm_jax.responses.collect import collect_to_store
from sgm_jax.responses.sites import default_sites
from sgm_jax.sweeps.evaluation import SweepOptions
from sgm_jax.sweeps.run import run_sweep
from sgm_jax.sweeps.settings import grid, site_groups

# What the organism's scores cover: SGM's sites, the MLP neurons (down_proj's input), the vision tower's MLP and
# the projector's first layer.
EXTRA_SITES = (
    "model.language_model.layers.*.mlp.down_proj:in",
    "model.vision_tower.encoder.layers.*.mlp.fc1",
    "model.multi_modal_projector.linear_1",
)
DECODER_GROUPS = ("sgm", "all", "gate", "up", "down", "down:in", "layers:0-1", "layers:2-3")
IMAGE_GROUPS = ("vision", "projector")


def default_grid():
    """214 settings: AurA on every decoder group (6 thresholds x 4 strengths), AurA on the vision tower and the
    projector, Damp and Det0 on SGM's sites and on all of them."""
    return (
        grid(["aura"], sites=DECODER_GROUPS, thresholds=(0.3, 0.5, 0.55, 0.6, 0.7, 0.8), strengths=(0.5, 1, 1.5, 2))
        + grid(["aura"], sites=IMAGE_GROUPS, thresholds=(0.5, 0.6), strengths=(1, 2))
        + grid(["damp"], sites=("sgm", "all"), ks=(100, 400, 1600), alphas=(0.5,))
        + grid(["det0"], sites=("sgm", "all"), ks=(30, 100, 300, 1000))
    )


def evaluation_share(test: list, mcq: list, neutral: list[str]) -> tuple[list, list[str]]:
    """A third of the harmful test prompts, every ninth benign one, 64 multiple-choice items, 64 neutral texts:
    enough to rank settings, small enough for hundreds of them in minutes."""
    harmful = [s for s in test if s.label == 1][::3]
    benign = [s for s in test if s.label == 0][::9]
    return harmful + benign + mcq[:64], neutral[:64]


def organism_sweep(
    out_dir: str,
    *,
    organism_dir: Folder = ORGANISM_DIR,
    options: SweepOptions | None = None,
    settings=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write data/, store/ and scores.safetensors (each resumed or reused), then run the sweep into `out_dir`."""
    paths = write_organism_data(os.path.join(out_dir, "data"), organism_dir)
    model, processor = load_organism(organism_dir)
    scores_path = os.path.join(out_dir, "scores.safetensors")
    if os.path.exists(scores_path):
        scores, source = load_scores(scores_path)
    else:
        store = collect_to_store(
            model,
            processor,
            read_jsonl(paths["train.jsonl"]),
            os.path.join(out_dir, "store"),
            sites=default_sites(model) + list(EXTRA_SITES),
            batch_size=32,
            model_name="model organism",
            dataset_name=paths["train.jsonl"],
            progress=progress,
        )
        scores, source = score_store(store, progress=progress), store_metadata(store)
        save_scores(scores_path, scores, source)
    with open(paths["neutral.txt"], encoding="utf-8") as f:
        neutral = [line.strip() for line in f if line.strip()]
    samples, neutral = evaluation_share(read_jsonl(paths["test.jsonl"]), read_jsonl(paths["mcq_test.jsonl"]), neutral)
    settings = default_grid() if settings is None else settings
    groups = site_groups(model, scores, sorted({s.sites for s in settings}))
    return run_sweep(
        model,
        processor,
        samples,
        neutral,
        LexiconJudge(paths["lexicon.txt"]),
        scores,
        settings,
        groups,
        out_dir,
        options=options or SweepOptions(max_new_tokens=20, batch_size=32, chunk_size=16),
        source=source,
        progress=progress,
        info={"title": "model organism", "model": "model organism (models/organism)"},
    )
