"""The `sgm-jax` command: collect pooled responses, score experts, list sites, generate with interventions.

Building the parser loads no jax (its choices come from `sgm_jax.choices`): each command imports its work when it
runs, so `--help` and a usage mistake answer at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from sgm_jax.choices import DEFENSES, DTYPE_NAMES, POOLINGS, TOKENS, VERDICTS
from sgm_jax.cli_data import add_data_options, image_options, read_samples
from sgm_jax.errors import OptionError, user_message
from sgm_jax.options import OneLineParser, real, whole


def _mesh(text: str | None):
    if not text:
        return None
    from sgm_jax.sharding import make_mesh

    try:
        data, fsdp, tensor = (int(x) for x in text.split(","))
    except ValueError:
        raise OptionError(f"--mesh takes DATA,FSDP,TENSOR sizes such as 1,4,2 (one may be -1), got {text!r}") from None
    return make_mesh(data, fsdp, tensor)


def _load(args, *, text: bool = True):
    """The --model checkpoint as `(model, processor)`; with `text` (every command but `sites`), one without
    tokenizer files is refused before it loads."""
    import sgm_jax
    from sgm_jax.data.encode import SquareImages
    from sgm_jax.loading import require_tokenizer

    if text:
        require_tokenizer(args.model)
    model, processor = sgm_jax.load_model(args.model, dtype=args.dtype, mesh=_mesh(args.mesh))
    if getattr(args, "image_size", None) is not None and processor is not None:
        processor = SquareImages(processor, args.image_size)
    return model, processor


def _load_gated(args):
    """The model under the --intervention files when given (a reader that must see the model it will steer),
    else as `_load` gives it."""
    intervention = _interventions(args)
    model, processor = _load(args)
    if intervention is None:
        return model, processor
    import sgm_jax

    return sgm_jax.intervene(model, intervention), processor


def _interventions(args):
    """The --intervention files, each at --strength, as one intervention (their alphas multiply); None without any.

    Loaded before the model, so a wrong file is refused at once."""
    import sgm_jax

    if not args.intervention:
        return None
    parts = [sgm_jax.load_intervention(path).with_strength(args.strength) for path in args.intervention]
    return parts[0] if len(parts) == 1 else sgm_jax.compose(*parts)


def cmd_collect(args) -> None:
    from sgm_jax.collect import collect_to_store
    from sgm_jax.sites import default_sites

    samples = read_samples(args)
    model, processor = _load(args)
    sites = args.sites or default_sites(model)
    store = collect_to_store(
        model,
        processor,
        samples,
        args.out,
        sites=sites,
        pooling=args.pooling,
        tokens=args.tokens,
        batch_size=args.batch_size,
        model_name=args.model,
        dataset_name=os.path.abspath(args.data) + (f"#{args.split}" if args.split else ""),
        progress=not args.quiet,
    )
    if _is_writer():
        print(
            f"{len(store.sample_ids)} samples x {len(store.sites)} sites "
            f"({sum(store.sites.values())} neurons) in {args.out}"
        )


def cmd_score(args) -> None:
    from sgm_jax.scores import save_scores, score_store, store_metadata
    from sgm_jax.store import ResponseStore

    store = ResponseStore(args.store)
    scores = score_store(store, mesh=_mesh(args.mesh), progress=not args.quiet)
    if not _is_writer():
        return
    save_scores(args.out, scores, store_metadata(store))
    n = sum(len(s) for s in scores.values())
    above = sum(int((s > 0.5).sum()) for s in scores.values())
    print(f"AUROC of {n} neurons at {len(scores)} sites -> {args.out} ({above} above 0.5)")


def cmd_sites(args) -> None:
    from sgm_jax.sites import list_sites, resolve

    model, _ = _load(args, text=False)
    names = [r.name for r in resolve(model, args.pattern)] if args.pattern else list(list_sites(model))
    widths = list_sites(model)
    for name in names:
        print(f"{name}\t{widths[name]}")


def cmd_generate(args) -> None:
    import sgm_jax
    from sgm_jax.data import Sample
    from sgm_jax.data.encode import encode
    from sgm_jax.data.images import load_rgb
    from sgm_jax.lengths import check_lengths

    if args.image:
        if not os.path.exists(args.image):
            raise OptionError(f"--image {args.image}: no such file")
        load_rgb(args.image)
    intervention = _interventions(args)
    model, processor = _load(args)
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
    print(
        f"{args.method}: {iv.num_changed()} of {sum(len(a) for a in iv.alphas.values())} neurons changed -> {args.out}"
    )


def _load_samples(args):
    """--data as every command reads it, then the --mcq items, then the first --limit."""
    from sgm_jax.data.readers import read_dataset

    samples = read_samples(args)
    if args.mcq:
        samples += read_dataset(args.mcq, None, **image_options(args))
    return samples[: args.limit] if args.limit else samples


def cmd_evaluate(args) -> None:
    from sgm_jax.defenses.factory import make_defenses
    from sgm_jax.evaluate.report import table
    from sgm_jax.evaluate.runner import evaluate

    defenses = make_defenses(args.defense, _defense_options(args))
    samples, intervention, scores, model, processor, judge, neutral, options = _eval_inputs(args)
    results = evaluate(
        model,
        processor,
        samples,
        judge=judge,
        out_dir=args.out,
        intervention=intervention,
        neutral_texts=neutral,
        scores=scores,
        options=options,
        info={"model": args.model, "data": args.data, "interventions": args.intervention or []},
        defenses=defenses,
    )
    if _is_writer():
        print(table(results))
        print(f"results.json, report.md and plots in {args.out}")


def _defense_options(args):
    from sgm_jax.defenses.factory import DefenseOptions

    safecode = {
        field: getattr(args, f"safecode_{field}")
        for field in ("alpha", "max_steps", "top_k", "lambda_supp", "noise_std", "unsafe_tokens", "safe_tokens")
        if getattr(args, f"safecode_{field}") is not None
    }
    mop = {
        field: getattr(args, f"mop_{field}")
        for field in ("lam", "tau", "iters", "screen", "gamma")
        if getattr(args, f"mop_{field}") is not None
    }
    options = DefenseOptions(
        prober=args.prober,
        verdicts=args.safecode_verdicts,
        safecode=safecode,
        dictionary=args.dictionary,
        mop=mop,
        sae=args.sae,
        annotation=args.annotation,
        daco_gamma=args.daco_gamma,
        daco_eta=args.daco_eta,
    )
    if args.shield_text is not None:
        options.shield_text = args.shield_text
    options.adashield_position = args.adashield_position
    return options


def _judge_and_neutral(args, model, processor):
    """The --judge (the self judge reads the model) and the --neutral texts."""
    from sgm_jax.evaluate.judges import make_judge

    judge = make_judge(args.judge, **({"model": model, "processor": processor} if args.judge == "self" else {}))
    neutral = []
    if args.neutral:
        with open(args.neutral, encoding="utf-8") as f:
            neutral = [line.strip() for line in f if line.strip()]
    return judge, neutral


def _eval_inputs(args):
    """What evaluate and compare share: samples, intervention, model, judge, neutral texts, options."""
    import sgm_jax
    from sgm_jax.evaluate.runner import EvalOptions

    samples = _load_samples(args)
    intervention = _interventions(args)
    scores = sgm_jax.load_scores(args.scores)[0] if getattr(args, "scores", None) else None
    model, processor = _load(args)
    judge, neutral = _judge_and_neutral(args, model, processor)
    options = EvalOptions(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        temperature=args.temperature,
        seed=args.seed,
        circular=args.circular,
        progress=not args.quiet,
    )
    return samples, intervention, scores, model, processor, judge, neutral, options


def cmd_compare(args) -> None:
    from sgm_jax.evaluate.compare import compare, comparison_table, parse_configuration, standard_configurations

    defense_options = _defense_options(args)
    if args.config:
        configurations = [parse_configuration(spec, defense_options) for spec in args.config]
    else:
        configurations = standard_configurations(
            verdicts=defense_options.verdict_source(),
            prober=defense_options.loaded_prober(),
            intervention=bool(args.intervention),
        )
    samples, intervention, _, model, processor, judge, neutral, options = _eval_inputs(args)
    results = compare(
        model,
        processor,
        samples,
        judge=judge,
        out_dir=args.out,
        configurations=configurations,
        intervention=intervention,
        neutral_texts=neutral,
        options=options,
        info={"model": args.model, "data": args.data, "interventions": args.intervention or []},
    )
    if _is_writer():
        print(comparison_table(results["comparison"]))
        print(f"comparison.json, comparison.md and comparison.png in {args.out}")


def cmd_prober(args) -> None:
    from sgm_jax.defenses import train_prober

    samples = read_samples(args)
    model, processor = _load(args)
    prober = train_prober(
        model, processor, samples, site=args.site, pooling=args.pooling, steps=args.steps, threshold=args.threshold
    )
    prober.save(args.out)
    meta = prober.metadata
    print(
        f"prober at {args.site} ({args.pooling} pooling): train accuracy {meta['train_accuracy']:.1%} on "
        f"{meta['train_samples']} prompts; saved to {args.out}"
    )


def cmd_demo(args) -> None:
    from sgm_jax.demo import run_demo
    from sgm_jax.evaluate.compare import comparison_table
    from sgm_jax.evaluate.report import table

    results = run_demo(args.out, threshold=args.threshold, progress=not args.quiet)
    print(table(results))
    print()
    print("SGM* on the model organism (SafeCoDe's verdicts from the prober):")
    print(comparison_table(results["comparison"]))
    print()
    before, after = results["harmful_rate_before"], results["harmful_rate_after"]
    cut = f"{before / after:.1f}x lower" if after > 0 else "down to zero"
    print(
        f"SGM on the model organism: harmful rate {before:.1%} -> {after:.1%} ({cut}); "
        f"results.json, report.md and plots in {args.out}"
    )


def _distributed_options(p) -> None:
    """One job over several processes (hosts of a TPU pod slice): see `sgm_jax.distributed`."""
    g = p.add_argument_group("several processes (each takes a share of the work; process 0 writes)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (or SGM_JAX_COORDINATOR)")
    g.add_argument(
        "--num-processes", type=whole(1), metavar="N", help="processes in the job (or SGM_JAX_NUM_PROCESSES)"
    )
    g.add_argument(
        "--process-id", type=whole(0), metavar="I", help="this process's index, 0..N-1 (or SGM_JAX_PROCESS_ID)"
    )


def _is_writer() -> bool:
    from sgm_jax import distributed

    return distributed.cluster().writer


def _join(args) -> None:
    """Join the job the --coordinator options (or the environment, or a TPU pod slice) describe."""
    if hasattr(args, "coordinator"):
        from sgm_jax import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def _mesh_option(p, help: str) -> None:
    p.add_argument("--mesh", metavar="DATA,FSDP,TENSOR", help=help)


def _model_options(p, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="a local Hugging Face checkpoint directory, or a hub id already in the local HF cache "
        "(nothing is downloaded)",
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPE_NAMES), default="float32", help="parameter and compute dtype (default: float32)"
    )
    _mesh_option(p, "shard the model over a device mesh of these sizes, e.g. 1,4,2 (default: one device)")


def _image_size_option(p) -> None:
    p.add_argument(
        "--image-size",
        type=whole(1),
        metavar="PIXELS",
        help="resize every image to PIXELS x PIXELS before the processor: one canonical resolution (the "
        "recipe's images.canonical_size; a multiple of 28 for Qwen2-VL and of 112 for Qwen2.5-VL, so every "
        "image has one grid and the vision tower runs batched per image or window)",
    )


def _intervention_options(p, file_help: str, strength_help: str) -> None:
    """--intervention (repeatable) and --strength, as `_interventions` reads them."""
    p.add_argument("--intervention", action="append", metavar="FILE", help=file_help)
    p.add_argument("--strength", type=real(), default=1.0, help=strength_help)


def _sampling_options(p, seed_help: str) -> None:
    p.add_argument("--temperature", type=real(0), default=0.0, help="sampling temperature; 0 is greedy (default: 0)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def _output_options(p, out_help: str, quiet_help: str, default: str | None = None) -> None:
    """--out (required unless it has a default) and --quiet, for the commands that show progress."""
    p.add_argument("--out", required=default is None, default=default, help=out_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def _data_options(p, *, required: bool = True) -> None:
    """The evaluation data and its judge: what evaluate, compare and sweep read (--data is optional where a
    command has a built-in set, as sweep's --demo)."""
    add_data_options(p, "the evaluation set", required=required)
    p.add_argument("--mcq", help="an extra file of multiple-choice items (options + answer) for reasoning accuracy")
    p.add_argument("--neutral", help="a text file of neutral sentences, one per line, for perplexity")
    p.add_argument(
        "--judge",
        default="refusal",
        help="refusal | lexicon:PATH | classifier:DIR | chat | self (default: refusal); chat reads "
        "SGM_JAX_JUDGE_BASE_URL, SGM_JAX_JUDGE_MODEL and SGM_JAX_JUDGE_API_KEY",
    )
    p.add_argument("--limit", type=whole(1), help="only the first N samples (a quick look)")
    _image_size_option(p)


def _evaluation_arguments(p, intervention_help: str) -> None:
    """The data, model, judge and generation options evaluate and compare share."""
    _model_options(p)
    _data_options(p)
    _intervention_options(p, intervention_help, "scale of each intervention: alpha -> 1 - s (1 - alpha) (default: 1)")
    p.add_argument("--max-new-tokens", type=whole(1), default=64, help="most tokens per answer (default: 64)")
    p.add_argument("--batch-size", type=whole(1), default=8, help="samples per generation batch (default: 8)")
    _sampling_options(p, "random seed for sampling and bootstrap (default: 0)")
    p.add_argument(
        "--circular", action="store_true", help="multiple-choice items rotate their options (MMBench CircularEval)"
    )
    _output_options(p, "output directory (created; resumed if it holds cached answers)", "no progress bars")


def _defense_arguments(p) -> None:
    """Every defense's options (defaults are the methods' official ones)."""
    g = p.add_argument_group("defenses")
    g.add_argument(
        "--prober", metavar="FILE", help="a prober (sgm-jax prober): SafeCoDe's verdicts and the prober gate"
    )
    g.add_argument(
        "--safecode-verdicts",
        choices=VERDICTS,
        help="where SafeCoDe's scene verdict comes from: probe (--prober), self (the model as its own guard), "
        "endpoint (caption + verdict by a chat endpoint, SGM_JAX_JUDGE_*), or unsafe/safe for every sample "
        "(default: probe with --prober, else self)",
    )
    g.add_argument("--safecode-alpha", type=real(0), help="contrast strength z - alpha z_noised (default: 0.3)")
    g.add_argument("--safecode-max-steps", type=whole(1), help="guided steps K (default: 5)")
    g.add_argument("--safecode-top-k", type=whole(1), help="refusal phrases shortlisted on unsafe (default: 20)")
    g.add_argument(
        "--safecode-lambda-supp", type=real(0, 2), help="refusal damping 1 - lambda/2 on safe (default: 1.0)"
    )
    g.add_argument("--safecode-noise-std", type=real(0), help="noise sigma in [0, 1] pixel space (default: 0.1)")
    g.add_argument(
        "--safecode-unsafe-tokens", type=whole(1), help="continuation budget on unsafe (default: 20 LLaVA, 30 Qwen)"
    )
    g.add_argument("--safecode-safe-tokens", type=whole(1), help="continuation budget on safe (default: 256)")
    g.add_argument("--shield-text", help="the safety system prompt of the shield defense (default: sgm_jax's)")
    g.add_argument(
        "--adashield-position",
        choices=["before", "after"],
        default="after",
        help="where AdaShield-S's defense prompt goes in the user's text (default: after)",
    )
    g.add_argument("--dictionary", metavar="FILE", help="MOP's concept dictionary (sgm-jax dictionary)")
    g.add_argument("--mop-lam", type=real(0), help="MOP's elastic-net strength lam (default: 0.05, PaCE's)")
    g.add_argument("--mop-tau", type=real(0, 1), help="MOP's L1 share tau, strictly inside (0, 1) (default: 0.95)")
    g.add_argument("--mop-iters", type=whole(1), help="MOP's FISTA iterations per token (default: 60)")
    g.add_argument(
        "--mop-screen",
        type=whole(0),
        help="code over each token's top-M atoms plus the labelled ones (default: 0, all)",
    )
    g.add_argument("--mop-gamma", type=real(0), help="MOP's promotion of desirable atoms, times ||x|| (default: 0)")
    g.add_argument("--sae", metavar="FILE", help="DACO's SAE (sgm-jax sae train)")
    g.add_argument("--annotation", metavar="FILE", help="DACO's atom labels (sgm-jax sae annotate)")
    g.add_argument("--daco-gamma", type=real(0), default=0.0, help="DACO's desirable-atom activation (default: 0)")
    g.add_argument("--daco-eta", type=real(0, 2), help="relabel the annotation's atoms at this eta (default: its own)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sgm-jax", description="Neuron-level safety interventions (SGM) for multimodal LLMs in JAX."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also: SGM_JAX_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "collect",
        help="record pooled neuron responses on a labelled dataset",
        description="Run the model over a labelled dataset and store each site's pooled "
        "activation per sample. An interrupted run resumes where it stopped when the "
        "same command is run again.",
    )
    _model_options(p)
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
        help="how a site's activations are pooled over positions (default: mean, as SGM)",
    )
    p.add_argument(
        "--tokens",
        choices=TOKENS,
        default="all",
        help="which positions decoder sites pool over: all real tokens, only text or only image "
        "tokens (default: all); vision-tower and projector sites always pool over their image",
    )
    p.add_argument("--batch-size", type=whole(1), default=8, help="samples per forward pass (default: 8)")
    _image_size_option(p)
    _output_options(p, "store directory (created, or resumed if it exists)", "no progress bar")
    _distributed_options(p)
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "score",
        help="per-neuron AUROC of a response store",
        description="Compute each neuron's AUROC as a classifier of the label (toxic 1 vs benign 0), "
        "exact with ties counted half, and save {site: AUROC} as safetensors with "
        "the store's metadata.",
    )
    p.add_argument("--store", required=True, help="a complete response store written by `sgm-jax collect`")
    _mesh_option(p, "spread the neurons over a device mesh of these sizes")
    _output_options(p, "output .safetensors file", "no progress bar")
    _distributed_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "sites",
        help="list a model's neuron sites and their widths",
        description="Print every site name (HF module paths, ':in' for inputs) with its number of "
        "neurons, or only those matching PATTERN.",
    )
    _model_options(p)
    p.add_argument("pattern", nargs="*", help="names or glob patterns to expand (default: all sites)")
    p.set_defaults(func=cmd_sites)

    p = sub.add_parser(
        "generate",
        help="generate a reply to one prompt, optionally with interventions",
        description="Render the prompt (and image) through the checkpoint's chat template, "
        "generate with the KV-cached jitted decoder and print the reply. Interventions "
        "(files written by Intervention.save) are composed: their alphas multiply.",
    )
    _model_options(p)
    p.add_argument("--prompt", required=True, help="the user's message")
    p.add_argument("--image", help="an image file shown with the prompt (default: text only)")
    _image_size_option(p)
    _intervention_options(
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
    _sampling_options(p, "random seed for sampling (default: 0)")
    p.add_argument(
        "--top-k", type=whole(0), default=0, help="sample only among the k most likely tokens; 0 is off (default: 0)"
    )
    p.add_argument(
        "--top-p",
        type=real(0, 1, open_low=True),
        default=1.0,
        help="sample only within the smallest set of tokens holding this probability; 1 is off (default: 1)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "intervention",
        help="build an intervention file from expert scores",
        description="Turn a scores file (from `sgm-jax score`) into per-neuron gates: aura (SGM's "
        "expertise-weighted damping, alpha = 1 - 2 (AUROC - 0.5) above the threshold), "
        "damp (a fixed alpha on the global top-k neurons) or det0 (alpha 0 on the top-k).",
    )
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
    p.set_defaults(func=cmd_intervention)

    p = sub.add_parser(
        "evaluate",
        help="harmful rate, fluency and reasoning before and after interventions (and defenses)",
        description="Generate answers to harmful and benign items with and without the "
        "interventions (with --defense stacked on them), judge them, measure perplexity and "
        "multiple-choice accuracy, and write results.json, report.md and plots. Answers are "
        "cached in the output directory, so an interrupted run resumes.",
    )
    _evaluation_arguments(p, "an intervention file; repeat to compose several (default: measure the model alone)")
    p.add_argument("--scores", help="the scores file the intervention came from, for AUROC and expert plots")
    p.add_argument(
        "--defense",
        action="append",
        choices=DEFENSES,
        help="a defense stacked on the intervention in the 'after' setting; repeat to stack several (stages "
        "stack in a fixed order: prober-gate, ecso, shields, safecode)",
    )
    _defense_arguments(p)
    _distributed_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="SGM*: configurations (none, SGM, each defense, SGM + each, all) side by side on the same data",
        description="Measure each configuration like `evaluate` (harmful rate with 95%% intervals, "
        "over-refusal, multiple-choice accuracy, perplexity, answer perplexity, tokens/s) and write "
        "comparison.json, comparison.md and comparison.png. Resumable: answers are cached per configuration.",
    )
    _evaluation_arguments(p, "the intervention SGM configurations apply; repeat to compose several")
    p.add_argument(
        "--config",
        action="append",
        metavar="SPEC",
        help="a configuration: none, sgm, gated-sgm, a defense, or several joined by '+' (sgm+safecode+shield); "
        "repeat for several (default: none, sgm, each defense alone and with SGM, gated-sgm with --prober, all)",
    )
    _defense_arguments(p)
    _distributed_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "prober",
        help="train a safety prober (logistic probe on pooled prompt activations at one site)",
        description="Train a logistic probe for label 1 (harmful) against 0 on the prompts of a dataset "
        "(no response: it decides before generation), at one site of the model, with optax; save it "
        "as a safetensors file for SafeCoDe's verdicts and the prober gate.",
    )
    _model_options(p)
    add_data_options(p, "the labelled prompts (the train split)")
    p.add_argument("--site", required=True, help="the site to probe, e.g. model.language_model.layers.2.mlp.down_proj")
    p.add_argument("--pooling", choices=POOLINGS, default="last", help="pooling over prompt tokens (default: last)")
    p.add_argument("--steps", type=whole(1), default=300, help="full-batch Adam steps (default: 300)")
    p.add_argument(
        "--threshold", type=real(0, 1), default=0.5, help="probability at which a prompt is flagged (default: 0.5)"
    )
    p.add_argument("--out", required=True, help="output prober file (.safetensors)")
    p.set_defaults(func=cmd_prober)

    p = sub.add_parser(
        "demo",
        help="the whole SGM pipeline on the bundled model organism, offline",
        description="Load the bundled model organism (a tiny LLaVA trained to be toxic under "
        "specific multimodal triggers), write its synthetic data, collect responses, "
        "score experts, build the SGM intervention and print the harmful rate, "
        "multiple-choice accuracy and perplexity before and after it.",
    )
    p.add_argument(
        "--threshold", type=real(0, 1), default=0.5, help="AUROC above which neurons are damped (default: 0.5, AurA's)"
    )
    _output_options(p, "output directory (default: ./sgm_demo)", "no progress bars", default="sgm_demo")
    p.set_defaults(func=cmd_demo)

    from sgm_jax import cli_steering

    def steered_model_options(p) -> None:
        _model_options(p)
        _intervention_options(
            p,
            "read the model under this intervention (repeatable; alphas multiply): a dictionary or SAE that will "
            "steer SGM's gated model (SGM+DACO) is read from that model",
            "the intervention's strength (default: 1)",
        )

    cli_steering.add_commands(sub, steered_model_options, _load_gated)

    from sgm_jax import cli_experts

    cli_experts.add_commands(sub, _model_options, _distributed_options, _load)

    from sgm_jax import cli_sweep

    cli_sweep.add_command(
        sub,
        lambda p: _model_options(p, required=False),
        lambda p: _data_options(p, required=False),
        _distributed_options,
        _load,
        _load_samples,
        _judge_and_neutral,
    )
    return parser


