"""The `sgm-jax sweep` command: a grid (or a list) of intervention settings measured on one data set, K settings
per compiled call, into a table and a Pareto plot."""

from __future__ import annotations

from sgm_jax.cli.command import Command
from sgm_jax.cli.common import judge_and_neutral, load, load_samples
from sgm_jax.cli.options import distributed_options, evaluation_data_options, model_options, real, whole
from sgm_jax.runtime.errors import OptionError

GRID_OPTIONS = ("method", "threshold", "strength", "k", "alpha", "sites")


def cmd_sweep(args) -> None:
    """Measure a grid of intervention settings and plot the Pareto front.

    Turn expert scores into every setting of a grid (or a list file) of methods (aura, damp, det0), thresholds,
    strengths, k and site groups; measure each on the same data (harmful rate with its 95% interval,
    over-refusal, multiple-choice accuracy, perplexity, answer fluency), --chunk-size settings per compiled call;
    write sweep.csv, pareto.png and sweep.json. A rerun resumes: only settings without a row are measured. Site
    groups: all, sgm (the paper's gate/up/down sites), gate, up, down, down:in, layers:A-B, vision, projector,
    or NAME=PATTERN[,PATTERN...]."""
    from sgm_jax.sweeps.evaluation import SweepOptions
    from sgm_jax.sweeps.settings import grid, group_name, read_settings

    options = SweepOptions(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    if args.grid:
        settings = read_settings(args.grid)
    else:
        names = [group_name(spec) for spec in args.sites]
        settings = grid(
            args.method,
            sites=names,
            thresholds=args.threshold,
            strengths=args.strength,
            ks=args.k,
            alphas=args.alpha,
        )
    if args.demo:
        summary = _demo(args, options, settings if (args.grid or _grid_given(args)) else None)
    else:
        summary = _sweep(args, options, settings)
    from sgm_jax.runtime import distributed

    if distributed.cluster().writer:
        _report(summary, args.out)


def _grid_given(args) -> bool:
    return any(getattr(args, name) != _DEFAULTS[name] for name in GRID_OPTIONS)


def _demo(args, options, settings):
    from sgm_jax.sweeps.organism import organism_sweep

    given = [name for name in ("model", "scores", "data") if getattr(args, name)]
    if given:
        raise OptionError(f"--demo sweeps the bundled organism on its own data; drop --{', --'.join(given)}")
    return organism_sweep(args.out, options=options, settings=settings, progress=not args.quiet)


def _sweep(args, options, settings):
    import sgm_jax
    from sgm_jax.data.samples import require_labels
    from sgm_jax.sweeps.run import run_sweep
    from sgm_jax.sweeps.settings import site_groups

    missing = [name for name in ("model", "scores", "data") if not getattr(args, name)]
    if missing:
        raise OptionError(f"a sweep needs --{', --'.join(missing)} (or --demo for the bundled organism)")
    scores, source = sgm_jax.load_scores(args.scores)
    samples = load_samples(args)
    require_labels(samples, "`sgm-jax sweep`")
    model, processor = load(args)
    judge, neutral = judge_and_neutral(args, model, processor)
    defined = {spec.split("=", 1)[0]: spec for spec in args.sites}
    specs = list(defined.values()) + [s.sites for s in settings if s.sites not in defined]
    groups = site_groups(model, scores, list(dict.fromkeys(specs)))
    return run_sweep(
        model,
        processor,
        samples,
        neutral,
        judge,
        scores,
        settings,
        groups,
        args.out,
        options=options,
        source=source,
        progress=not args.quiet,
        info={"title": args.model, "model": args.model, "data": args.data, "scores": args.scores},
    )


def _report(summary, out: str) -> None:
    per_s = summary["settings_per_s"]
    speed = f", {per_s:.2f} settings/s, {summary['compiles']} compiles" if per_s else ""
    print(f"{summary['settings']} settings ({summary['measured_now']} measured now{speed})")
    for name, front in summary["fronts"].items():
        if front:
            ends = " ... ".join(
                f"{r['key']} (harmful {r['harmful_rate']:.1%}, {name} {r[name]:.3f})" for r in (front[0], front[-1])
            )
            print(f"front of harmful rate vs {name}: {len(front)} settings, from {ends}")
    print(f"sweep.csv, pareto.png and sweep.json in {out}")


_DEFAULTS = {
    "method": ["aura"],
    "threshold": [0.5],
    "strength": [1.0],
    "k": [100],
    "alpha": [0.5],
    "sites": ["sgm"],
}


def _sweep_options(p) -> None:
    p.add_argument(
        "--demo",
        action="store_true",
        help="sweep the bundled model organism: its data, scores at the decoder's, vision tower's and "
        "projector's sites, and a default grid of 214 settings (unless --grid or grid options are given)",
    )
    model_options(p, required=False)
    p.add_argument("--scores", help="the expert scores (sgm-jax score) the settings are made from")
    evaluation_data_options(p, required=False)
    g = p.add_argument_group("the grid")
    g.add_argument(
        "--method",
        nargs="+",
        choices=["aura", "damp", "det0"],
        default=_DEFAULTS["method"],
        help="methods (default: aura)",
    )
    g.add_argument(
        "--threshold",
        nargs="+",
        type=real(0, 1),
        default=_DEFAULTS["threshold"],
        help="AurA's AUROC thresholds (default: 0.5)",
    )
    g.add_argument(
        "--strength",
        nargs="+",
        type=real(0),
        default=_DEFAULTS["strength"],
        help="strengths of AurA and Damp: alpha -> 1 - s (1 - alpha) (default: 1)",
    )
    g.add_argument(
        "--k",
        nargs="+",
        type=whole(0),
        default=_DEFAULTS["k"],
        help="Damp's and Det0's number of top neurons per site group (default: 100)",
    )
    g.add_argument(
        "--alpha", nargs="+", type=real(0), default=_DEFAULTS["alpha"], help="Damp's fixed gate (default: 0.5)"
    )
    g.add_argument(
        "--sites",
        nargs="+",
        default=_DEFAULTS["sites"],
        metavar="GROUP",
        help="site groups (default: sgm); NAME=PATTERN[,PATTERN...] defines one",
    )
    g.add_argument(
        "--grid",
        metavar="FILE",
        help="a list of settings instead (JSONL or CSV: method, threshold, strength, k, alpha, sites)",
    )
    p.add_argument("--max-new-tokens", type=whole(1), default=24, help="most tokens per answer (default: 24)")
    p.add_argument("--batch-size", type=whole(1), default=16, help="prompts per batch (default: 16)")
    p.add_argument(
        "--chunk-size",
        type=whole(1),
        default=16,
        help="settings per compiled call; a batch runs batch-size x chunk-size rows (default: 16)",
    )
    p.add_argument("--n-boot", type=whole(1), default=1000, help="bootstrap draws of the 95%% interval (1000)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default: 0)")
    distributed_options(p)
    p.add_argument("--out", required=True, help="output folder (a rerun resumes in it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


COMMANDS = (Command("sweep", cmd_sweep, _sweep_options),)
