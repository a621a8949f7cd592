"""The parser's machinery and the options several commands share.

:class:`_Parser` (one-line errors) and :class:`_Formatter` (defaults in the
help) are the classes of every parser of the command; :func:`add_command`
adds one subcommand with the options every command has (``--debug``); the
``add_*`` functions add an option that two or more commands take with the
same meaning and help (the architecture, ``--from-torch``, ``--device``,
``--input-shape``, ``--memory-budget``). :data:`ARCH_HELP` explains the
architecture syntax (the epilog of ``describe`` and ``metrics``).

Standard library only: ``deepframe --help`` does not import PyTorch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .arguments import _shape, _size
from .errors import DEBUG_ENV, EXIT_USAGE

__all__ = [
    "ARCH_HELP",
    "add_command",
    "add_arch",
    "add_from_torch",
    "add_device",
    "add_input_shape",
    "add_memory_budget",
]

ARCH_HELP = """\
architecture (ARCH):
  a builder spec  NAME[:KEY=VALUE,KEY=VALUE,...]  or a node-link .json file.
  Values: integers, numbers, true/false, tuples written with x (8x16; one
  entry for a one-entry tuple), words (B). Builders and their options:

    chain     input_shape=1x8x8 (C x H x W, or d for vectors), widths=8x16,
              kernel_size=3, strides=1x1 (one per width), dense=true|false
              (default: dense exactly for vector inputs), bias=0.0 (lambda),
              batchnorm=false, merge=edge|input (node-centric form)
    resnet    input_shape=3x32x32, blocks_per_stage=1, widths=16x32x64,
              shortcut=A|B, kernel_size=3, bias=0.0, batchnorm=false,
              skips=true (false: the chain twin without skip edges)
    densenet  input_shape=3x32x32, layers_per_stage=3, widths=16x32x64,
              kernel_size=3, bias=0.0, batchnorm=false

  examples:
    resnet                                   the CIFAR ResNet-8 at 3x32x32
    resnet:blocks_per_stage=2,shortcut=B     ResNet-14 with 1x1 projections
    chain:input_shape=1x8x8,widths=8x16,strides=1x2
    chain:input_shape=64,widths=32x10        a dense network (MLP)
    densenet:input_shape=3x16x16,layers_per_stage=2,widths=8x16
    runs/net.json                            a node-link graph (see --out)

  A file named like a builder is ambiguous: write ./resnet for the file or
  resnet: for the builder. The graph format is in docs/concepts.md; the
  command line in docs/cli.md.
"""

_BUDGET_HELP = (
    "memory a single step may allocate, e.g. 16G or 512M; requests estimated above it are "
    "refused before allocating (default: $DEEPFRAME_MEMORY_BUDGET, else 2G)"
)

#: Help of ``--debug``, an option of the program and of every command.
DEBUG_HELP = f"show the full traceback of an error (also: {DEBUG_ENV}=1)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``deepframe train: error: argument --lr: ...``."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {message} (see {self.prog} --help)\n",
        )


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; appends "(default: ...)" to options with a default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            text += " (default: %(default)s)"
        return text


def _common() -> argparse.ArgumentParser:
    """The options of every command (a parent parser): ``--debug``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,  # so that ``deepframe --debug CMD`` is not overwritten
        help=DEBUG_HELP,
    )
    return common


def add_command(
    subparsers,
    name: str,
    help_text: str,
    func: Callable[[argparse.Namespace], int],
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` that runs ``func(args)``; return its parser.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``add_subparsers`` of the program's parser returned.
    name : str
        The command's name (``deepframe NAME``).
    help_text : str
        One line, lower case, no final period: the command list's entry; its
        capitalised form with a period is the command's description.
    func : callable
        ``func(args) -> exit status``, stored as ``args.func``.
    epilog : str, optional
        Text after the options in ``--help`` (layout kept).
    """
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        epilog=epilog,
        parents=[_common()],
        formatter_class=_Formatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_arch(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    """The positional ``ARCH``: a builder spec or a node-link JSON file."""
    parser.add_argument(
        "arch",
        metavar="ARCH",
        nargs="?" if optional else None,
        default=None,
        help="builder spec (e.g. resnet:blocks_per_stage=1) or node-link .json file; "
        "syntax: deepframe describe --help",
    )


def add_from_torch(parser: argparse.ArgumentParser) -> None:
    """``--from-torch MODULE:FACTORY`` and ``--weights FILE``: a user's PyTorch model."""
    parser.add_argument(
        "--from-torch",
        metavar="MODULE:FACTORY",
        help="a PyTorch model instead of ARCH: a module (or file.py) and the function "
        "that builds it, e.g. mymodels:resnet20; needs --input-shape "
        "(docs/bring-your-own-model.md) (default: none, read ARCH)",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="with --from-torch: its trained weights, a state_dict file (also inside "
        "'state_dict' or 'model', DataParallel's module. prefix removed) (default: the "
        "weights the factory builds)",
    )


def add_input_shape(parser: argparse.ArgumentParser) -> None:
    """``--input-shape CxHxW``: override the architecture's input shape."""
    parser.add_argument(
        "--input-shape",
        type=_shape,
        metavar="CxHxW",
        help="override the input shape, e.g. 3x32x32 (default: the architecture's own); "
        "with --from-torch the model's input shape (3,32,32 also accepted)",
    )


def add_device(parser: argparse.ArgumentParser, what: str) -> None:
    """``--device``: where ``what`` (e.g. "training") runs."""
    parser.add_argument(
        "--device",
        default=None,
        help=f"where {what} runs: cpu, cuda, cuda:N or mps (default: cuda if present, else cpu)",
    )


def add_memory_budget(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget SIZE``: the cap on one step's memory (``DEEPFRAME_MEMORY_BUDGET``)."""
    parser.add_argument("--memory-budget", type=_size, metavar="SIZE", help=_BUDGET_HELP)
