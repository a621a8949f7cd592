"""deepframe: the geometry of structured dictionaries in deep networks.

A feed-forward ReLU network is one approximate step of a single sparse coding
problem whose dictionary is built from all the layers' weights (Murdock &
Lucey 2020; Cazenavette, Murdock & Lucey 2021). deepframe describes
architectures as networkx graphs, compiles them into that global dictionary
and into pursuit solvers, and measures its geometry.
"""

from .attacks import audit, fgsm, pgd
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
from .pursuit import PursuitNet, Trace, compile
from .train import load_model, train

__version__ = "0.1.0"

__all__ = [
    "ArchitectureError",
    "GlobalDictionary",
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
    "audit",
    "fgsm",
    "pgd",
    "train",
    "load_model",
    "PursuitNet",
    "Trace",
    "chain",
    "compile",
    "densenet",
    "dictionary",
    "from_torch",
    "load",
    "resnet",
    "save",
    "validate",
]
