"""Command-line option types that check their range when parsed, and a parser whose mistakes are one line.

A value out of range is refused before anything is loaded or written, naming the option and the value.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable


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
