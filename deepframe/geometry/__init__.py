"""Geometry of the global dictionary: Welch bounds, mutual coherence, frame potentials.

All metrics are of the global dictionary ``D`` *with unit-norm columns*
``d_i / ||d_i||`` (a column that is exactly zero stays zero), for a given
input shape and given weights. With ``G = D_n^T D_n`` the Gram of the
normalised dictionary, ``N`` atoms and ``n`` rows:

* mutual coherence ``mu(D) = max_{i != j} |G_ij|``;
* frame potential ``FP(D) = ||G||_F^2 = sum_{i,j} |G_ij|^2`` (order ``k``:
  ``sum_{i,j} |G_ij|^{2k}``);
* deep frame potential ``DFP(D) = (1 / N_nz) sum_{(i,j) in S} G_ij^2`` with ``S``
  the structurally nonzero off-diagonal entries of ``G`` (those that are
  nonzero for *some* weights of the architecture) and ``N_nz = |S|``. Since
  every other off-diagonal entry is zero, ``DFP = (FP - N') / N_nz`` with
  ``N'`` the number of nonzero atoms (Murdock & Lucey 2020).

The package follows the sections of docs/geometry.md:

========================  =====================================================
:mod:`.welch`             Welch bounds of ``N`` unit vectors in dimension ``n``
:mod:`.metrics`           the public metrics, :func:`measure` (metrics + bounds)
:mod:`.structured`        the exact structured engine (``method="structured"``):
                          :class:`~.structured.GramPlan`, built once per
                          architecture, evaluated for the current weights
:mod:`.pieces`            its column pieces ``D_t[a]`` and the per-axis taps
:mod:`.blocks`            the Gram's blocks and their position classes per axis
:mod:`.reductions`        one block's frame potential and coherence (the weights')
:mod:`.structural`        one block's structural nonzero count ``N_nz``
:mod:`.dense`             the dense reference (``method="dense"``)
:mod:`.results`           :class:`GramMetrics`, how an atom is named
:mod:`.bounds`            the architecture-dependent lower bounds
:mod:`.minimize`          minimum deep frame potential (dataless model selection)
:mod:`.report`            :func:`metrics_report`, all of the above as one JSON-ready
                          dict (what ``deepframe metrics`` prints)
========================  =====================================================
"""

from __future__ import annotations

from ..memory import DEFAULT_MEMORY_BUDGET  # noqa: F401 - importable here as before
from .bounds import lower_bounds
from .dense import GramTooLargeError
from .metrics import (  # noqa: F401 - METHODS importable here as before
    METHODS,
    Measurement,
    coherence_breakdown,
    deep_frame_potential,
    frame_potential,
    gram_metrics,
    measure,
    mutual_coherence,
)
from .minimize import FramePotentialResult, minimize_frame_potential
from .report import metrics_report
from .results import GramMetrics
from .welch import FIELDS, frame_potential_bound, welch_bound  # noqa: F401 - FIELDS as before

__all__ = [
    "welch_bound",
    "frame_potential_bound",
    "gram_metrics",
    "mutual_coherence",
    "frame_potential",
    "deep_frame_potential",
    "coherence_breakdown",
    "measure",
    "lower_bounds",
    "minimize_frame_potential",
    "metrics_report",
    "GramMetrics",
    "Measurement",
    "FramePotentialResult",
    "GramTooLargeError",
]

# Importable here as before but not listed: DEFAULT_MEMORY_BUDGET (deepframe.memory's
# default cap on the dense Gram and on structured work buffers), METHODS and FIELDS.
