"""The pipeline's commands: `collect` responses, `score` experts, list `sites`, build an `intervention`, `generate`
under it."""

from __future__ import annotations

import os

from sgm_jax.cli.command import Command
from sgm_jax.cli.common import is_writer, load, parse_mesh, read_interventions, read_samples
from sgm_jax.cli.options import (
    add_data_options,
    distributed_options,
    image_size_option,
    intervention_options,
    mesh_option,
    model_options,
    output_options,
    raw_text_option,
    real,
    sampling_options,
    whole,
)
from sgm_jax.runtime.choices import POOLINGS, TOKENS
from sgm_jax.runtime.errors import OptionError


def cmd_collect(args) -> None:
    """Record pooled neuron responses on a labelled dataset.

    Run the model over a labelled dataset and store each site's pooled activation per sample. An interrupted run
    resumes where it stopped when the same command is run again."""
    from sgm_jax.responses.collect import collect_to_store, warm_capture
    from sgm_jax.responses.sites import default_sites

    samples = read_samples(args)
    capture = {"pooling": args.pooling, "tokens": args.tokens, "batch_size": args.batch_size}
    model, processor = load(
        args,
        warm=lambda shapes, processor: warm_capture(
            shapes, processor, samples, sites=args.sites or default_sites(shapes), **capture
        ),
    )
    sites = args.sites or default_sites(model)
    store = collect_to_store(
        model,
        processor,
        samples,
        args.out,
        sites=sites,
        **capture,
        model_name=args.model,
        dataset_name=os.path.abspath(args.data) + (f"#{args.split}" if args.split else ""),
        progress=not args.quiet,
    )
    if is_writer():
        print(
            f"{len(store.sample_ids)} samples x {len(store.sites)} sites "
            f"({sum(store.sites.values())} neurons) in {args.out}"
        )


def cmd_score(args) -> None:
    """Per-neuron AUROC of a response store.

    Compute each neuron's AUROC as a classifier of the label (toxic 1 vs benign 0), exact with ties counted
    half, and save {site: AUROC} as safetensors with the store's metadata."""
    from sgm_jax.experts.scores import save_scores, score_store, store_metadata
    from sgm_jax.responses.store import ResponseStore

    store = ResponseStore(args.store)
    scores = score_store(store, mesh=parse_mesh(args.mesh), progress=not args.quiet)
    if not is_writer():
        return
    save_scores(args.out, scores, store_metadata(store))
    n = sum(len(s) for s in scores.values())
    above = sum(int((s > 0.5).sum()) for s in scores.values())
    print(f"AUROC of {n} neurons at {len(scores)} sites -> {args.out} ({above} above 0.5)")


def cmd_sites(args) -> None:
    """List a model's neuron sites and their widths.

    Print every site name (HF module paths, ':in' for inputs) with its number of neurons, or only those matching
    PATTERN."""
    from sgm_jax.responses.sites import list_sites, resolve

    model, _ = load(args, text=False)
    names = [r.name for r in resolve(model, args.pattern)] if args.pattern else list(list_sites(model))
    widths = list_sites(model)
    for name in names:
        print(f"{name}\t{widths[name]}")


def cmd_generate(args) -> None:
    """Generate a reply to one prompt, optionally with interventions.

    Render the prompt (and image) through the checkpoint's chat template, generate with the KV-cached jitted
    decoder and print the reply. Interventions (files written by Intervention.save) are composed: their alphas
    multiply."""
    import sgm_jax
    from sgm_jax.data import Sample
    from sgm_jax.data.encode import encode
    from sgm_jax.data.images import load_rgb
    from sgm_jax.decoding.lengths import check_lengths

    if args.image:
        if not os.path.exists(args.image):
            raise OptionError(f"--image {args.image}: no such file")
        load_rgb(args.image)
    intervention = read_interventions(args)
    model, processor = load(args)
    if intervention is not None:
        model = sgm_jax.intervene(model, intervention)
    sample = Sample(id="prompt", prompt=args.prompt, image=args.image, origin="--prompt")
    encoded = encode(sample, processor)
    ids = encoded.pop("input_ids")[None]
    check_lengths(model, [sample], [ids.shape[1]], new_tokens=args.max_new_tokens)
    tokens = sgm_jax.generate(
        model,
        ids,
        **encoded,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        processor=processor,
    )
    tokenizer = getattr(processor, "tokenizer", processor)
    print(tokenizer.decode(tokens[0], skip_special_tokens=True).strip())


