"""A sub-command as data: its name, the function that runs it (whose docstring is its help: the first paragraph
for `sgm-jax --help`, the rest for `sgm-jax NAME --help`) and the function that adds its options."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    run: Callable[[argparse.Namespace], None]
    options: Callable[[argparse.ArgumentParser], None] | None = None

    def add_to(self, subparsers) -> None:
        summary, _, description = inspect.getdoc(self.run).partition("\n\n")
        summary = " ".join(summary.split())
        parser = subparsers.add_parser(self.name, help=summary, description=description or summary)
        if self.options is not None:
            self.options(parser)
        parser.set_defaults(func=self.run)


@dataclasses.dataclass(frozen=True)
class Group:
    """Commands under one name (`sgm-jax sae train`, `sgm-jax sae annotate`)."""

    name: str
    help: str
    commands: tuple[Command, ...]

    def add_to(self, subparsers) -> None:
        parser = subparsers.add_parser(self.name, help=self.help, description=self.help)
        nested = parser.add_subparsers(dest=f"{self.name}_command", required=True)
        for command in self.commands:
            command.add_to(nested)
