"""The steering commands of `sgm-jax`: `dictionary`, `sae train`, `sae annotate`, `refusal-direction`."""

from __future__ import annotations

import json
import os

from sgm_jax.cli.command import Command, Group
from sgm_jax.cli.common import is_writer, load, load_gated, read_samples
from sgm_jax.cli.options import (
    add_data_options,
    model_options,
    output_options,
    raw_text_option,
    real,
    steered_model_options,
    whole,
)
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


def cmd_refusal_direction(args) -> None:
    """Find the refusal direction of a model (Arditi et al., NeurIPS 2024).

    Take the mean difference of the residual stream entering each decoder layer between harmful and harmless
    instructions, at each of the chat template's tokens after the instruction; score every candidate on the
    last --val instructions of each file (refusal score with the direction ablated and added, KL on harmless
    ones) and choose by the paper's rule. Write the direction and every candidate's scores; with --export, a
    text decoder's weights orthogonalised to it as a plain Hugging Face checkpoint."""
    import numpy as np

    from sgm_jax.steering import refusal

    harmful, harmless = _instructions(args.harmful, "--harmful"), _instructions(args.harmless, "--harmless")
    for flag, items in (("--harmful", harmful), ("--harmless", harmless)):
        if len(items) <= args.val:
            raise OptionError(f"{flag} holds {len(items)} instructions; --val {args.val} leaves none to fit on")
    model, processor = load(args)
    positions = args.positions or refusal.instruction_positions(processor)
    batched = {
        name: refusal.prompts(model, processor, items, batch_size=args.batch_size)
        for name, items in (
            ("harmful", harmful[: -args.val]),
            ("harmless", harmless[: -args.val]),
            ("harmful_val", harmful[-args.val :]),
            ("harmless_val", harmless[-args.val :]),
        )
    }
    candidates = refusal.candidate_directions(model, batched["harmful"], batched["harmless"], positions)
    tokens = refusal.refusal_tokens(processor, args.refusal_words)
    selection = refusal.select_direction(
        model,
        candidates,
        batched["harmful_val"],
        batched["harmless_val"],
        tokens,
        kl_threshold=args.kl_threshold,
        induce_threshold=args.induce_threshold,
        prune_layers=args.prune_layers,
        progress=not args.quiet,
    )
    if not is_writer():
        return
    metadata = {
        "model": args.model,
        "harmful": os.path.abspath(args.harmful),
        "harmless": os.path.abspath(args.harmless),
        "train": [len(harmful) - args.val, len(harmless) - args.val],
        "val": args.val,
        "positions": positions,
        "refusal_tokens": tokens,
    }
    refusal.save_direction(args.out, selection, candidates, metadata)
    chosen = selection.metadata()
    print(
        f"refusal direction: layer {selection.layer}, position {selection.position} of {positions} "
        f"(norm {np.linalg.norm(selection.direction):.3g}); refusal score of harmful instructions "
        f"{chosen['baseline_harmful']:.2f} -> {chosen['ablation_refusal']:.2f} ablated, of harmless ones "
        f"{chosen['baseline_harmless']:.2f} -> {chosen['addition_refusal']:.2f} added; KL {chosen['ablation_kl']:.3f}"
        f" -> {args.out}"
    )
    if args.export:
        from sgm_jax.weights.export import export_hf
        from sgm_jax.weights.orthogonalize import orthogonalized

        export_hf(
            orthogonalized(model, selection.direction), args.export, processor=getattr(processor, "base", processor)
        )
        print(f"orthogonalised checkpoint -> {args.export}")


def _instructions(path: str, flag: str) -> list[str]:
    """One instruction per line of a text file, or the prompts of a dataset file (JSONL, CSV)."""
    if not os.path.exists(path):
        raise OptionError(f"{flag} {path}: no such file")
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    from sgm_jax.data.readers.dispatch import read_dataset

    return [sample.prompt for sample in read_dataset(path)]


def _refusal_direction_options(p) -> None:
    model_options(p)
    p.add_argument("--harmful", required=True, help="harmful instructions: a .txt file (one per line) or a dataset")
    p.add_argument("--harmless", required=True, help="harmless instructions, in the same forms")
    p.add_argument(
        "--val", type=whole(1), default=32, help="the last N instructions of each file score the candidates (32)"
    )
    p.add_argument(
        "--positions",
        type=whole(1),
        help="how many last prompt tokens to take candidates at (default: the chat template's tokens after the "
        "instruction, as the paper)",
    )
    p.add_argument(
        "--refusal-words",
        nargs="+",
        default=["I", "As"],
        help="words whose first token starts a refusal, for the refusal score (default: I As)",
    )
    p.add_argument("--kl-threshold", type=real(0), default=0.1, help="drop candidates above this KL (default 0.1)")
    p.add_argument(
        "--induce-threshold",
        type=real(),
        default=0.0,
        help="drop candidates whose addition leaves the harmless refusal score below this (default 0)",
    )
    p.add_argument(
        "--prune-layers", type=real(0, 1), default=0.2, help="drop candidates from the last share of layers (0.2)"
    )
    p.add_argument("--batch-size", type=whole(1), default=16, help="instructions per forward pass (default: 16)")
    raw_text_option(p)
    p.add_argument("--export", metavar="DIR", help="also write the orthogonalised checkpoint here (text decoders)")
    output_options(p, "output direction file (.safetensors)", "no progress bar")


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
    Command("refusal-direction", cmd_refusal_direction, _refusal_direction_options),
)
