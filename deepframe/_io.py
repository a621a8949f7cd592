"""Small file helpers shared by the package: atomic writes, JSON files, hashes, sizes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "file_hash",
    "format_bytes",
    "json_hash",
    "parse_size",
    "read_json",
    "write_json",
]

_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write via a temporary file in the same folder, fsync, then ``os.replace``.

    A crash at any moment leaves either the old file or the new one, never a
    truncated mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Like mkstemp, but with the mode an ordinary open() gives (0666 minus the umask):
    # mkstemp's 0600 would make checkpoints and figures private to their owner.
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def write_json(path: str | Path, obj: Any, *, indent: int = 1) -> None:
    """Write ``obj`` as indented JSON text (with a final newline), atomically."""
    text = json.dumps(obj, indent=indent) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or None when the file is missing or not JSON (a cache miss)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def json_hash(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``obj`` as canonical JSON (sorted keys).

    Values JSON cannot hold are written as ``str(value)``. A cache key: equal
    objects give equal hashes on every machine.
    """
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def parse_size(text: str | int) -> int:
    """Bytes from ``"16G"``, ``"512M"``, ``"1.5GiB"``, ``"64k"`` or a plain count.

    Units are powers of 1024 (``K``, ``M``, ``G``, ``T``, with or without
    ``iB``/``B``).

    Raises
    ------
    ValueError
        Not a size, or not positive.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        value = float(text)
    else:
        match = re.fullmatch(
            r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I
        )
        if match is None:
            raise ValueError(f"not a size: {text!r}; write e.g. 16G, 512M or a number of bytes")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"a size must be at least one byte, got {text!r}")
    return int(value)


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: three significant digits, binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")
