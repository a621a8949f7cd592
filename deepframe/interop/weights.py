"""Weights files as training scripts write them, read safely (``weights_only=True``,
:func:`deepframe.checkpoints.read_torch_file`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import read_torch_file, state_dict_mismatch


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A model's ``state_dict`` from a weights file, as training scripts write them.

    Read by :func:`deepframe.checkpoints.read_torch_file`, the loader rule of
    every file deepframe reads: ``torch.load(path, map_location="cpu",
    weights_only=True)`` (no code from the file runs), and a failure is one
    line naming the path and what the file is. Accepted: the ``state_dict``
    itself, or a dict holding it under ``"state_dict"`` or ``"model"``
    (checkpoints that also store the optimizer, the epoch, ...); a
    ``"module."`` prefix on every key (left by ``DataParallel`` /
    ``DistributedDataParallel``) is removed.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not one ``weights_only=True`` reads (a whole pickled
        ``nn.Module`` saved by ``torch.save(model)``, random bytes, a text
        file, ...) or holds no state dict; one line naming the path.
    """
    path = Path(path)
    obj = read_torch_file(path, "cpu", what="weights file", missing="weights file not found")
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        if isinstance(obj, Mapping):
            keys = ", ".join(repr(k)[:40] for k in list(obj)[:4])
            held = f"a dict with keys {keys}" if obj else "an empty dict"
        else:
            held = f"a {type(obj).__name__}"
        raise ValueError(
            f"{path} is not a weights file: it holds {held}, not a state_dict (names -> "
            "tensors) nor a dict holding one under 'state_dict' or 'model'"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def _load_into(model: nn.Module, sd: Mapping, where: str) -> None:
    problem = state_dict_mismatch(model, sd)
    if problem:
        raise ValueError(f"{where} does not fit the model: {problem}")
    model.load_state_dict(sd)
