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
import shlex
import signal
import sys
import threading
from collections.abc import Iterator

from .. import __version__
from . import attack, describe, metrics, reproduce, train
from .errors import (
    DEBUG_ENV,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    _message,
)
from .options import DEBUG_HELP, _Formatter, _Parser
from .outputs import _check_inputs
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


def _machine_memory(at_least: int) -> int | None:
    """Bytes of memory of this machine (None: unknown): its RAM, or its largest GPU's when
    the RAM is less than ``at_least`` and a GPU has more (PyTorch is imported only then)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None
    if ram >= at_least:
        return ram
    import torch

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            ram = max(ram, torch.cuda.get_device_properties(i).total_memory)
    return ram


def _check_budget(budget: int, source: str) -> None:
    """Refuse a memory budget above what this machine has: the estimates checked against it
    could not keep a request from exhausting the memory."""
    from .._io import format_bytes

    machine = _machine_memory(budget)
    if machine is not None and budget > machine:
        raise CommandError(
            f"the memory budget {source} ({format_bytes(budget)}) is more than this machine "
            f"has ({format_bytes(machine)}): requests estimated under it could still exhaust "
            f"the memory; give at most {max(1, machine // 1024**3)}G"
        )


@contextlib.contextmanager
def _memory_budget(args) -> Iterator[None]:
    """Apply ``--memory-budget`` to every library call of this command, then restore.

    A budget (``--memory-budget`` or ``DEEPFRAME_MEMORY_BUDGET``) above this machine's
    memory is refused before any work.
    """
    from .._io import format_bytes, parse_size

    name = "DEEPFRAME_MEMORY_BUDGET"
    budget = getattr(args, "memory_budget", None)
    if budget is None:
        text = os.environ.get(name, "").strip()
        try:
            from_env = parse_size(text) if text else None
        except ValueError:  # the library names the variable and why
            from_env = None
        if from_env is not None:
            _check_budget(from_env, f"{name}={text}")
        yield
        return
    _check_budget(budget, "--memory-budget")
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


#: Signals that end a command like Ctrl-C (SIGINT) does: cleanly, its run resumable.
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does, for the command's duration.

    Without this they would end the process at once: no ``finally`` would run (the
    run's lock, a temporary file), and no "interrupted" line would be printed. A signal
    the process was started with ignored (``nohup``: SIGHUP) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal ignored by whoever started us stays ignored (``nohup`` ignores SIGHUP)
    previous = {
        s: signal.signal(s, _interrupt)
        for s in _STOP_SIGNALS
        if signal.getsignal(s) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 success, 1 failure, 2 bad input)."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(words)
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
    args.command_line = shlex.join(["deepframe", *words])  # as a run's lock records it
    try:
        with _stop_signals_interrupt(), _memory_budget(args):
            _check_inputs(args)
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
