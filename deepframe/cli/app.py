"""The ``deepframe`` program: :func:`build_parser` assembles the commands, :func:`main` runs one.

Each command module adds its own parser (``add_parser(subparsers)``);
:func:`main` parses, applies ``--memory-budget`` for the command's duration
and turns what the command raises into one line on stderr and an exit
status (:mod:`.errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from .. import __version__
from . import attack, describe, metrics, reproduce, train
from .errors import (
    DEBUG_ENV,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    _message,
)
from .options import DEBUG_HELP, _Formatter, _Parser
from .runtime import _say

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``deepframe --help`` lists them.
COMMANDS = (describe, metrics, train, attack, reproduce)


def build_parser() -> argparse.ArgumentParser:
    """The ``deepframe`` argument parser (no heavy imports).

    Its default ``subcommands`` maps each command's name to its parser (for
    errors reported by the subcommand, and for tests of every option).
    """
    parser = _Parser(
        prog="deepframe",
        description="Global dictionaries, deep pursuit and their geometry. "
        "Guide: docs/cli.md; architectures: deepframe describe --help.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"deepframe {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    parser.set_defaults(subcommands=dict(subparsers.choices))
    return parser


@contextlib.contextmanager
def _memory_budget(args) -> Iterator[None]:
    """Apply ``--memory-budget`` to every library call of this command, then restore."""
    from .._io import format_bytes

    budget = getattr(args, "memory_budget", None)
    if budget is None:
        yield
        return
    name = "DEEPFRAME_MEMORY_BUDGET"
    old = os.environ.get(name)
    os.environ[name] = str(budget)
    try:
        _say(args, f"memory budget {format_bytes(budget)}")
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 success, 1 failure, 2 bad input)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand, whose options they are not
            args.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:  # --help, --version and argument errors
        return int(stop.code or 0) if not isinstance(stop.code, str) else EXIT_USAGE
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    try:
        with _memory_budget(args):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        resumable = args.command in ("train", "reproduce")
        hint = " (rerun the same command to resume)" if resumable else ""
        print(f"\ndeepframe {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `deepframe describe resnet | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
        return EXIT_FAILURE
    except Exception as exc:
        if debug:
            raise
        code, message = _message(exc)
        print(f"deepframe {args.command}: error: {message}", file=sys.stderr)
        return code
