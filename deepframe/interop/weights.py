"""Weights files as training scripts write them, read safely (``weights_only=True``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import state_dict_mismatch


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A model's ``state_dict`` from a weights file, as training scripts write them.

    Read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no
    arbitrary code runs). Accepted: the ``state_dict`` itself, or a dict holding
    it under ``"state_dict"`` or ``"model"`` (checkpoints that also store the
    optimizer, the epoch, ...); a ``"module."`` prefix on every key (left by
    ``DataParallel`` / ``DistributedDataParallel``) is removed.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not readable with ``weights_only=True`` or holds no state
        dict; the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors all mean "not a weights file"
        raise ValueError(
            f"{path}: not a weights file torch.load(weights_only=True) can read ({exc})"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"{path}: expected a state_dict (names -> tensors), or a dict holding one under "
            "'state_dict' or 'model'"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def _load_into(model: nn.Module, sd: Mapping, where: str) -> None:
    problem = state_dict_mismatch(model, sd)
    if problem:
        raise ValueError(f"{where} does not fit the model: {problem}")
    model.load_state_dict(sd)
