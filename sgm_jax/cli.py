"""The `sgm-jax` command: collect pooled responses, score experts, list sites."""

from __future__ import annotations

import argparse
import os
import sys

from sgm_jax.capture import POOLINGS, TOKENS
from sgm_jax.loading import DTYPES


def _mesh(text: str | None):
    if not text:
        return None
    from sgm_jax.sharding import make_mesh

    try:
        data, fsdp, tensor = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--mesh takes DATA,FSDP,TENSOR sizes such as 1,4,2 (one may be -1), got {text!r}")
    return make_mesh(data, fsdp, tensor)


def _load(args):
    import sgm_jax

    return sgm_jax.load_model(args.model, dtype=args.dtype, mesh=_mesh(args.mesh))


def cmd_collect(args) -> None:
    from sgm_jax.collect import collect_to_store
    from sgm_jax.data import read_jsonl
    from sgm_jax.sites import default_sites

    samples = read_jsonl(args.data, split=args.split, skip_missing_images=args.skip_missing)
    model, processor = _load(args)
    sites = args.sites or default_sites(model)
    store = collect_to_store(model, processor, samples, args.out, sites=sites, pooling=args.pooling,
                             tokens=args.tokens, batch_size=args.batch_size, model_name=args.model,
                             dataset_name=os.path.abspath(args.data) + (f"#{args.split}" if args.split else ""),
                             progress=not args.quiet)
    print(f"{len(store.sample_ids)} samples x {len(store.sites)} sites "
          f"({sum(store.sites.values())} neurons) in {args.out}")


def cmd_score(args) -> None:
    from sgm_jax.scores import save_scores, score_store, store_metadata
    from sgm_jax.store import ResponseStore

    store = ResponseStore(args.store)
    scores = score_store(store, mesh=_mesh(args.mesh), progress=not args.quiet)
    save_scores(args.out, scores, store_metadata(store))
    n = sum(len(s) for s in scores.values())
    above = sum(int((s > 0.5).sum()) for s in scores.values())
    print(f"AUROC of {n} neurons at {len(scores)} sites -> {args.out} ({above} above 0.5)")


def cmd_sites(args) -> None:
    from sgm_jax.sites import list_sites, resolve

    model, _ = _load(args)
    names = [r.name for r in resolve(model, args.pattern)] if args.pattern else list(list_sites(model))
    widths = list_sites(model)
    for name in names:
        print(f"{name}\t{widths[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgm-jax", description="Neuron-level safety interventions (SGM) for "
                                     "multimodal LLMs in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p):
        p.add_argument("--model", required=True,
                       help="a local Hugging Face checkpoint directory, or a hub id already in the local HF cache "
                            "(nothing is downloaded)")
        p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                       help="parameter and compute dtype (default: float32)")
        p.add_argument("--mesh", metavar="DATA,FSDP,TENSOR",
                       help="shard the model over a device mesh of these sizes, e.g. 1,4,2 (default: one device)")

    p = sub.add_parser("collect", help="record pooled neuron responses on a labelled dataset",
                       description="Run the model over a native JSONL dataset and store each site's pooled "
                                   "activation per sample. An interrupted run resumes where it stopped when the "
                                   "same command is run again.")
    model_options(p)
    p.add_argument("--data", required=True, help="dataset in the native JSONL format (see sgm_jax/data/samples.py)")
    p.add_argument("--split", help="only the samples whose 'split' field equals this (default: all)")
    p.add_argument("--sites", nargs="+", metavar="PATTERN",
                   help="site names or glob patterns (HF module paths, ':in' for a module's input); default: "
                        "the gate/up/down MLP projections of every decoder layer, as SGM uses")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="how a site's activations are pooled over positions (default: mean, as SGM)")
    p.add_argument("--tokens", choices=TOKENS, default="all",
                   help="which positions decoder sites pool over: all real tokens, only text or only image "
                        "tokens (default: all); vision-tower and projector sites always pool over their image")
    p.add_argument("--batch-size", type=int, default=8, help="samples per forward pass (default: 8)")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip (and count) samples whose image file is missing instead of stopping")
    p.add_argument("--out", required=True, help="store directory (created, or resumed if it exists)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("score", help="per-neuron AUROC of a response store",
                       description="Compute each neuron's AUROC as a classifier of the label (toxic 1 vs benign 0), "
                                   "exact with ties counted half, and save {site: AUROC} as safetensors with "
                                   "the store's metadata.")
    p.add_argument("--store", required=True, help="a complete response store written by `sgm-jax collect`")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--mesh", metavar="DATA,FSDP,TENSOR", help="spread the neurons over a device mesh of these sizes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("sites", help="list a model's neuron sites and their widths",
                       description="Print every site name (HF module paths, ':in' for inputs) with its number of "
                                   "neurons, or only those matching PATTERN.")
    model_options(p)
    p.add_argument("pattern", nargs="*", help="names or glob patterns to expand (default: all sites)")
    p.set_defaults(func=cmd_sites)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
