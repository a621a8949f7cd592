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


#: errno names of a write that failed for want of room or permission on the disk, and
#: what to do about each (the file is named in the message).
_WRITE_FAILURES = {
    "ENOSPC": "free some space or write elsewhere",
    "EDQUOT": "free some space (disk quota) or write elsewhere",
    "EFBIG": "the file system or a limit (ulimit -f) caps the file size; write elsewhere",
    "EROFS": "write elsewhere",
    "EIO": "check the disk",
}


def _os_error(exc: OSError) -> tuple[int, str]:
    """A failed file operation: the path, the reason, what to do."""
    import errno

    name = errno.errorcode.get(exc.errno, "")
    where = f" {exc.filename}" if exc.filename else ""
    if name in _WRITE_FAILURES:
        return EXIT_FAILURE, _one_line(
            f"cannot write{where}: {exc.strerror} ({name}): {_WRITE_FAILURES[name]}; a "
            "training run resumes from its last checkpoint when rerun"
        )
    where = f": {exc.filename}" if exc.filename else ""
    code = EXIT_USAGE if isinstance(exc, (FileNotFoundError, PermissionError)) else EXIT_FAILURE
    return code, _one_line(f"{exc.strerror}{where}")


def _budget_text() -> str:
    """The memory budget in force and where it came from, for an out-of-memory message."""
    import os

    text = os.environ.get("DEEPFRAME_MEMORY_BUDGET", "").strip()
    if not text:
        return "the default memory budget of 2 GiB"
    return f"the memory budget DEEPFRAME_MEMORY_BUDGET={text} (or --memory-budget)"


def _out_of_memory(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return _one_line(
        f"ran out of memory ({first[:160]}) within {_budget_text()}: this machine cannot give "
        "what the budget allows; lower the budget (--memory-budget), --batch-size, use a "
        "smaller architecture, or a machine with more memory"
    )


def _is_allocation_failure(exc: BaseException) -> bool:
    """PyTorch's CPU allocator failing (a RuntimeError, not a MemoryError)."""
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _message(exc: BaseException) -> tuple[int, str]:
    """Exit status and one-line message of an exception that reached the command line."""
    if isinstance(exc, CommandError):
        return exc.code, _one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return _os_error(exc)
    if isinstance(exc, (FileNotFoundError, ValueError)):  # incl. ArchitectureError, budgets
        return EXIT_USAGE, _one_line(str(exc))  # (an estimate over the budget is a ValueError)
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return EXIT_FAILURE, _out_of_memory(exc)
    if _is_allocation_failure(exc):
        return EXIT_FAILURE, _out_of_memory(exc)
    if type(exc).__name__ == "FolderInUseError":
        return EXIT_USAGE, _one_line(str(exc))
    if isinstance(exc, FloatingPointError):
        return EXIT_FAILURE, _one_line(f"{exc}: lower --lr, or check the data")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return EXIT_FAILURE, _one_line(
        f"internal error: {type(exc).__name__}: {first[:300]} (rerun with --debug for the "
        "traceback, and please report it)"
    )
