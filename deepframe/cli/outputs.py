"""Checks of the files and folders a command will write, made before any work; run locks.

An output is never one of the command's inputs, never a file of a run
(checkpoint, log, results), never replaced without ``--force`` (a file), never
anything but a regular file (a device, FIFO or socket is refused even with
``--force``) and must lie in a writable folder; a run folder is a new or empty
folder or an earlier run's. A failed check is a
:class:`~deepframe.cli.errors.CommandError` naming the option and the path.

:func:`_run_lock` holds the lock of a run folder while a command writes it
(:func:`deepframe._io.folder_lock`); a second writer is refused, naming the
process that holds it. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import CommandError
from .runtime import _say

#: The files a run keeps (``deepframe train``: checkpoint and log; ``deepframe
#: reproduce``: per model and for the whole run), and what each is. An output onto
#: one of them, in a run's folder, is refused even with ``--force``.
RUN_FILES = {
    "checkpoint.pt": "the checkpoint",
    "log.jsonl": "the training log",
    "model.pt": "the weights",
    "result.json": "the results",
    "measure.json": "the measurements",
    "runs.json": "the record of runs",
    "results.json": "the results",
    "report.md": "the report",
}

#: Entries whose presence makes a folder a run's: of ``train``, of a reproduction,
#: of one of its models.
TRAIN_MARKERS = ("checkpoint.pt", "log.jsonl")
REPRODUCE_MARKERS = ("models", "runs.json", "results.json", "report.md")
_RUN_MARKERS = (*TRAIN_MARKERS, "model.pt", "result.json", "models", "runs.json")

#: Suffixes of files an output never replaces: checkpoints and logs.
_PROTECTED_SUFFIXES = {".pt": "a PyTorch file", ".pth": "a PyTorch file", ".jsonl": "a log"}
#: First bytes of PyTorch files (zip archive, legacy pickle).
_PYTORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05")


def _kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (or a link to one); None when it is
    one or does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing (or under a file: the folder checks say so)
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
        return None
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists."""
    path = path.absolute()
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path(path.anchor)


