"""Small file helpers shared by the package: atomic writes, JSON files, hashes, sizes, locks.

Standard library only (the command line imports it before PyTorch).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LOCK_NAME",
    "FolderInUseError",
    "FolderLock",
    "atomic_write",
    "file_hash",
    "folder_lock",
    "folder_lock_holder",
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
    truncated mix. A write that fails (a full disk, a read-only file system,
    a file size limit) raises the OSError naming ``path``, not the temporary
    file, also when ``write`` (``torch.save``, say) turned it into another
    exception; the temporary file is removed.
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
        except OSError as exc:  # a read-only file system, a folder made unwritable, ...
            raise _naming(exc, path) from exc
    failures: list[OSError] = []
    try:
        with os.fdopen(fd, "wb") as f:
            write(_Recording(f, failures))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _naming(exc, path) from exc
    except BaseException as exc:
        _remove_quietly(tmp)
        if failures:  # e.g. torch.save's RuntimeError around a failed write: the OSError
            raise _naming(failures[-1], path) from exc
        raise
    _fsync_directory(path.parent)


class _Recording:
    """A binary file that remembers the OSError of a failed write (a full disk, say).

    Writers such as ``torch.save`` turn a failed ``write`` into their own
    exception without the errno; :func:`atomic_write` reports the OSError.
    """

    def __init__(self, f, failures: list[OSError]):
        self._f, self._failures = f, failures

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self._failures.append(exc)
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` naming ``path`` (not the temporary file) as the file that could not be written."""
    if exc.errno is None:
        return exc
    named = OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    return named  # OSError(errno, ...) is the errno's subclass (PermissionError, ...)


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


# --------------------------------------------------------------------------- folder locks

#: The lock file of a folder that a command writes (:func:`folder_lock`).
LOCK_NAME = ".deepframe.lock"

#: errno values of a file system that does not lock (NFS without lockd, some FUSE mounts).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


def _describe_holder(holder: dict | None) -> str:
    """``pid 123 on host (deepframe train ..., since 2026-...)``, or what is known of it."""
    if not holder:
        return "another process (it has not recorded itself)"
    where = f"pid {holder.get('pid')}"
    if holder.get("host") and holder.get("host") != socket.gethostname():
        where += f" on {holder['host']}"
    extra = [str(holder["command"])] if holder.get("command") else []
    if holder.get("started"):
        extra.append(f"since {holder['started']}")
    return where + (f" ({', '.join(extra)})" if extra else "")


class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder (:func:`folder_lock`).

    Attributes
    ----------
    folder : Path
        The folder.
    holder : dict or None
        What the holder recorded: ``pid``, ``host``, ``command``, ``started``.
    """

    def __init__(self, folder: Path, holder: dict | None):
        self.folder, self.holder = Path(folder), holder
        super().__init__(f"{folder} is in use by {_describe_holder(holder)}")


@dataclass
class FolderLock:
    """A held folder lock: what :func:`folder_lock` yields.

    Attributes
    ----------
    folder : Path
        The locked folder.
    locked : bool
        False where the file system cannot lock (``reason`` says why); the
        command then runs unprotected.
    taken_over : dict or None
        The record of an earlier holder that ended without releasing the lock
        (killed): its ``pid``, ``host``, ``command``, ``started``.
    reason : str
        Why ``locked`` is False (empty otherwise).
    """

    folder: Path
    locked: bool
    taken_over: dict | None = None
    reason: str = ""

    def describe_taken_over(self) -> str:
        """The earlier holder, as the refusal of a second writer names it."""
        return _describe_holder(self.taken_over)


def _read_record(fd: int) -> dict | None:
    """The holder's record in an open lock file (None: empty or unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {"command": text[:200]}
    return record if isinstance(record, dict) else None


def _try_flock(fd: int, mode: int) -> bool:
    """``flock(fd, mode | LOCK_NB)``: True if taken, False if another process holds it.

    Raises OSError (errno in ``_NO_LOCKS``) where the file system cannot lock.
    """
    import fcntl

    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def folder_lock_holder(folder: str | Path) -> dict | None:
    """Who holds the lock of ``folder`` now: its record, or None when nobody does.

    Creates nothing: a folder without a lock file is not held. ``{}`` when a
    holder has not written its record yet.
    """
    path = Path(folder) / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # no locks on this platform (Windows)
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _held_record(fd)
    except OSError:  # the file system cannot lock: nobody can hold it
        return None
    finally:
        os.close(fd)


def _held_record(fd: int) -> dict:
    """The record of a holder that has just taken the lock may not be written yet: wait a little."""
    for _ in range(20):
        record = _read_record(fd)
        if record:
            return record
        time.sleep(0.05)
    return {}


def _wait_for_record(fd: int, mode: int) -> tuple[bool, dict]:
    """The lock is held: ``(False, record)`` once the holder's record is there, or
    ``(True, {})`` if the lock came free meanwhile (a holder that had just taken it
    to release it, or :func:`folder_lock_holder` looking)."""
    for _ in range(20):
        record = _read_record(fd)
        if record:
            return False, record
        time.sleep(0.05)
        if _try_flock(fd, mode):
            return True, {}
    return False, {}


@contextlib.contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[FolderLock]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block.

    The lock is ``fcntl.flock`` on ``folder/.deepframe.lock``, which holds the
    holder's pid, host, ``command`` and start time for the refusal of a second
    writer. The kernel releases a flock when its process ends however it ends
    (``kill -9`` and the out-of-memory killer included), so a lock cannot go
    stale and a recycled pid cannot fake a live holder; a lock file that
    still holds a record when its lock is free was left by a process that
    ended without releasing it, and is taken over (:attr:`FolderLock.taken_over`).
    On leaving the block the record is cleared and the file removed; folders
    created for the lock are removed again when nothing else was written in them.

    Where the file system cannot lock (``flock`` fails with ``ENOLCK`` or
    ``EOPNOTSUPP``: some network file systems; or no ``fcntl``: Windows) the
    block runs without a lock (``locked=False`` and the ``reason``).

    Raises
    ------
    FolderInUseError
        Another process holds the lock (the message names it).
    """
    folder = Path(folder)
    created = _make_folders(folder)
    try:
        with _locked(folder, command) as lock:
            yield lock
    finally:
        for made in created:  # innermost first; only what is still empty
            with contextlib.suppress(OSError):
                os.rmdir(made)


def _make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, innermost first."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def _locked(folder: Path, command: str) -> Iterator[FolderLock]:
    try:
        import fcntl
    except ImportError:
        yield FolderLock(folder, False, reason="this platform has no fcntl.flock")
        return
    path = folder / LOCK_NAME
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            taken = _try_flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            empty = os.fstat(fd).st_size == 0
            os.close(fd)
            if empty:  # nothing to keep: the file was made for this lock
                _remove_quietly(path)
            if exc.errno not in _NO_LOCKS:
                raise
            yield FolderLock(folder, False, reason=f"the file system cannot lock ({exc.strerror})")
            return
        if not taken:
            taken, holder = _wait_for_record(fd, fcntl.LOCK_EX)
            if not taken:
                os.close(fd)
                raise FolderInUseError(folder, holder)
        try:  # a releasing holder unlinks the file before unlocking: retry on a new one
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        stale = _read_record(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield FolderLock(folder, True, taken_over=stale)
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # if the unlink fails, the file does not look left behind
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # releases the flock
