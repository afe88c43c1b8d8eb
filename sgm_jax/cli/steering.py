"""The concept-steering commands of `sgm-jax`: `dictionary`, `sae train`, `sae annotate`."""

from __future__ import annotations

import json
import os

from sgm_jax.cli.command import Command, Group
from sgm_jax.cli.common import load_gated, read_samples
from sgm_jax.cli.options import add_data_options, real, steered_model_options, whole
from sgm_jax.runtime.choices import POOLINGS, TOKENS
from sgm_jax.runtime.errors import OptionError


def cmd_dictionary(args) -> None:
    """Build a concept dictionary (one atom per concept) at one site.

    Read every stimulus (an image with its caption, or a prompt) at one site and make each concept's atom: the
    normalised difference between the mean activation of its positive and its negative stimuli. The stimuli sets
    come from a concepts file, or are chosen from CLIP-style similarities by DACO's geometric score (--scores,
    --labels)."""
    from sgm_jax.steering.dictionary import build_dictionary, read_concepts, write_concepts
    from sgm_jax.steering.stimuli import read_scores, select_stimuli

    if (args.concepts is None) == (args.scores is None):
        raise OptionError("give the concepts' stimuli either as --concepts FILE or as --scores FILE with --labels")
    if args.concepts is not None:
        concepts = read_concepts(args.concepts)
    else:
        if args.labels is None:
            raise OptionError("--scores needs --labels FILE: JSON {concept: undesirable | desirable | benign}")
        with open(args.labels, encoding="utf-8") as f:
            labels = json.load(f)
        concepts = select_stimuli(read_scores(args.scores), labels, positives=args.positives, negatives=args.negatives)
        write_concepts(os.path.splitext(args.out)[0] + ".concepts.json", concepts)
    stimuli = read_samples(args, "stimuli")
    model, processor = load_gated(args)
    dictionary = build_dictionary(
        model,
        processor,
        stimuli,
        concepts,
        site=args.site,
        pooling=args.pooling,
        tokens=args.tokens,
        batch_size=args.batch_size,
    )
    dictionary.save(args.out)
    counts = {label: dictionary.labels.count(label) for label in ("undesirable", "desirable", "benign")}
    print(
        f"{len(concepts)} concept atoms at {args.site} from {dictionary.metadata['stimuli']} stimuli {counts}; "
        f"saved to {args.out}"
    )


def cmd_sae_train(args) -> None:
    """Train an SAE on one site's per-token activations.

    Collect the site's activation at every token of the data (a resumable token store), then train a TopK or L1
    SAE with optax, its decoder initialised from --dictionary's atoms (then free random atoms), checkpointed
    with orbax: rerun the same command to resume."""
    from sgm_jax.steering.dictionary import load_dictionary
    from sgm_jax.steering.sae import SAEConfig
    from sgm_jax.steering.sae_training import TrainSettings, train_sae
    from sgm_jax.steering.tokens import collect_tokens

    samples = read_samples(args)
    model, processor = load_gated(args)
    dictionary = None if args.dictionary is None else load_dictionary(args.dictionary, model=model)
    site = args.site or (dictionary.site if dictionary is not None else None)
    if site is None:
        raise OptionError("name the site with --site (or give --dictionary, whose site is used)")
    work = args.work or os.path.splitext(args.out)[0] + ".work"
    store = collect_tokens(
        model,
        processor,
        samples,
        os.path.join(work, "tokens"),
        site=site,
        batch_size=args.collect_batch_size,
        progress=not args.quiet,
    )
    config = SAEConfig(store.width, args.atoms, args.kind, args.k, args.l1)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
    )
    sae = train_sae(
        store, config, settings, os.path.join(work, "checkpoints"), dictionary=dictionary, progress=not args.quiet
    )
    sae.save(args.out)
    meta = sae.metadata
    print(
        f"SAE of {site}: {config.atoms} atoms ({meta['init']} init), {meta['steps']} steps on "
        f"{store.tokens} tokens; fraction of variance explained {meta['fraction_of_variance_explained']:.4f}, "
        f"{meta['dead_atoms']} dead atoms; saved to {args.out}"
    )


