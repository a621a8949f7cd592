"""deepframe: the geometry of structured dictionaries in deep networks.

A feed-forward ReLU network is one approximate step of a single sparse coding
problem whose dictionary is built from all the layers' weights (Murdock &
Lucey 2020; Cazenavette, Murdock & Lucey 2021). deepframe describes
architectures as networkx graphs, compiles them into that global dictionary
and into pursuit solvers, and measures its geometry.

The public names below are imported on first use (PEP 562), so ``import
deepframe`` and ``deepframe --help`` do not import PyTorch.
"""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ArchitectureError": "graph",
    "chain": "graph",
    "densenet": "graph",
    "load": "graph",
    "resnet": "graph",
    "save": "graph",
    "validate": "graph",
    "GlobalDictionary": "dictionary",
    "MemoryBudgetError": "memory",
    "dictionary": "dictionary",
    "GramTooLargeError": "geometry",
    "coherence_breakdown": "geometry",
    "deep_frame_potential": "geometry",
    "frame_potential": "geometry",
    "frame_potential_bound": "geometry",
    "gram_metrics": "geometry",
    "lower_bounds": "geometry",
    "metrics_report": "geometry",
    "minimize_frame_potential": "geometry",
    "mutual_coherence": "geometry",
    "welch_bound": "geometry",
    "PursuitNet": "pursuit",
    "Trace": "pursuit",
    "compile": "pursuit",
    "audit": "attacks",
    "fgsm": "attacks",
    "pgd": "attacks",
    "load_model": "checkpoints",
    "train": "train",
    "from_torch": "interop",
}

__all__ = [
    "ArchitectureError",
    "chain",
    "densenet",
    "load",
    "resnet",
    "save",
    "validate",
    "GlobalDictionary",
    "MemoryBudgetError",
    "dictionary",
    "GramTooLargeError",
    "coherence_breakdown",
    "deep_frame_potential",
    "frame_potential",
    "frame_potential_bound",
    "gram_metrics",
    "lower_bounds",
    "metrics_report",
    "minimize_frame_potential",
    "mutual_coherence",
    "welch_bound",
    "PursuitNet",
    "Trace",
    "compile",
    "audit",
    "fgsm",
    "pgd",
    "load_model",
    "train",
    "from_torch",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepframe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The package module: ``deepframe.train`` and ``deepframe.dictionary`` stay functions.

    Importing a submodule makes Python set it as an attribute of the package.
    Two public functions share their module's name (``train``,
    ``dictionary``); they keep the attribute, as they did when this file
    imported everything eagerly. The modules stay reachable through
    ``sys.modules`` and ``from deepframe.train import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .attacks import audit, fgsm, pgd
    from .checkpoints import load_model
    from .dictionary import GlobalDictionary, dictionary
    from .geometry import (
        GramTooLargeError,
        coherence_breakdown,
        deep_frame_potential,
        frame_potential,
        frame_potential_bound,
        gram_metrics,
        lower_bounds,
        metrics_report,
        minimize_frame_potential,
        mutual_coherence,
        welch_bound,
    )
    from .graph import ArchitectureError, chain, densenet, load, resnet, save, validate
    from .interop import from_torch
    from .memory import MemoryBudgetError
    from .pursuit import PursuitNet, Trace, compile
    from .train import train
