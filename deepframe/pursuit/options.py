"""The options of :func:`deepframe.compile`, as one validated object.

:class:`CompileOptions` holds every choice of a compiled solver that is not
its graph, its weights or its device. Building one checks each option and
raises the ``ValueError`` :func:`deepframe.compile` documents, before any
tensor work; :class:`~deepframe.pursuit.PursuitNet` reads its settings from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..solvers import SOLVERS

__all__ = [
    "CompileOptions",
    "METHODS",
    "SCHEDULES",
    "THRESHOLDS",
    "LAYERED_INITS",
    "NEGATIVE_BIAS",
]

METHODS = tuple(SOLVERS)  # ("feedforward", "layered", "deep")
SCHEDULES = ("gauss-seidel", "jacobi")
THRESHOLDS = ("step", "paper")
LAYERED_INITS = ("final", "feedforward")
NEGATIVE_BIAS = ("error", "clip")


@dataclass(frozen=True)
class CompileOptions:
    """Every option of :func:`deepframe.compile` but the graph, the weights and the device.

    The fields and their meaning are :func:`deepframe.compile`'s parameters of
    the same names (its docstring is the reference); the defaults are its
    defaults. Construction validates them.

    Raises
    ------
    ValueError
        An option outside its documented range, naming it and its value.
    """

    method: str = "deep"
    iterations: int = 0
    alpha: float | str = 0.0
    beta: float | str = "learned"
    learn_lambda: bool = True
    threshold: str = "step"
    schedule: str = "gauss-seidel"
    layered_init: str = "final"
    num_classes: int | None = None
    mean: Any = None
    std: Any = None
    seed: int = 0
    dtype: torch.dtype = torch.float32
    checkpoint_sweeps: bool | int = False
    channels_last: bool = False
    torch_compile: bool | Mapping = False
    negative_bias: str = "error"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"compile: unknown method {self.method!r}; expected one of {METHODS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"compile: unknown schedule {self.schedule!r}; expected one of {SCHEDULES}"
            )
        if self.threshold not in THRESHOLDS:
            raise ValueError(
                f"compile: unknown threshold {self.threshold!r}; expected one of {THRESHOLDS}"
            )
        if self.layered_init not in LAYERED_INITS:
            raise ValueError(
                f"compile: unknown layered_init {self.layered_init!r}; "
                f"expected one of {LAYERED_INITS}"
            )
        if (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or self.iterations < 0
        ):
            raise ValueError(
                f"compile: iterations must be an integer >= 0, got {self.iterations!r}"
            )
        if self.alpha != "fista" and not (
            isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha < 1.0
        ):
            raise ValueError(f"compile: alpha must be in [0, 1) or 'fista', got {self.alpha!r}")
        if self.beta != "learned" and not (
            isinstance(self.beta, (int, float)) and 0.0 < self.beta <= 1.0
        ):
            raise ValueError(f"compile: beta must be in (0, 1] or 'learned', got {self.beta!r}")
        if not isinstance(self.checkpoint_sweeps, (bool, int)) or self.checkpoint_sweeps < 0:
            raise ValueError(
                "compile: checkpoint_sweeps must be True, False or an integer >= 1 "
                f"(iterations per recomputed segment), got {self.checkpoint_sweeps!r}"
            )
        if not isinstance(self.torch_compile, (bool, Mapping)):
            raise ValueError(
                "compile: torch_compile must be a bool or a mapping of torch.compile options, "
                f"got {self.torch_compile!r}"
            )
        if self.negative_bias not in NEGATIVE_BIAS:
            raise ValueError(
                f"compile: unknown negative_bias {self.negative_bias!r}; "
                f"expected one of {NEGATIVE_BIAS}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"compile: seed must be an integer >= 0, got {self.seed!r}")
        for name in ("mean", "std"):
            _check_normalisation(name, getattr(self, name))
        self._check_types()

    def _check_types(self) -> None:
        """The options a stored checkpoint may hold in any type: flags are bools, counts
        ints (not bools), ``dtype`` a floating torch dtype (``deepframe.load_model``
        validates stored options by constructing this class)."""
        for name in ("learn_lambda", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"compile: {name} must be True or False, got {getattr(self, name)!r}"
                )
        for name in ("alpha", "beta"):
            if isinstance(getattr(self, name), bool):
                raise ValueError(f"compile: {name} must be a number, got {getattr(self, name)!r}")
        classes = self.num_classes
        if classes is not None and (
            isinstance(classes, bool) or not isinstance(classes, int) or classes < 1
        ):
            raise ValueError(f"compile: num_classes must be an integer >= 1, got {classes!r}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise ValueError(f"compile: dtype must be a floating torch dtype, got {self.dtype!r}")
        if isinstance(self.torch_compile, Mapping) and not all(
            isinstance(k, str) for k in self.torch_compile
        ):
            raise ValueError(
                "compile: torch_compile's options must be named by strings, got "
                f"{self.torch_compile!r}"
            )

    @property
    def iterates(self) -> bool:
        """Whether the solver iterates (a pursuit with ``T > 0``, not the feed-forward pass)."""
        return self.method != "feedforward" and self.iterations > 0


def _check_normalisation(name: str, value) -> None:
    """``mean`` / ``std``: ``None``, or finite numbers (one per input channel, or one for
    all); ``std`` strictly positive, since it divides the input."""
    if value is None:
        return
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.dim() > 1 or t.numel() == 0:
        raise ValueError(
            f"compile: {name} must be a number or a sequence of numbers (one per input "
            f"channel), got {value!r}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"compile: {name} must be finite, got {value!r}")
    if name == "std" and bool((t <= 0).any()):
        raise ValueError(f"compile: std must be > 0 (the input is divided by it), got {value!r}")
