"""The geometry of one dictionary as a JSON-ready dict: :func:`metrics_report`.

``deepframe metrics`` prints this report (as a table, or raw with ``--json``);
``deepframe.metrics_report`` is the same function. The numbers are
:func:`~deepframe.geometry.metrics.measure`'s; this module only lays them out
with plain Python values (node names as strings, numpy scalars as ``int`` /
``float``), so ``json.dumps`` takes the result as it is.
"""

from __future__ import annotations

import numbers
from typing import Any

import networkx as nx

from ..dictionary import GlobalDictionary, dictionary
from .metrics import measure

__all__ = ["metrics_report"]


def _jsonable(value: Any) -> Any:
    """``value`` with every container a list or a str-keyed dict and every leaf JSON's.

    Integers (numpy's too) become ``int``, other reals ``float``; any other
    leaf (a node name that is a tuple, say) becomes its ``str``.
    """
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):  # int and numpy integers
        return int(value)
    if isinstance(value, numbers.Real):  # float and numpy floats
        return float(value)
    return str(value)


def metrics_report(
    graph_or_D,
    *,
    method: str = "structured",
    seed: int = 0,
    weights=None,
    orders: tuple = (1, 2),
    details: bool = False,
    memory_budget: int | None = None,
) -> dict:
    """All geometry of one dictionary as a JSON-serialisable dict (``deepframe metrics``).

    The numbers are :func:`deepframe.geometry.measure`'s; this lays them out
    for ``--json`` and the command line's table.

    Parameters
    ----------
    graph_or_D : networkx.DiGraph or GlobalDictionary
        A graph is compiled with ``weights`` or seeded random weights.
    method : ``"structured"`` or ``"dense"``
    seed : int
        Seed of the random weights when ``weights`` is not given.
    weights : mapping, optional
        ``{key: tensor}`` (e.g. from a checkpoint).
    orders : tuple of int
        Orders of the Welch bounds to report.
    details : bool
        Include the per-block breakdown.
    memory_budget : int or str, optional
        See :func:`deepframe.geometry.gram_metrics`.

    Returns
    -------
    dict
        ``atoms``, ``rows``, ``nonzero_atoms``, ``welch`` (per order),
        ``bounds`` (Welch and structured coherence / FP bounds, ``N_nz``),
        ``coherence``, ``frame_potential``, ``deep_frame_potential``,
        ``structural_nonzeros``, ``attained_at`` (block pair and atoms),
        ``method``, and ``blocks`` with ``details=True``. Node names are strings.
    """
    if isinstance(graph_or_D, GlobalDictionary):
        d = graph_or_D
    elif isinstance(graph_or_D, nx.DiGraph):
        d = dictionary(graph_or_D, seed=seed, weights=weights, memory_budget=memory_budget)
    else:
        raise TypeError(
            f"metrics_report needs a graph or a GlobalDictionary, got {type(graph_or_D).__name__}"
        )
    result = measure(d, method=method, orders=orders, details=details, memory_budget=memory_budget)
    m, bounds = result.metrics, result.bounds
    report = {
        "atoms": m.n_atoms,
        "rows": m.n_rows,
        "nonzero_atoms": m.nonzero_atoms,
        "welch": bounds["welch"],
        "bounds": {
            "welch_coherence": bounds["welch_coherence"],
            "welch_frame_potential": bounds["welch_frame_potential"],
            "structured_coherence": bounds["structured_coherence"],
            "structured_frame_potential": bounds["structured_frame_potential"],
        },
        "coherence": m.coherence,
        "frame_potential": m.frame_potential,
        "deep_frame_potential": m.deep_frame_potential,
        "structural_nonzeros": m.structural_nonzeros,
        "attained_at": m.attained_at,
        "method": m.method,
    }
    if details:
        report["blocks"] = m.blocks
    return _jsonable(report)
