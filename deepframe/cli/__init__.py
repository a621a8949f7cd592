"""The ``deepframe`` command (also ``python -m deepframe``).

Subcommands: ``describe``, ``metrics``, ``train``, ``attack``, ``reproduce``.
An architecture argument is a builder spec (``resnet:blocks_per_stage=1``,
``chain:input_shape=1x8x8,widths=8x16``) or a node-link JSON file. The user's
guide is docs/cli.md.

The package imports only the standard library at import time: PyTorch and
deepframe's torch modules are imported inside the commands, so ``deepframe
--help``, ``--version`` and argument errors answer without importing torch.

==================  ==========================================================
:mod:`.app`         :func:`build_parser` (assembles the commands) and :func:`main`
:mod:`.describe`    ``deepframe describe``
:mod:`.metrics`     ``deepframe metrics`` and :func:`~.metrics.format_metrics`
:mod:`.train`       ``deepframe train``
:mod:`.attack`      ``deepframe attack``
:mod:`.reproduce`   ``deepframe reproduce``
:mod:`.arguments`   the value types of options (``--lr``, ``--eps``, ...)
:mod:`.options`     the parser classes and the options several commands share
:mod:`.outputs`     checks of output files and folders, before any work; run locks
:mod:`.errors`      :class:`CommandError`, exit statuses, one-line messages
:mod:`.runtime`     status lines, the device, reading an architecture
:mod:`.graph_files` writing a graph as node-link JSON, GraphML or DOT
==================  ==========================================================

Errors. Every failure ends as one line on stderr, ``deepframe COMMAND:
error: WHAT``, and an exit status: 2 for bad input (arguments, files,
settings, a request larger than the memory budget), 1 for a failure while
working (a diverged run, an I/O error, an internal error), 130 when
interrupted. ``--debug`` (or the environment variable ``DEEPFRAME_DEBUG=1``)
lets the exception through with its traceback, for bug reports.
"""

from __future__ import annotations

from .app import build_parser, main
from .errors import DEBUG_ENV, CommandError

__all__ = ["main", "build_parser", "CommandError", "DEBUG_ENV"]
