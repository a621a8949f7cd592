"""How a failure of the ``deepframe`` command ends: one line and an exit status.

Every failure ends as one line on stderr, ``deepframe COMMAND: error: WHAT``,
and an exit status: :data:`EXIT_USAGE` (2) for bad input (arguments, files,
settings, a request larger than the memory budget), :data:`EXIT_FAILURE` (1)
for a failure while working (a diverged run, an I/O error, an internal error),
:data:`EXIT_INTERRUPTED` (130) when interrupted. ``--debug`` (or the
environment variable :data:`DEBUG_ENV` set to 1) lets the exception through
with its traceback, for bug reports.

Standard library only: this module is imported by ``deepframe --help``.
"""

from __future__ import annotations

__all__ = [
    "DEBUG_ENV",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "CommandError",
]

#: Environment variable that turns on ``--debug`` (tracebacks) for every command.
DEBUG_ENV = "DEEPFRAME_DEBUG"
#: Exit statuses.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(Exception):
    """A user-facing error: one line, and the exit status it ends with.

    Parameters
    ----------
    message : str
        What was wrong and what to do about it.
    code : int
        The exit status (default :data:`EXIT_USAGE`, bad input).
    """

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(exc: BaseException) -> tuple[int, str]:
    """Exit status and one-line message of an exception that reached the command line."""
    if isinstance(exc, CommandError):
        return exc.code, _one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        code = EXIT_USAGE if isinstance(exc, (FileNotFoundError, PermissionError)) else 1
        return code, _one_line(f"{exc.strerror}{where}")
    if isinstance(exc, (FileNotFoundError, ValueError)):  # incl. ArchitectureError, budgets
        return EXIT_USAGE, _one_line(str(exc))
    if isinstance(exc, FloatingPointError):
        return EXIT_FAILURE, _one_line(f"{exc}: lower --lr, or check the data")
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return EXIT_FAILURE, _one_line(
            f"ran out of memory ({first[:160]}): lower --batch-size, use a smaller architecture, "
            "or a machine with more memory"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return EXIT_FAILURE, _one_line(
        f"internal error: {type(exc).__name__}: {first[:300]} (rerun with --debug for the "
        "traceback, and please report it)"
    )
