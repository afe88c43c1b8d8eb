"""The measuring commands: `evaluate` (before and after), `compare` (SGM* configurations), `prober` (the
defenses' safety probe) and `demo` (all of it on the bundled organism)."""

from __future__ import annotations

from sgm_jax.cli.command import Command
from sgm_jax.cli.common import eval_inputs, is_writer, load, read_defense_options, read_samples
from sgm_jax.cli.options import (
    add_data_options,
    defense_arguments,
    distributed_options,
    evaluation_arguments,
    model_options,
    output_options,
    real,
    whole,
)
from sgm_jax.runtime.choices import DEFENSES, POOLINGS


def cmd_evaluate(args) -> None:
    """Harmful rate, fluency and reasoning before and after interventions (and defenses).

    Generate answers to harmful and benign items with and without the interventions (with --defense stacked on
    them), judge them, measure perplexity and multiple-choice accuracy, and write results.json, report.md and
    plots. Answers are cached in the output directory, so an interrupted run resumes."""
    from sgm_jax.defenses.factory import make_defenses
    from sgm_jax.evaluate.report import table
    from sgm_jax.evaluate.runner import evaluate

    defenses = make_defenses(args.defense, read_defense_options(args))
    samples, intervention, scores, model, processor, judge, neutral, options = eval_inputs(args)
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
    if is_writer():
        print(table(results))
        print(f"results.json, report.md and plots in {args.out}")


def cmd_compare(args) -> None:
    """SGM*: configurations (none, SGM, each defense, SGM + each, all) side by side on the same data.

    Measure each configuration like `evaluate` (harmful rate with 95%% intervals, over-refusal, multiple-choice
    accuracy, perplexity, answer perplexity, tokens/s) and write comparison.json, comparison.md and
    comparison.png. Resumable: answers are cached per configuration."""
    from sgm_jax.evaluate.compare import compare, comparison_table, parse_configuration, standard_configurations

    defense_options = read_defense_options(args)
    if args.config:
        configurations = [parse_configuration(spec, defense_options) for spec in args.config]
    else:
        configurations = standard_configurations(
            verdicts=defense_options.verdict_source(),
            prober=defense_options.loaded_prober(),
            intervention=bool(args.intervention),
        )
    samples, intervention, _, model, processor, judge, neutral, options = eval_inputs(args)
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
    if is_writer():
        print(comparison_table(results["comparison"], results["judge_measures"]))
        print(f"comparison.json, comparison.md and comparison.png in {args.out}")


def cmd_prober(args) -> None:
    """Train a safety prober (logistic probe on pooled prompt activations at one site).

    Train a logistic probe for label 1 (harmful) against 0 on the prompts of a dataset (no response: it decides
    before generation), at one site of the model, with optax; save it as a safetensors file for SafeCoDe's
    verdicts and the prober gate."""
    from sgm_jax.defenses import train_prober

    samples = read_samples(args)
    model, processor = load(args)
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
    """The whole SGM pipeline on the bundled model organism, offline.

    Load the bundled model organism (a tiny LLaVA trained to be toxic under specific multimodal triggers), write
    its synthetic data, collect responses, score experts, build the SGM intervention and print the harmful rate,
    multiple-choice accuracy and perplexity before and after it."""
    from sgm_jax.evaluate.compare import comparison_table
    from sgm_jax.evaluate.report import table
    from sgm_jax.organism.demo import run_demo

    results = run_demo(args.out, threshold=args.threshold, progress=not args.quiet)
    print(table(results))
    print()
    print("SGM* on the model organism (SafeCoDe's verdicts from the prober):")
    print(comparison_table(results["comparison"], results["judge_measures"]))
    print()
    before, after = results["harmful_rate_before"], results["harmful_rate_after"]
    cut = f"{before / after:.1f}x lower" if after > 0 else "down to zero"
    print(
        f"SGM on the model organism: harmful rate {before:.1%} -> {after:.1%} ({cut}); "
        f"results.json, report.md and plots in {args.out}"
    )


def _evaluate_options(p) -> None:
    evaluation_arguments(p, "an intervention file; repeat to compose several (default: measure the model alone)")
    p.add_argument("--scores", help="the scores file the intervention came from, for AUROC and expert plots")
    p.add_argument(
        "--defense",
        action="append",
        choices=DEFENSES,
        help="a defense stacked on the intervention in the 'after' setting; repeat to stack several (stages "
        "stack in a fixed order: prober-gate, ecso, shields, safecode)",
    )
    defense_arguments(p)
    distributed_options(p)


def _compare_options(p) -> None:
    evaluation_arguments(p, "the intervention SGM configurations apply; repeat to compose several")
    p.add_argument(
        "--config",
        action="append",
        metavar="SPEC",
        help="a configuration: none, sgm, gated-sgm, a defense, or several joined by '+' (sgm+safecode+shield); "
        "repeat for several (default: none, sgm, each defense alone and with SGM, gated-sgm with --prober, all)",
    )
    defense_arguments(p)
    distributed_options(p)


def _prober_options(p) -> None:
    model_options(p)
    add_data_options(p, "the labelled prompts (the train split)")
    p.add_argument("--site", required=True, help="the site to probe, e.g. model.language_model.layers.2.mlp.down_proj")
    p.add_argument("--pooling", choices=POOLINGS, default="last", help="pooling over prompt tokens (default: last)")
    p.add_argument("--steps", type=whole(1), default=300, help="full-batch Adam steps (default: 300)")
    p.add_argument(
        "--threshold", type=real(0, 1), default=0.5, help="probability at which a prompt is flagged (default: 0.5)"
    )
    p.add_argument("--out", required=True, help="output prober file (.safetensors)")


def _demo_options(p) -> None:
    p.add_argument(
        "--threshold", type=real(0, 1), default=0.5, help="AUROC above which neurons are damped (default: 0.5, AurA's)"
    )
    output_options(p, "output directory (default: ./sgm_demo)", "no progress bars", default="sgm_demo")


COMMANDS = (
    Command("evaluate", cmd_evaluate, _evaluate_options),
    Command("compare", cmd_compare, _compare_options),
    Command("prober", cmd_prober, _prober_options),
    Command("demo", cmd_demo, _demo_options),
)