def cmd_sae_annotate(args) -> None:
    """Label an SAE's atoms undesirable / desirable by their distance to the dictionary's centroids.

    An atom whose cosine distance to the undesirable (desirable) concepts' centroid is at most --eta, and
    smaller than to the other centroid, takes that label."""
    from sgm_jax.steering.annotate import annotate
    from sgm_jax.steering.dictionary import load_dictionary
    from sgm_jax.steering.sae import load_sae

    sae = load_sae(args.sae)
    annotation = annotate(sae, load_dictionary(args.dictionary), args.eta)
    annotation.save(args.out)
    d = annotation.describe()
    print(
        f"eta {args.eta}: {d['undesirable_atoms']} undesirable and {d['desirable_atoms']} desirable atoms of "
        f"{sae.config.atoms}; saved to {args.out}"
    )


def _dictionary_options(p) -> None:
    steered_model_options(p)
    add_data_options(p, "the stimuli, each prompt its caption", flag="--stimuli")
    p.add_argument("--concepts", help='a concepts file: {"concepts": [{name, label, group, positives, negatives}]}')
    p.add_argument("--scores", help="a CSV of concept,stimulus,image_similarity,text_similarity (in (0, 1])")
    p.add_argument("--labels", help="with --scores: JSON {concept: undesirable | desirable | benign}")
    p.add_argument("--positives", type=whole(1), default=27, help="with --scores: best stimuli per concept (27)")
    p.add_argument("--negatives", type=whole(1), default=27, help="with --scores: worst stimuli per concept (27)")
    p.add_argument("--site", required=True, help="the site read, e.g. model.language_model.layers.15")
    p.add_argument("--pooling", choices=POOLINGS, default="mean", help="pooling over tokens (default: mean)")
    p.add_argument("--tokens", choices=TOKENS, default="all", help="which tokens are pooled (default: all)")
    p.add_argument("--batch-size", type=whole(1), default=16, help="stimuli per batch (default: 16)")
    p.add_argument("--out", required=True, help="output dictionary file (.safetensors)")


def _sae_train_options(p) -> None:
    steered_model_options(p)
    add_data_options(
        p, "samples whose tokens are read (prompts with responses, stimuli); repeat for several", repeat=True
    )
    p.add_argument("--site", help="the site (default: the dictionary's)")
    p.add_argument("--dictionary", help="initialise the first atoms from this dictionary (DACO); default random")
    p.add_argument("--kind", choices=["topk", "l1"], default="topk", help="sparsity (default: topk)")
    p.add_argument("--atoms", type=whole(1), default=4096, help="number of atoms (default: 4096)")
    p.add_argument("--k", type=whole(1), default=64, help="TopK's active atoms per token (default: 64)")
    p.add_argument("--l1", type=real(0), default=1e-3, help="L1's penalty weight (default: 1e-3)")
    p.add_argument("--steps", type=whole(1), default=2000, help="optimiser steps (default: 2000)")
    p.add_argument("--batch-size", type=whole(1), default=512, help="tokens per step (default: 512)")
    p.add_argument("--learning-rate", type=real(0), default=1e-3, help="Adam's learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order (default: 0)")
    p.add_argument("--checkpoint-every", type=whole(1), default=200, help="steps between checkpoints (200)")
    p.add_argument("--log-every", type=whole(1), default=50, help="steps between logged losses (default: 50)")
    p.add_argument("--collect-batch-size", type=whole(1), default=16, help="samples per capture batch (16)")
    p.add_argument("--work", help="token store and checkpoints folder (default: OUT without .safetensors + .work)")
    p.add_argument("--out", required=True, help="output SAE file (.safetensors)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _sae_annotate_options(p) -> None:
    p.add_argument("--sae", required=True, help="an SAE file (sgm-jax sae train)")
    p.add_argument("--dictionary", required=True, help="the concept dictionary with the concepts' labels")
    p.add_argument("--eta", type=real(0, 2), default=0.6, help="the cosine-distance threshold (default: 0.6)")
    p.add_argument("--out", required=True, help="output annotation file (.safetensors)")


COMMANDS = (
    Command("dictionary", cmd_dictionary, _dictionary_options),
    Group(
        "sae",
        "Train and annotate sparse autoencoders (DACO).",
        (
            Command("train", cmd_sae_train, _sae_train_options),
            Command("annotate", cmd_sae_annotate, _sae_annotate_options),
        ),
    ),
)
