"""The `sgm-jax` command: one module per group of commands, each listing its `COMMANDS` (`cli.command`).

Building the parser loads no jax (its choices come from `sgm_jax.runtime.choices`): each command imports its work
when it runs, so `--help` and a usage mistake answer at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from sgm_jax.cli import evaluate, experts, pipeline, steering, sweep
from sgm_jax.cli.common import is_writer, prepare
from sgm_jax.cli.options import OneLineParser
from sgm_jax.runtime.errors import user_message


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sgm-jax", description="Neuron-level safety interventions (SGM) for multimodal LLMs in JAX."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error (also: SGM_JAX_DEBUG=1)"
    )
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        help="where compiled programs are kept for the next run, or 'off' (also: SGM_JAX_COMPILE_CACHE; "
        "default: ~/.cache/sgm_jax/xla)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (pipeline, evaluate, steering, experts, sweep):
        for command in module.COMMANDS:
            command.add_to(sub)
    return parser


def run(argv: list[str] | None = None) -> None:
    """Run one command, letting its errors propagate (for Python callers; `main` is the command line's)."""
    args = build_parser().parse_args(argv)
    prepare(args)
    args.func(args)


def _report_compiles(args, compiled) -> None:
    """Where a command's time to first result went: its programs compiled, and those the cache supplied (on
    stderr, unless --quiet; process 0 of a job only)."""
    if getattr(args, "quiet", False) or not (compiled.count or compiled.cached) or not is_writer():
        return
    cached = f", {compiled.cached} loaded from the compile cache" if compiled.cached else ""
    which = f" ({compiled.summary()})" if compiled.count else ""
    print(
        f"sgm-jax {args.command}: {compiled.count} programs compiled in {compiled.seconds:.1f} s{which}{cached}",
        file=sys.stderr,
    )


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

    def unraisable(report) -> None:
        # An interrupt that lands in a finalizer or a garbage-collection callback (jax has one) cannot propagate:
        # Python would print its traceback. It is recorded above and ends the command with 130 all the same.
        if not isinstance(report.exc_value, KeyboardInterrupt):
            previous_hook(report)

    previous_hook = sys.unraisablehook
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupted)
        sys.unraisablehook = unraisable
    try:
        prepare(args)
        from sgm_jax.runtime.compiles import count_compiles  # after parsing: `--help` loads no jax

        with count_compiles() as compiled:
            args.func(args)
        if interrupts:
            raise KeyboardInterrupt
        _report_compiles(args, compiled)
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
        distributed = sys.modules.get("sgm_jax.runtime.distributed")  # only a loaded one raises ProcessError
        if distributed is not None and isinstance(error, distributed.ProcessError):
            distributed.abandon(1)
        raise SystemExit(1) from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook
