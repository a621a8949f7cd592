"""Checks of the files and folders a command will write, made before any work.

An output is never one of the command's inputs, never replaced without
``--force`` (a file) and must lie in a writable folder; a failed check is a
:class:`~deepframe.cli.errors.CommandError` naming the option and the path.
Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CommandError


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


def _check_output_file(path: Path, option: str, *, inputs=(), force: bool = False) -> None:
    """An output file: never an input, never a folder, not replaced without ``--force``."""
    for source in inputs:
        if _same_file(path, Path(source)):
            raise CommandError(
                f"{option} {path} is the input {source}: write the result to another file "
                "(nothing was changed)"
            )
    if path.is_dir():
        raise CommandError(f"{option} {path} is a folder: give a file name, e.g. {path / 'x'}")
    if path.exists() and not force:
        raise CommandError(
            f"{option} {path} exists (an earlier result?): pass --force to replace it, or "
            "choose another file"
        )
    _check_writable(path, option)


def _check_output_folder(path: Path, option: str, names: tuple[str, ...]) -> None:
    """An output folder: not a file, its result files not folders, writable."""
    if path.exists() and not path.is_dir():
        inside = f" ({', '.join(names)})" if names else ""
        raise CommandError(
            f"{option} {path} is a file: this command writes a folder{inside}; give a folder name"
        )
    for name in names:
        if (path / name).is_dir():
            raise CommandError(f"{option} {path}: {path / name} is a folder, expected a file")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CommandError(f"{option} {path}: cannot write in it (permission denied)")
    else:
        _check_writable(path / "x", option)