def cmd_intervention(args) -> None:
    """Build an intervention file from expert scores.

    Turn a scores file (from `sgm-jax score`) into per-neuron gates: aura (SGM's expertise-weighted damping,
    alpha = 1 - 2 (AUROC - 0.5) above the threshold), damp (a fixed alpha on the global top-k neurons) or det0
    (alpha 0 on the top-k)."""
    import sgm_jax

    if args.method != "aura" and args.k is None:
        raise OptionError(f"--method {args.method} needs --k (how many top neurons)")
    scores, metadata = sgm_jax.load_scores(args.scores)
    if args.method == "aura":
        iv = sgm_jax.aura(scores, threshold=args.threshold, source=metadata)
    elif args.method == "damp":
        iv = sgm_jax.damp(scores, args.k, args.alpha, source=metadata)
    else:
        iv = sgm_jax.det0(scores, args.k, source=metadata)
    if args.strength != 1.0:
        iv = iv.with_strength(args.strength)
    iv.save(args.out)
    print(f"{args.method}: {change_summary(iv, scores)} -> {args.out}")
    if metadata.get("pooling"):  # whose protocol the experts follow is decided at collect: say which
        print(
            f"the experts were scored on {metadata['pooling']}-pooled responses; SGM pools with the mean, AurA's "
            "paper and apple/ml-aura with the max (`collect --pooling`)"
        )


def cmd_transport(args) -> None:
    """Build a Linear-AcT or Mean-AcT intervention from a response store.

    Fit each neuron's transport from the responses of the samples labelled 1 (the behaviour to remove) to those
    labelled 0: linear-act, the least-squares line through their sorted responses, applied inside the source's
    range (Rodriguez et al., ICLR 2025; their paper and apple/ml-act pool with mean); mean-act, the shift of the
    means. --strength is lambda: lambda T(a) + (1 - lambda) a."""
    import sgm_jax
    from sgm_jax.experts.scores import store_metadata
    from sgm_jax.experts.transport import transport_store
    from sgm_jax.responses.store import ResponseStore

    store = ResponseStore(args.store)
    maps = transport_store(store, args.method, mesh=parse_mesh(args.mesh), progress=not args.quiet)
    if not is_writer():
        return
    iv = sgm_jax.transport(maps, args.method, strength=args.strength, source=store_metadata(store))
    iv.save(args.out)
    print(f"{args.method}: {change_summary(iv, maps)} -> {args.out}")


def change_summary(iv, scored) -> str:
    """How much of the scored network an intervention changes: neurons (and their share), sites, and the mean
    alpha of the changed neurons (AurA at a low threshold damps half of a network a little: say so), or for a
    transport its mean scale and shift."""
    import numpy as np

    total = sum(s.shape[-1] for s in scored.values())
    masks = iv.changed()
    count = sum(int(m.sum()) for m in masks.values())
    touched = sum(bool(m.any()) for m in masks.values())
    mean = ""
    if count and iv.transports:
        scales = np.concatenate([t[0][masks[s]] for s, t in iv.transports.items()])
        shifts = np.concatenate([t[1][masks[s]] for s, t in iv.transports.items()])
        mean = f"; mean scale of those {scales.mean():.3f}, mean shift {shifts.mean():+.3g}"
    elif count:
        mean = f"; mean alpha of those {np.concatenate([a[masks[s]] for s, a in iv.alphas.items()]).mean():.3f}"
    return (
        f"{count:,} of {total:,} scored neurons changed ({count / max(total, 1):.1%}), at "
        f"{touched} of {len(scored)} sites{mean}"
    )


