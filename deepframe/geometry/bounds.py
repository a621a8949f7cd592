"""Lower bounds of an architecture: Welch's and the structured ones.

docs/geometry.md, section 5. With ``N`` the nonzero atoms, ``n`` rows,
``N_j`` the atoms of node ``j`` and ``r_j = min(N_j, rows in which column
block j is structurally nonzero)``:

    FP >= FP_lb = max(N^2 / n, sum_j N_j^2 / r_j)
    mu^2 >= DFP >= (FP_lb - N) / N_nz

The first because ``FP >= sum_j ||G_jj||_F^2`` and ``G_jj`` is the Gram of
``N_j`` unit vectors of rank ``<= r_j``; the second because the off-diagonal
mass ``FP - N`` sits on only ``N_nz`` entries. Everything here depends on the
architecture and the input size, not on the weights.
"""

from __future__ import annotations

import math

import networkx as nx
import torch

from ..dictionary import GlobalDictionary, dictionary
from .dense import as_matrix
from .structured import GramPlan
from .welch import frame_potential_bound, welch_bound

__all__ = ["lower_bounds"]


def lower_bounds(graph_or_D, *, orders: tuple = (1,), field: str = "real") -> dict:
    """Welch and structured (architecture-dependent) lower bounds (docs/geometry.md).

    With ``N`` atoms (structurally nonzero columns), ``n`` rows, ``N_j`` atoms
    of node ``j`` and ``r_j = min(N_j, rows where column block j is
    structurally nonzero)``:

    * Welch: ``mu >= sqrt((N - n) / (n (N - 1)))``, ``FP >= N^2 / n`` (and the
      order-``k`` forms of :func:`welch_bound` for ``k`` in ``orders``);
    * structured FP: ``FP >= FP_lb = max(N^2 / n, sum_j N_j^2 / r_j)``, since
      ``FP >= sum_j ||G_jj||_F^2`` and the Gram ``G_jj`` of ``N_j`` unit
      vectors of rank ``<= r_j`` has ``||G_jj||_F^2 >= N_j^2 / r_j``;
    * structured coherence: ``mu^2 >= (FP_lb - N) / N_nz``, since the
      off-diagonal part ``FP - N`` is spread over only ``N_nz`` structurally
      nonzero entries, each ``<= mu^2``. Denser connectivity raises ``N_nz``
      (and ``n``) and lowers this bound.

    The bounds depend on the architecture and input shape only (a graph is
    compiled with seeded random weights, which do not matter).

    Parameters
    ----------
    graph_or_D : networkx.DiGraph, GlobalDictionary or matrix
    orders : tuple of int
        Orders ``k`` of the Welch bounds to report.
    field : ``"real"`` or ``"complex"``

    Returns
    -------
    dict
        ``atoms``, ``rows``, ``welch`` (list of ``{"k", "coherence",
        "frame_potential"}``), ``welch_coherence``, ``welch_frame_potential``,
        ``structured_frame_potential``, ``structured_coherence``,
        ``structural_nonzeros``, ``per_node`` (``N_j``, ``r_j``).
    """
    if isinstance(graph_or_D, GlobalDictionary):
        return bounds_of_plan(GramPlan.build(graph_or_D), orders=orders, field=field)
    if isinstance(graph_or_D, nx.DiGraph):
        plan = GramPlan.build(dictionary(graph_or_D, seed=0))
        return bounds_of_plan(plan, orders=orders, field=field)
    return _bounds(*_matrix_counts(graph_or_D), orders=orders, field=field)


def bounds_of_plan(plan: GramPlan, *, orders: tuple, field: str) -> dict:
    """:func:`lower_bounds` of the dictionary a structured plan was built for."""
    d = plan.dictionary
    with torch.no_grad():
        support = plan.squared_norms(support=True)
        per_node = []
        for j in d.nodes:
            rows = 0
            for piece in plan.pieces[j]:
                ones = piece.support_piece()
                batch = torch.ones((1, *ones.node_shape), dtype=torch.float64, device=d.device)
                rows += int((ones.column(batch).abs() > 0).sum())
            n_j = int((support[j] > 0).sum())
            per_node.append({"node": j, "atoms": n_j, "rows": min(n_j, rows)})
    atoms = sum(p["atoms"] for p in per_node)
    return _bounds(atoms, d.shape[0], plan.structural_nonzeros(), per_node, orders, field)


def _matrix_counts(m) -> tuple:
    """``(atoms, rows, N_nz, per_node)`` of a plain matrix (its support overlap)."""
    m = as_matrix(m)
    n, _ = m.shape
    supp = (m != 0).double()
    atoms = int((supp.sum(0) > 0).sum())
    overlap = (supp.T @ supp) > 0
    overlap.fill_diagonal_(False)
    n_nz = int(overlap.sum())
    per_node = [{"node": "D", "atoms": atoms, "rows": min(atoms, int((supp.sum(1) > 0).sum()))}]
    return atoms, n, n_nz, per_node


def _bounds(
    atoms: int, n: int, n_nz: int, per_node: list, orders: tuple = (1,), field: str = "real"
) -> dict:
    """The bounds of ``lower_bounds`` from the counts they depend on."""
    if atoms == 0:  # every column is zero: nothing to bound
        welch = [{"k": k, "coherence": 0.0, "frame_potential": 0.0} for k in orders]
    else:
        welch = [
            {
                "k": k,
                "coherence": welch_bound(atoms, n, k, field),
                "frame_potential": frame_potential_bound(atoms, n, k, field),
            }
            for k in orders
        ]
    fp_welch = atoms**2 / n
    fp_blocks = sum(p["atoms"] ** 2 / p["rows"] for p in per_node if p["rows"] > 0)
    fp_lb = max(fp_welch, fp_blocks)
    mu_struct = math.sqrt(max(0.0, (fp_lb - atoms) / n_nz)) if n_nz else 0.0
    return {
        "atoms": atoms,
        "rows": n,
        "welch": welch,
        "welch_coherence": welch_bound(atoms, n, 1, field) if atoms else 0.0,
        "welch_frame_potential": fp_welch,
        "structured_frame_potential": fp_lb,
        "structured_coherence": mu_struct,
        "structural_nonzeros": n_nz,
        "per_node": per_node,
    }
