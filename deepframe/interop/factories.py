"""Models named on the command line: ``module:factory``, a weights file, an input shape."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import torch
from torch import nn

from .trace import from_torch
from .weights import _load_into, load_state_dict


def load_torch_model(spec: str, state_dict: str | os.PathLike | None = None) -> nn.Module:
    """The model named by ``module:factory`` (or ``path/to/file.py:factory``).

    ``factory`` is a function or class called without arguments, or a module
    instance. A dotted module is imported with the current folder on
    ``sys.path``. With ``state_dict``, the weights file is loaded
    (:func:`load_state_dict`).
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(
            f"--from-torch expects module:factory (e.g. mymodels:resnet20 or "
            f"models.py:resnet20), got {spec!r}"
        )
    if target.endswith(".py") or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"no Python file at {path}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # the user's file: report it as one line
            raise ValueError(f"running {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        added = os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ValueError(
                f"cannot import {target!r} for --from-torch: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if added:
                sys.path.remove(os.getcwd())
    if not hasattr(module, attr):
        raise ValueError(f"{target!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    try:
        model = obj if isinstance(obj, nn.Module) else obj()
    except Exception as exc:
        raise ValueError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        _load_into(model, load_state_dict(state_dict), str(state_dict))
    return model


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` or ``"3x32x32"`` (or ``"64"``) as a tuple of positive integers."""
    parts = str(text).replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise ValueError(f"input shape must be C,H,W or d (e.g. 3,32,32), got {text!r}")
    return shape


def from_torch_spec(
    spec: str,
    *,
    weights: str | os.PathLike | None = None,
    input_shape: str | Sequence[int],
    batchnorm: str = "fold",
) -> tuple[nx.DiGraph, dict[str, torch.Tensor]]:
    """:func:`from_torch` of the model ``module:factory`` with a weights file.

    The example input is a seeded uniform ``[0, 1)`` batch of two of shape
    ``input_shape`` (``"3,32,32"`` or a tuple).
    """
    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    model = load_torch_model(spec)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((2, *shape), generator=generator, dtype=torch.float64)
    return from_torch(model, x, state_dict=weights, batchnorm=batchnorm)


def from_torch_args(arch, spec, weights, input_shape):
    """The command line's ``--from-torch SPEC --weights FILE --input-shape C,H,W``."""
    if spec is None:
        if weights is not None:
            raise ValueError("--weights needs --from-torch module:factory")
        raise ValueError(
            "give an architecture (a builder spec or a .json file) or --from-torch module:factory"
        )
    if arch:
        raise ValueError(f"give either the architecture {arch!r} or --from-torch, not both")
    if not input_shape:
        raise ValueError("--from-torch needs --input-shape, e.g. 3,32,32")
    return from_torch_spec(spec, weights=weights, input_shape=input_shape)
