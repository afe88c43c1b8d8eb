"""`sgm-jax experts`: which modality each expert neuron reads (see `sgm_jax.experts.attribution`)."""

from __future__ import annotations

import argparse
import os

from sgm_jax.cli.command import Command
from sgm_jax.cli.common import load, read_samples
from sgm_jax.cli.options import add_data_options, distributed_options, model_options, real, whole
from sgm_jax.runtime.choices import IMAGE_ABLATIONS, NEUTRAL_PROMPT


def _prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the neutral prompt is empty")
    return text


def cmd_experts(args) -> None:
    """Which modality each expert neuron reads: the image, the text, or both.

    Score every neuron's AUROC on a labelled multimodal dataset with mean pooling over all, image and text
    tokens, then again with each image replaced by a content-free one and with the prompt replaced by a neutral
    one (responses dropped), labels unchanged. Each expert (AUROC >= --threshold) is visual, textual,
    cross-modal or either, by the share of its expertise that survives each ablation (cut --tau). Writes experts.md,
    experts.json, experts.png and experts.safetensors."""
    from sgm_jax.experts.attribution import CLASSES, attribute, check_samples, write_outputs

    samples = read_samples(args)
    check_samples(samples)
    model, processor = load(args)
    attribution = attribute(
        model,
        processor,
        samples,
        sites=args.sites,
        threshold=args.threshold,
        tau=args.tau,
        image_ablation=args.image_ablation,
        text_ablation=args.text_ablation,
        top=args.top,
        batch_size=args.batch_size,
        seed=args.seed,
        model_name=args.model,
        dataset_name=os.path.abspath(args.data) + (f"#{args.split}" if args.split else ""),
        progress=not args.quiet,
    )
    from sgm_jax.runtime import distributed

    if not distributed.cluster().writer:
        return
    write_outputs(attribution, args.out)
    totals = attribution.totals()
    print(
        f"{sum(totals.values())} experts (AUROC >= {args.threshold:g}) of "
        f"{sum(attribution.metadata['sites'].values())} neurons: "
        + ", ".join(f"{totals[c]} {c}" for c in CLASSES)
        + f"; experts.md, experts.json, experts.png and experts.safetensors in {args.out}"
    )


def _experts_options(p) -> None:
    model_options(p)
    add_data_options(p, "labelled samples, each with an image")
    p.add_argument(
        "--sites",
        action="extend",
        nargs="+",
        metavar="PATTERN",
        help="site names or glob patterns (HF module paths, ':in' for a module's input); repeatable "
        "(default: the gate/up/down MLP projections of every decoder layer, as SGM uses)",
    )
    p.add_argument(
        "--threshold",
        type=real(0.5, 1, open_low=True),
        default=0.6,
        help="AUROC over all tokens at or above which a neuron is an expert, in (0.5, 1] (default: 0.6)",
    )
    p.add_argument(
        "--tau",
        type=real(0, 1),
        default=0.5,
        help="the cut on r = (AUROC without a modality - 0.5) / (AUROC - 0.5): an expert whose r falls below it "
        "needs that modality (default: 0.5)",
    )
    p.add_argument(
        "--image-ablation",
        choices=IMAGE_ABLATIONS,
        default="blank",
        help="what replaces each image: a uniform mid-grey image of its size, or Gaussian noise around mid-grey "
        "(default: blank)",
    )
    p.add_argument(
        "--text-ablation",
        type=_prompt,
        default=NEUTRAL_PROMPT,
        metavar="PROMPT",
        help=f"the neutral prompt that replaces each sample's prompt (default: {NEUTRAL_PROMPT!r})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise images (default: 0)")
    p.add_argument(
        "--top", type=whole(0), default=10, help="experts listed with the samples that activate them most (default: 10)"
    )
    p.add_argument("--batch-size", type=whole(1), default=8, help="samples per forward pass (default: 8)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    distributed_options(p)


COMMANDS = (Command("experts", cmd_experts, _experts_options),)