def _check_writable(path: Path, option: str) -> None:
    """Refuse a destination whose nearest existing folder is not a writable folder."""
    anchor = _existing_ancestor(path.parent)
    if not anchor.is_dir():
        raise CommandError(f"{option} {path}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: cannot write in {anchor} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (links followed)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.absolute() == b.absolute()


def _is_run_folder(folder: Path, markers=_RUN_MARKERS) -> bool:
    return any((folder / name).exists() for name in markers)


def _run_file(path: Path) -> str | None:
    """What ``path`` is to a run (``"the training log of the run in R"``), or None."""
    what = RUN_FILES.get(path.name)
    if what is None or not _is_run_folder(path.parent):
        return None
    return f"{what} of the run in {path.parent}"


def _protected(path: Path) -> str | None:
    """Why an existing ``path`` is never replaced by a result (a checkpoint, a log)."""
    what = _PROTECTED_SUFFIXES.get(path.suffix.lower())
    if what is not None:
        return what
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if any(head.startswith(magic) for magic in _PYTORCH_MAGIC):
        return "a PyTorch file (a checkpoint?)"
    return None


def _check_output_file(path: Path, option: str, *, inputs=(), force: bool = False) -> Path:
    """An output file: never an input, a run's file, a checkpoint or anything but a regular
    file; not replaced without ``--force``. Returns the path to write: a symbolic link to
    a regular file is followed (its target is replaced, the link kept)."""
    for source in inputs:
        if _same_file(path, Path(source)):
            raise CommandError(
                f"{option} {path} is the input {source}: write the result to another file "
                "(nothing was changed)"
            )
    kind = _kind(path)
    if kind == "a folder":
        raise CommandError(f"{option} {path} is a folder: give a file name, e.g. {path / 'x'}")
    if kind is not None:
        raise CommandError(
            f"{option} {path} is {kind}, not a regular file: a result is written as a new file "
            f"renamed over the old one, which would replace {kind.split(' (')[0]} by a file, so "
            "it is refused even with --force; give a file name"
        )
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    run_file = _run_file(target)
    if run_file is not None:
        raise CommandError(
            f"{option} {path} is {run_file}: write the result to another file, even with "
            "--force (nothing was changed)"
        )
    if target.exists():
        protected = _protected(target)
        if protected is not None:
            raise CommandError(
                f"{option} {path} exists and is {protected}: results never replace one, even "
                "with --force; choose another file"
            )
    if target.exists() and not force:
        raise CommandError(
            f"{option} {path} exists (an earlier result?): pass --force to replace it, or "
            "choose another file"
        )
    _check_writable(target, option)
    return target


def _check_output_folder(
    path: Path,
    option: str,
    names: tuple[str, ...],
    markers: tuple[str, ...] = (),
    run: str = "a run",
) -> None:
    """An output folder: a folder (or new), empty or ``run`` (one of ``markers`` in it), its
    result files ``names`` regular files, writable."""
    from .._io import LOCK_NAME

    kind = _kind(path)
    if kind is not None and kind != "a folder":
        raise CommandError(
            f"{option} {path} is {kind}: this command writes a folder"
            + (f" ({', '.join(names)})" if names else "")
            + "; give a folder name"
        )
    if path.exists() and not path.is_dir():
        inside = f" ({', '.join(names)})" if names else ""
        raise CommandError(
            f"{option} {path} is a file: this command writes a folder{inside}; give a folder name"
        )
    for name in names:
        kind = _kind(path / name)
        if kind is not None:
            expected = "a file" if kind == "a folder" else "a regular file"
            raise CommandError(f"{option} {path}: {path / name} is {kind}, expected {expected}")
    if not path.is_dir():
        _check_writable(path / "x", option)
        return
    if markers:
        try:
            entries = sorted(os.listdir(path))
        except OSError as exc:
            raise CommandError(f"{option} {path}: cannot list it ({exc.strerror})") from None
        others = [e for e in entries if e != LOCK_NAME and not _is_temporary(e)]
        if others and not any(name in entries for name in markers):
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            raise CommandError(
                f"{option} {path} is a folder that holds {len(others)} other entr"
                f"{'y' if len(others) == 1 else 'ies'} ({shown}) and is not {run} (it has "
                f"none of {', '.join(markers)}): give a new or empty folder, or {run}'s"
            )
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: cannot write in it (permission denied)")


def _is_temporary(name: str) -> bool:
    """A temporary file of :func:`deepframe._io.atomic_write` left by a killed process."""
    return name.startswith(".") and name.endswith(".tmp")


def _rank0() -> bool:
    """This process is rank 0 of a ``torchrun`` job, or not under ``torchrun`` (it writes)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def _run_lock(args, folder: Path, option: str) -> Iterator[None]:
    """Hold the lock of the run folder ``folder`` (``--out``) while the command writes it.

    A folder another process holds, or one inside a folder another process holds
    (a model folder of a running reproduction), is refused in one line naming that
    process; a lock left by a killed process is taken over (a status line says whose).
    Under ``torchrun`` only rank 0 (the writer) locks.
    """
    from .._io import LOCK_NAME, FolderInUseError, _describe_holder, folder_lock, folder_lock_holder

    if not _rank0():
        yield
        return
    for parent in Path(os.path.abspath(folder)).parents:  # inside a folder being written
        holder = folder_lock_holder(parent) if (parent / LOCK_NAME).exists() else None
        if holder is not None:
            raise CommandError(
                f"{option} {folder} lies inside {parent}, which is in use by "
                f"{_describe_holder(holder)}: wait for it to end, or use another {option}"
            )
    with contextlib.ExitStack() as stack:
        try:
            lock = stack.enter_context(folder_lock(folder, args.command_line))
        except FolderInUseError as exc:
            raise CommandError(
                f"{option} {exc}: wait for it to end (or stop it), or use another {option}"
            ) from None
        if lock.taken_over is not None:
            _say(
                args,
                f"took over the lock of {folder} left by {lock.describe_taken_over()}, which "
                "ended without releasing it",
            )
        if not lock.locked:
            _say(
                args,
                f"cannot lock {folder}: {lock.reason}; make sure no other deepframe command "
                "writes to it meanwhile",
            )
        yield


def _check_not_being_written(folder: Path, what: str) -> None:
    """Refuse to read ``what`` (in ``folder``) while another command holds the folder's lock."""
    from .._io import _describe_holder, folder_lock_holder

    holder = folder_lock_holder(folder)
    if holder is not None:
        raise CommandError(
            f"{what} is being written by {_describe_holder(holder)}: run this when that "
            "command has ended"
        )


#: The options whose value names a file the command reads, by their ``args`` attribute.
_INPUT_FILES = {
    "arch": "ARCH",
    "checkpoint": "CHECKPOINT",
    "weights": "--weights",
}


def _check_inputs(args) -> None:
    """Refuse an input file that is a FIFO, a device or a socket, before any work: reading
    one would block forever or never end (a FIFO, ``/dev/zero``)."""
    for attribute, option in _INPUT_FILES.items():
        value = getattr(args, attribute, None)
        if not isinstance(value, str) or not value:
            continue
        if attribute == "checkpoint" and getattr(args, "command", "") == "metrics":
            option = "--checkpoint"
        kind = _kind(Path(value))
        if kind is not None and kind != "a folder" and not kind.startswith("a broken"):
            raise CommandError(f"{option} {value} is {kind}, not a file: give a file")
    source = getattr(args, "from_torch", None)
    if isinstance(source, str) and ":" in source:
        module = source.rsplit(":", 1)[0]
        if module.endswith(".py"):
            kind = _kind(Path(module))
            if kind is not None and kind != "a folder" and not kind.startswith("a broken"):
                raise CommandError(f"--from-torch {module} is {kind}, not a file: give a file")
