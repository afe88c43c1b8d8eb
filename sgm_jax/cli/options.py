"""The `sgm-jax` parser's parts: option types that check their range when parsed, a parser whose mistakes are one
line, and the option groups several commands share (model, data, interventions, defenses, several processes).

A value out of range is refused before anything is loaded or written, naming the option and the value. Nothing here
loads jax: the choices come from `sgm_jax.runtime.choices`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from sgm_jax.runtime.choices import DTYPE_NAMES, FORMATS, VERDICTS


class OneLineParser(argparse.ArgumentParser):
    """`argparse` with a usage mistake reported as `PROG: error: MESSAGE (see PROG --help)` and exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def real(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False) -> Callable[[str], float]:
    """A finite number in [low, high] (or (low, high] with `open_low`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if open_low else value < low
        if not math.isfinite(value) or too_low or value > high:
            bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {bounds}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def add_data_options(p, help: str, *, flag: str = "--data", required: bool = True, repeat: bool = False) -> None:
    """The samples file (`flag`, repeatable with `repeat`) and how it is read: --format, --split, --skip-missing,
    --allow-outside-images; `read_samples` reads them."""
    p.add_argument(flag, required=required, action="append" if repeat else "store", help=f"{help} (see --format)")
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        help="the format of the samples: native JSONL, an MM-SafetyBench root, an SGM release sheet, a JailBreakV "
        "CSV or a multiple-choice file (default: told from the file)",
    )
    p.add_argument("--split", help="only the samples of this split (default: all)")
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip (and count) samples whose image file is missing instead of stopping",
    )
    p.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="let image paths (absolute, '../' or symbolic links) lead outside the dataset's folder; by "
        "default such a path is refused",
    )


def distributed_options(p) -> None:
    """One job over several processes (hosts of a TPU pod slice): see `sgm_jax.runtime.distributed`."""
    g = p.add_argument_group("several processes (each takes a share of the work; process 0 writes)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (or SGM_JAX_COORDINATOR)")
    g.add_argument(
        "--num-processes", type=whole(1), metavar="N", help="processes in the job (or SGM_JAX_NUM_PROCESSES)"
    )
    g.add_argument(
        "--process-id", type=whole(0), metavar="I", help="this process's index, 0..N-1 (or SGM_JAX_PROCESS_ID)"
    )


def mesh_option(p, help: str) -> None:
    p.add_argument("--mesh", metavar="DATA,FSDP,TENSOR", help=help)


def model_options(p, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="a local Hugging Face checkpoint directory, or a hub id already in the local HF cache "
        "(nothing is downloaded)",
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPE_NAMES), default="float32", help="parameter and compute dtype (default: float32)"
    )
    mesh_option(p, "shard the model over a device mesh of these sizes, e.g. 1,4,2 (default: one device)")


def image_size_option(p) -> None:
    p.add_argument(
        "--image-size",
        type=whole(1),
        metavar="PIXELS",
        help="resize every image to PIXELS x PIXELS before the processor: one canonical resolution (the "
        "recipe's images.canonical_size; a multiple of 28 for Qwen2-VL and of 112 for Qwen2.5-VL, so every "
        "image has one grid and the vision tower runs batched per image or window)",
    )


def raw_text_option(p) -> None:
    p.add_argument(
        "--raw-text",
        action="store_true",
        help="give each prompt to the model as plain text, not through the checkpoint's chat template (the "
        "continuation protocol of RealToxicityPrompts, AurA and Linear-AcT; text-only samples)",
    )


def intervention_options(p, file_help: str, strength_help: str) -> None:
    """--intervention (repeatable) and --strength, as `read_interventions` reads them."""
    p.add_argument("--intervention", action="append", metavar="FILE", help=file_help)
    p.add_argument("--strength", type=real(), default=1.0, help=strength_help)


def sampling_options(p, seed_help: str) -> None:
    p.add_argument("--temperature", type=real(0), default=0.0, help="sampling temperature; 0 is greedy (default: 0)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def output_options(p, out_help: str, quiet_help: str, default: str | None = None) -> None:
    """--out (required unless it has a default) and --quiet, for the commands that show progress."""
    p.add_argument("--out", required=default is None, default=default, help=out_help)
    p.add_argument("--quiet", action="store_true", help=quiet_help)


def evaluation_data_options(p, *, required: bool = True) -> None:
    """The evaluation data and its judge: what evaluate, compare and sweep read (--data is optional where a
    command has a built-in set, as sweep's --demo)."""
    add_data_options(p, "the evaluation set", required=required)
    p.add_argument("--mcq", help="an extra file of multiple-choice items (options + answer) for reasoning accuracy")
    p.add_argument("--neutral", help="a text file of neutral sentences, one per line, for perplexity")
    p.add_argument(
        "--judge",
        default="refusal",
        help="refusal | lexicon:PATH | classifier:DIR | python:MODULE:NAME | chat | self (default: refusal); "
        "python: your own Judge class or function of the answers giving scores in [0, 1] (harmful above 0.5); "
        "chat reads SGM_JAX_JUDGE_BASE_URL, SGM_JAX_JUDGE_MODEL and SGM_JAX_JUDGE_API_KEY",
    )
    p.add_argument("--limit", type=whole(1), help="only the first N samples (a quick look)")
    image_size_option(p)
    raw_text_option(p)


def evaluation_arguments(p, intervention_help: str) -> None:
    """The data, model, judge and generation options evaluate and compare share."""
    model_options(p)
    evaluation_data_options(p)
    intervention_options(p, intervention_help, "scale of each intervention: alpha -> 1 - s (1 - alpha) (default: 1)")
    p.add_argument("--max-new-tokens", type=whole(1), default=64, help="most tokens per answer (default: 64)")
    p.add_argument("--batch-size", type=whole(1), default=8, help="samples per generation batch (default: 8)")
    sampling_options(p, "random seed for sampling and bootstrap (default: 0)")
    p.add_argument(
        "--circular", action="store_true", help="multiple-choice items rotate their options (MMBench CircularEval)"
    )
    output_options(p, "output directory (created; resumed if it holds cached answers)", "no progress bars")


def defense_arguments(p) -> None:
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


def steered_model_options(p) -> None:
    """The model, read under --intervention: a dictionary or SAE that will steer SGM's gated model is read from it."""
    model_options(p)
    intervention_options(
        p,
        "read the model under this intervention (repeatable; alphas multiply): a dictionary or SAE that will "
        "steer SGM's gated model (SGM+DACO) is read from that model",
        "the intervention's strength (default: 1)",
    )
