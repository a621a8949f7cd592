"""Resuming a run: is a checkpoint the one this run would have written, and loading it.

A run resumes to exactly the weights an uninterrupted run reaches (on CPU)
because every random stream of an epoch is seeded from ``(seed, epoch)``
(:mod:`.epoch`): the checkpoint needs only the weights, the optimizer and the
scheduler. Resuming is safe only with the same settings that change the
trajectory (:data:`RESUME_KEYS`), the same ``metadata`` (architecture,
compile options, dataset) and weights that fit the model;
:func:`resume_differences` lists what differs, and
:class:`ResumeMismatchError` refuses the run with that list. The file format
and its safe loading are :mod:`deepframe.checkpoints`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import (
    CHECKPOINT_NAME,
    architecture_differences,
    load_checkpoint,
    state_dict_mismatch,
)

__all__ = [
    "RESUME_KEYS",
    "ResumeMismatchError",
    "checked_checkpoint",
    "load_resumed",
    "resume_differences",
]

#: The settings that change the trajectory: a resumed run must use the same ones.
RESUME_KEYS = (
    "seed",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "adversarial",
)


class ResumeMismatchError(ValueError):
    """An existing checkpoint was trained with other settings than a resumed run asks for.

    Attributes
    ----------
    path : Path
        The checkpoint.
    differences : list of str
        One ``"name: stored -> requested"`` entry per setting that differs.
    """

    def __init__(self, path: Path, differences: list[str]):
        self.path = Path(path)
        self.differences = list(differences)
        shown = "; ".join(self.differences[:6])
        if len(self.differences) > 6:
            shown += f"; and {len(self.differences) - 6} more"
        super().__init__(
            f"cannot resume from {path}: it was trained with other settings ({shown}); use "
            "the same settings, another checkpoint_dir, or resume=False to start over"
        )


def resume_differences(state: Mapping, config: Mapping, metadata: Mapping | None) -> list[str]:
    """What a run with ``config`` and ``metadata`` changes against a checkpoint's ``state``.

    Compared: the settings that change the trajectory (seed, epochs, batch
    size, optimizer, lr, momentum, weight decay, schedule, adversarial
    training) and, when both the checkpoint and the run carry metadata, every
    metadata entry: the architecture (node-link text, compared node by node),
    the options of :func:`deepframe.compile` (method, iterations, ...) and
    anything else (e.g. the dataset).

    Returns
    -------
    list of str
        ``"name: stored -> requested"`` per difference; empty when resuming is safe.
    """
    stored = state.get("config") or {}
    out = [
        f"{k}: {stored.get(k)!r} -> {config[k]!r}"
        for k in RESUME_KEYS
        if stored.get(k) != config[k]
    ]
    old = state.get("metadata")
    if not isinstance(old, Mapping) or metadata is None:
        return out
    for key in sorted(set(old) | set(metadata), key=str):
        a, b = old.get(key), metadata.get(key)
        if a == b:
            continue
        if key == "graph" and isinstance(a, str) and isinstance(b, str):
            out.extend(architecture_differences(a, b))
        elif key == "compile" and isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b), key=str)
                if a.get(k) != b.get(k)
            )
        else:
            out.append(f"{key}: {a!r:.60} -> {b!r:.60}")
    return out


def checked_checkpoint(
    checkpoint_dir: str | Path, config: Mapping, metadata: Mapping[str, Any] | None
) -> dict | None:
    """The checkpoint of ``checkpoint_dir`` if a run with ``config`` may resume from it.

    Returns
    -------
    dict or None
        The checkpoint, or None when ``checkpoint_dir`` holds none.

    Raises
    ------
    ResumeMismatchError
        The checkpoint was trained with other settings or metadata.
    """
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = load_checkpoint(path)
    differences = resume_differences(state, config, metadata)
    if differences:
        raise ResumeMismatchError(path, differences)
    return state


def load_resumed(
    path: Path | None,
    config: dict,
    metadata: Mapping | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> tuple[int, list[dict]]:
    """Load a checkpoint into model, optimizer and scheduler; return (epoch, history).

    ``(0, [])`` (a fresh start) when ``path`` is None or holds no file.

    Raises
    ------
    ResumeMismatchError
        The checkpoint was trained with other settings or metadata, or its
        weights do not fit ``model``.
    """
    if path is None or not path.exists():
        return 0, []
    state = load_checkpoint(path)
    differences = resume_differences(state, config, metadata)
    problem = state_dict_mismatch(model, state["model"])
    if problem:
        differences.append(f"model: the stored weights do not fit this model ({problem})")
    if differences:
        raise ResumeMismatchError(path, differences)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), [dict(record) for record in state["history"]]
