"""What every command module writes to, and how it registers its commands.

Layer: node.cli. The concrete writer is ``node.cli._Out``; the command
modules (federation, keys, match, witness, audit) see it through this
protocol, since they are imported by ``node.cli`` and cannot import it back.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, Protocol, TextIO

__all__ = ["Command", "Output", "describe_subcommands"]


class Output(Protocol):
    """Where a command reports: results on stdout, notes and errors on stderr."""

    stdout: TextIO
    stderr: TextIO

    def print(self, text: str = "") -> None:
        """A line of the command's result."""

    def note(self, text: str) -> None:
        """A line for the operator (stderr)."""

    def json(self, value: Any) -> None:
        """The command's result as one JSON document."""


Command = Callable[..., argparse.ArgumentParser]
"""``build_parser``'s ``command(name, run, help, description)`` factory."""


def describe_subcommands(parser: argparse.ArgumentParser) -> None:
    """Give each sub-command registered with only a one-line ``help`` that line as description.

    Without it ``hashmesh peer list --help`` shows its options but not what it does.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not sub.description and summaries.get(name):
                    sub.description = str(summaries[name])
                describe_subcommands(sub)