def run(argv: list[str] | None = None) -> None:
    """Run one command, letting its errors propagate (for Python callers; `main` is the command line's)."""
    args = build_parser().parse_args(argv)
    _join(args)
    args.func(args)


def _exit_interrupted(command: str) -> None:
    print(f"sgm-jax {command}: interrupted; rerun the same command to resume", file=sys.stderr)
    raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> None:
    """The `sgm-jax` entry point: a mistake is `sgm-jax CMD: error: MESSAGE` and exit 1, a bug keeps its traceback,
    an interrupt exits 130 wherever it lands; `--debug` (or SGM_JAX_DEBUG=1) shows every traceback."""
    args = build_parser().parse_args(argv)
    interrupts = []
    previous = signal.getsignal(signal.SIGINT)

    def interrupted(signum, frame):
        # Remembered, because the KeyboardInterrupt may never reach us as one: jax's dispatch can turn it into
        # another error, and a library's `except` (a thread pool, a progress bar) can swallow it.
        interrupts.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupted)
    try:
        _join(args)
        args.func(args)
        if interrupts:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        _exit_interrupted(args.command)
    except Exception as error:
        if interrupts:
            _exit_interrupted(args.command)
        if args.debug or os.environ.get("SGM_JAX_DEBUG") == "1":
            raise
        message = user_message(error)
        if message is None:
            traceback.print_exc()
            print(
                f"sgm-jax {args.command}: internal error ({type(error).__name__}); this is a bug in sgm-jax, "
                "please report it with the command you ran",
                file=sys.stderr,
            )
        else:
            print(f"sgm-jax {args.command}: error: " + message.replace("\n", "\n  "), file=sys.stderr)
        distributed = sys.modules.get("sgm_jax.distributed")  # only a loaded one raises ProcessError
        if distributed is not None and isinstance(error, distributed.ProcessError):
            distributed.abandon(1)
        raise SystemExit(1) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
