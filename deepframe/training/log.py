"""What rank 0 writes: the JSON-lines log (one record per epoch) and the checkpoint.

At the start of a run :func:`write_log` rewrites the log with the resumed
history (nothing for a fresh run); after every epoch :func:`save_epoch`
appends the epoch's line (flushed and synced), replaces the checkpoint
atomically (:func:`deepframe.checkpoints.save_checkpoint`) and prints a line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._io import atomic_write
from ..checkpoints import save_checkpoint
from .epoch import Run

__all__ = ["append_log", "save_epoch", "write_log"]


def write_log(path: Path, history: list[dict]) -> None:
    """Replace the log at ``path`` by ``history``, one JSON line per record, atomically."""
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def append_log(path: Path, record: dict) -> None:
    """Append ``record`` to the log at ``path`` as one JSON line, flushed to disk."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a full disk: the message names the log, not a descriptor
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def save_epoch(history: list[dict], run: Run) -> None:
    """Rank 0's end of an epoch: append the log line, replace the checkpoint, print a line."""
    record = history[-1]
    if run.log_path is not None:
        append_log(run.log_path, record)
    if run.checkpoint_path is not None:
        save_checkpoint(
            run.checkpoint_path,
            {
                "epoch": record["epoch"],
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
                "config": run.config,
                "history": history,
                "metadata": None if run.metadata is None else dict(run.metadata),
            },
        )
    if run.progress:
        from tqdm.auto import tqdm

        summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
        tqdm.write(f"epoch {record['epoch']}/{run.config['epochs']}: {summary}")