def _collect_options(p) -> None:
    model_options(p)
    add_data_options(p, "the labelled samples")
    p.add_argument(
        "--sites",
        nargs="+",
        metavar="PATTERN",
        help="site names or glob patterns (HF module paths, ':in' for a module's input); default: "
        "the gate/up/down MLP projections of every decoder layer, as SGM uses",
    )
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="mean",
        help="how a site's activations are pooled over positions (default: mean, as SGM's release; AurA's paper "
        "and apple/ml-aura pool with max)",
    )
    p.add_argument(
        "--tokens",
        choices=TOKENS,
        default="all",
        help="which positions decoder sites pool over: all real tokens, only text or only image "
        "tokens (default: all); vision-tower and projector sites always pool over their image",
    )
    p.add_argument("--batch-size", type=whole(1), default=8, help="samples per forward pass (default: 8)")
    image_size_option(p)
    raw_text_option(p)
    output_options(p, "store directory (created, or resumed if it exists)", "no progress bar")
    distributed_options(p)


def _score_options(p) -> None:
    p.add_argument("--store", required=True, help="a complete response store written by `sgm-jax collect`")
    mesh_option(p, "spread the neurons over a device mesh of these sizes")
    output_options(p, "output .safetensors file", "no progress bar")
    distributed_options(p)


def _sites_options(p) -> None:
    model_options(p)
    p.add_argument("pattern", nargs="*", help="names or glob patterns to expand (default: all sites)")


def _generate_options(p) -> None:
    model_options(p)
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--image", help="an image file shown with the prompt (default: text only)")
    image_size_option(p)
    raw_text_option(p)
    intervention_options(
        p,
        "an intervention file to apply; repeat to compose several (default: none)",
        "scale of each intervention: alpha -> 1 - s (1 - alpha), 0 is off, 1 as saved (default: 1)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=whole(1),
        default=128,
        help="most tokens to generate; stops earlier at the tokenizer's EOS (default: 128)",
    )
    sampling_options(p, "random seed for sampling (default: 0)")
    p.add_argument(
        "--top-k", type=whole(0), default=0, help="sample only among the k most likely tokens; 0 is off (default: 0)"
    )
    p.add_argument(
        "--top-p",
        type=real(0, 1, open_low=True),
        default=1.0,
        help="sample only within the smallest set of tokens holding this probability; 1 is off (default: 1)",
    )


def _intervention_options(p) -> None:
    p.add_argument("--scores", required=True, help="a scores file written by `sgm-jax score`")
    p.add_argument(
        "--method", choices=["aura", "damp", "det0"], default="aura", help="how to set the gates (default: aura)"
    )
    p.add_argument(
        "--threshold",
        type=real(0, 1),
        default=0.5,
        help="aura: neurons with AUROC above this are damped (default 0.5 as AurA; the SGM release "
        "used 0.3, which also amplifies AUROC in (0.3, 0.5))",
    )
    p.add_argument("--k", type=whole(1), help="damp/det0: how many top neurons by AUROC, across all sites")
    p.add_argument(
        "--alpha", type=real(0), default=0.5, help="damp: the gate value of the top-k neurons (default: 0.5)"
    )
    p.add_argument(
        "--strength",
        type=real(),
        default=1.0,
        help="scale the effect: alpha -> 1 - s (1 - alpha), 0 is off, 1 as learned (default: 1)",
    )
    p.add_argument("--out", required=True, help="output intervention file (.safetensors)")


def _transport_options(p) -> None:
    p.add_argument("--store", required=True, help="a complete, labelled response store written by `sgm-jax collect`")
    p.add_argument(
        "--method",
        choices=["linear-act", "mean-act"],
        default="linear-act",
        help="linear-act: an affine map per neuron inside the source's range; mean-act: a shift of the means "
        "(default: linear-act)",
    )
    p.add_argument(
        "--strength",
        type=real(0, 1),
        default=1.0,
        help="lambda: lambda T(a) + (1 - lambda) a, 0 is off, 1 as fitted (default: 1)",
    )
    mesh_option(p, "spread the neurons over a device mesh of these sizes")
    output_options(p, "output intervention file (.safetensors)", "no progress bar")
    distributed_options(p)


COMMANDS = (
    Command("collect", cmd_collect, _collect_options),
    Command("score", cmd_score, _score_options),
    Command("sites", cmd_sites, _sites_options),
    Command("generate", cmd_generate, _generate_options),
    Command("intervention", cmd_intervention, _intervention_options),
    Command("transport", cmd_transport, _transport_options),
)
