"""What the `sgm-jax` commands share when they run: the model loaded as the options say (sharded, gated, with its
images resized), the samples read in any known format, the judge, the defenses' options, and the process's place in
a job over several hosts. Each loads its work on first use, so building the parser loads no jax."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from sgm_jax.runtime.errors import OptionError

if TYPE_CHECKING:
    from sgm_jax.data.samples import Sample


def image_options(args) -> dict[str, bool]:
    """What --skip-missing and --allow-outside-images ask of a reader."""
    return {"skip_missing_images": args.skip_missing, "allow_outside_images": args.allow_outside_images}


def read_samples(args, dest: str = "data") -> list[Sample]:
    """The samples of the file (or each file) in `args.<dest>`, read as `add_data_options`' options say; every file
    is checked whole before any work starts."""
    from sgm_jax.data.readers.dispatch import read_dataset

    paths = getattr(args, dest)
    samples = []
    for path in [paths] if isinstance(paths, str) else paths:
        samples += read_dataset(path, args.format, split=args.split, **image_options(args))
    return checked_for_raw_text(args, samples)


def checked_for_raw_text(args, samples: list[Sample]) -> list[Sample]:
    """With --raw-text, a sample with an image is refused by its row before anything loads."""
    if getattr(args, "raw_text", False):
        from sgm_jax.data.encode import RawText

        for sample in samples:
            RawText.check(sample)
    return samples


def parse_mesh(text: str | None):
    if not text:
        return None
    from sgm_jax.weights.sharding import make_mesh

    try:
        data, fsdp, tensor = (int(x) for x in text.split(","))
    except ValueError:
        raise OptionError(f"--mesh takes DATA,FSDP,TENSOR sizes such as 1,4,2 (one may be -1), got {text!r}") from None
    return make_mesh(data, fsdp, tensor)


def load(args, *, text: bool = True, warm=None):
    """The --model checkpoint as `(model, processor)`; with `text` (every command but `sites`), one without
    tokenizer files is refused before it loads. `warm(model, processor)` compiles while the weights load
    (`sgm_jax.load_model`), given the processor as the command will use it."""
    import sgm_jax
    from sgm_jax.weights.loading import require_tokenizer

    if text:
        require_tokenizer(args.model)
    warming = None if warm is None else (lambda model, processor: warm(model, _as_asked(args, processor)))
    model, processor = sgm_jax.load_model(args.model, dtype=args.dtype, mesh=parse_mesh(args.mesh), warm=warming)
    return model, _as_asked(args, processor)


def _as_asked(args, processor):
    """The processor with the command's --image-size and --raw-text."""
    from sgm_jax.data.encode import RawText, SquareImages

    if getattr(args, "image_size", None) is not None and processor is not None:
        processor = SquareImages(processor, args.image_size)
    if getattr(args, "raw_text", False) and processor is not None:
        processor = RawText(processor)
    return processor


def load_gated(args):
    """The model under the --intervention files when given (a reader that must see the model it will steer),
    else as `load` gives it."""
    intervention = read_interventions(args)
    model, processor = load(args)
    if intervention is None:
        return model, processor
    import sgm_jax

    return sgm_jax.intervene(model, intervention), processor


def read_interventions(args):
    """The --intervention files, each at --strength, as one intervention (their alphas multiply); None without any.


    Loaded before the model, so a wrong file is refused at once."""
    import sgm_jax

    if not args.intervention:
        return None
    parts = [sgm_jax.load_intervention(path).with_strength(args.strength) for path in args.intervention]
    return parts[0] if len(parts) == 1 else sgm_jax.compose(*parts)


def load_samples(args):
    """--data as every command reads it, then the --mcq items, then the first --limit."""
    from sgm_jax.data.readers import read_dataset

    samples = read_samples(args)
    if args.mcq:
        samples += checked_for_raw_text(args, read_dataset(args.mcq, None, **image_options(args)))
    return samples[: args.limit] if args.limit else samples


def read_defense_options(args):
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


def judge_and_neutral(args, model, processor):
    """The --judge (the self judge reads the model) and the --neutral texts."""
    from sgm_jax.judges import make_judge

    judge = make_judge(args.judge, **({"model": model, "processor": processor} if args.judge == "self" else {}))
    neutral = []
    if args.neutral:
        with open(args.neutral, encoding="utf-8") as f:
            neutral = [line.strip() for line in f if line.strip()]
    return judge, neutral


def eval_inputs(args):
    """What evaluate and compare share: samples, intervention, model, judge, neutral texts, options."""
    import sgm_jax
    from sgm_jax.data.samples import require_labels
    from sgm_jax.evaluate.answers import warm_answers
    from sgm_jax.evaluate.runner import EvalOptions

    samples = load_samples(args)
    require_labels(samples, f"`sgm-jax {args.command}`")
    intervention = read_interventions(args)
    scores = sgm_jax.load_scores(args.scores)[0] if getattr(args, "scores", None) else None
    decoding = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed}

    def warm(shapes, processor):  # the plain and the intervened model's generate programs, while weights load
        models = [shapes] + ([sgm_jax.intervene(shapes, intervention)] if intervention is not None else [])
        warm_answers(models, processor, samples, batch_size=args.batch_size, **decoding)

    model, processor = load(args, warm=warm)
    judge, neutral = judge_and_neutral(args, model, processor)
    options = EvalOptions(**decoding, batch_size=args.batch_size, circular=args.circular, progress=not args.quiet)
    return samples, intervention, scores, model, processor, judge, neutral, options


def is_writer() -> bool:
    from sgm_jax.runtime import distributed

    return distributed.cluster().writer


def join_job(args) -> None:
    """Join the job the --coordinator options (or the environment, or a TPU pod slice) describe."""
    if hasattr(args, "coordinator"):
        from sgm_jax.runtime import distributed

        distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def prepare(args) -> None:
    """What every command does before its work: keep compiled programs for the next run (--compile-cache), and
    join the job of several processes it belongs to."""
    from sgm_jax.runtime import compile_cache

    if args.compile_cache:
        os.environ[compile_cache.ENV] = args.compile_cache  # what the command's own loads then see
    compile_cache.enable()
    join_job(args)
