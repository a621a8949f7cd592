"""What a pass over the normalised Gram returns, and how it names an atom.

Shared by the structured engine (:mod:`deepframe.geometry.structured`, through
:mod:`deepframe.geometry.metrics`) and the dense reference
(:mod:`deepframe.geometry.dense`), so both answer in the same form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dictionary import GlobalDictionary

__all__ = ["GramMetrics", "atom_location"]


@dataclass
class GramMetrics:
    """Everything about the normalised Gram that one pass computes.

    Attributes
    ----------
    coherence : float
        ``max_{i != j} |G_ij|``.
    frame_potential : float
        ``sum_{i,j} |G_ij|^{2k}`` (``k = order``; ``k = 1`` is ``||G||_F^2``).
    deep_frame_potential : float or None
        ``sum_{(i,j) in S} G_ij^2 / |S|`` over the structurally nonzero
        off-diagonal entries ``S``; ``None`` when not requested.
    n_atoms, n_rows : int
        ``N`` and ``n``.
    nonzero_atoms : int
        Atoms with a nonzero column (the others are left at zero).
    structural_nonzeros : int or None
        ``N_nz = |S|``.
    attained_at : dict
        Where the coherence is attained: ``{"value", "blocks": [a, b], "atoms": [..]}``.
    blocks : list of dict
        Per block pair ``(a, b)``: ``max``, where, its share of the FP and of
        ``N_nz`` (both orderings counted); only with ``details=True``.
    method : str
    order : int
    """

    coherence: float
    frame_potential: float
    deep_frame_potential: float | None
    n_atoms: int
    n_rows: int
    nonzero_atoms: int
    structural_nonzeros: int | None
    attained_at: dict
    blocks: list = field(default_factory=list)
    method: str = "structured"
    order: int = 1


def atom_location(d: GlobalDictionary, node: Any, flat_index: int) -> dict:
    """Where atom ``flat_index`` of ``node`` is: its channel and position, and its global column.

    Parameters
    ----------
    d : GlobalDictionary
    node : hashable
        An activation node of ``d``.
    flat_index : int
        Index of the atom in the flattened activation of ``node``.

    Returns
    -------
    dict
        ``{"node", "channel", "position": [y, x], "column"}`` for a ``(C, H, W)``
        activation, ``{"node", "feature", "column"}`` for a vector one.
    """
    shape = d.node_shapes[node]
    idx = np.unravel_index(int(flat_index), shape)
    col = d.col_offsets[d.nodes.index(node)] + int(flat_index)
    if len(shape) == 3:
        return {
            "node": node,
            "channel": int(idx[0]),
            "position": [int(idx[1]), int(idx[2])],
            "column": col,
        }
    return {"node": node, "feature": int(idx[0]), "column": col}
