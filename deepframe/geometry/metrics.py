"""The public metrics: mutual coherence, frame potentials, deep frame potential.

docs/geometry.md, sections 1 and 2. All metrics are of the dictionary with
unit-norm columns ``d_i / ||d_i||`` (a zero column stays zero); with
``G = D_n^T D_n``, ``N'`` nonzero atoms and ``S`` the structurally nonzero
off-diagonal entries (``N_nz = |S|``):

* mutual coherence ``mu = max_{i != j} |G_ij|``;
* frame potential ``FP = ||G||_F^2 = sum_{i,j} |G_ij|^2`` (order ``k``:
  ``sum_{i,j} |G_ij|^{2k}``);
* deep frame potential ``DFP = (1 / N_nz) sum_{(i,j) in S} G_ij^2 = (FP - N') / N_nz``
  (Murdock & Lucey 2020).

``method="structured"`` (default) evaluates them exactly without forming the
Gram (:mod:`deepframe.geometry.structured`); ``method="dense"`` is the
obviously-correct reference (:mod:`deepframe.geometry.dense`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dictionary import GlobalDictionary
from .bounds import bounds_of_plan
from .dense import dense_metrics
from .results import GramMetrics, atom_location
from .structured import GramPlan

__all__ = [
    "METHODS",
    "GramMetrics",
    "gram_metrics",
    "mutual_coherence",
    "frame_potential",
    "deep_frame_potential",
    "coherence_breakdown",
    "Measurement",
    "measure",
]

#: The two ways to evaluate the Gram's metrics; both are exact.
METHODS = ("structured", "dense")


def check_method(method: str) -> None:
    """Refuse a ``method`` that is not one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def gram_metrics(
    D,
    *,
    method: str = "structured",
    order: int = 1,
    deep: bool = True,
    details: bool = False,
    memory_budget: int | None = None,
) -> GramMetrics:
    """Coherence, frame potential and deep frame potential of ``D`` in one pass.

    Parameters
    ----------
    D : GlobalDictionary, torch.Tensor or numpy.ndarray
        A global dictionary, or a plain ``(n, N)`` matrix (real or complex;
        always evaluated densely, its structure being the support overlap
        ``|D|^T |D| > 0``).
    method : ``"structured"`` or ``"dense"``
        See the module docstring. Both are exact.
    order : int
        ``k`` of the frame potential ``sum_{i,j} |G_ij|^{2k}``.
    deep : bool
        Also compute the structural count ``N_nz`` and the deep frame potential.
    details : bool
        Also return the per-block breakdown (:attr:`GramMetrics.blocks`).
    memory_budget : int or str, optional
        Bytes (or ``"16G"``); default ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB.
        The dense method refuses (:class:`GramTooLargeError`) beyond it; the
        structured method refuses (:class:`~deepframe.memory.MemoryBudgetError`)
        when its estimated work buffers exceed it, and sizes its chunks by it.

    Returns
    -------
    GramMetrics
    """
    check_method(method)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if method == "dense" or not isinstance(D, GlobalDictionary):
        with torch.no_grad():
            return dense_metrics(
                D, order=order, memory_budget=memory_budget, want_dfp=deep, details=details
            )
    plan = GramPlan.build(D, memory_budget=memory_budget)
    return structured_metrics(plan, order=order, deep=deep, details=details)


def structured_metrics(plan: GramPlan, *, order: int, deep: bool, details: bool) -> GramMetrics:
    """:class:`GramMetrics` of the plan's dictionary from the structured engine.

    ``FP = N' + sum_{i != j} |G_ij|^{2k}`` (the diagonal is 1 for every
    nonzero atom) and ``DFP = sum_{i != j} G_ij^2 / N_nz``.
    """
    D = plan.dictionary
    with torch.no_grad():
        result = plan.evaluate(order=order, coherence=True, details=details)
        squares = (
            float(result.offdiagonal)
            if order == 1 or not deep
            else float(plan.evaluate(order=1, coherence=False).offdiagonal)
        )
    nonzero = result.nonzero_atoms
    fp = nonzero + float(result.offdiagonal)
    n_nz = dfp = None
    if deep:
        n_nz = plan.structural_nonzeros()
        dfp = squares / n_nz if n_nz else 0.0
    mu = float(result.coherence)
    attained = {"value": mu}
    if result.attained_block is not None and result.attained_atoms is not None:
        block, (i, j) = result.attained_block, result.attained_atoms
        attained.update(
            {
                "blocks": [block.node_a, block.node_b],
                "atoms": [atom_location(D, block.node_a, i), atom_location(D, block.node_b, j)],
            }
        )
    blocks = []
    if details:
        # result.blocks has one entry per plan block, in the plan's order
        counts = plan.block_structural_nonzeros if deep else [None] * len(plan.blocks)
        for share, count in zip(result.blocks, counts):
            block = share.block
            row = {
                "blocks": [block.node_a, block.node_b],
                "max": float(share.maximum) if share.maximum is not None else 0.0,
                "atoms": None,
                "frame_potential": float(share.frame_potential),
                "structural_nonzeros": None if count is None else count * block.orderings,
            }
            if share.where is not None:
                row["atoms"] = [
                    atom_location(D, block.node_a, share.where[0]),
                    atom_location(D, block.node_b, share.where[1]),
                ]
            if row["max"] > 0 or row["structural_nonzeros"]:
                blocks.append(row)
        blocks.sort(key=lambda r: -r["max"])
    n, big_n = D.shape
    return GramMetrics(mu, fp, dfp, big_n, n, nonzero, n_nz, attained, blocks, "structured", order)


def mutual_coherence(D, *, method: str = "structured", memory_budget: int | None = None) -> float:
    """Mutual coherence ``mu(D) = max_{i != j} |<d_i, d_j>| / (||d_i|| ||d_j||)``.

    Parameters
    ----------
    D : GlobalDictionary, torch.Tensor or numpy.ndarray
    method : ``"structured"`` (default, exact, never forms the Gram) or ``"dense"``
    memory_budget : int or str, optional
        Bytes the method may use (see :func:`gram_metrics`).

    Returns
    -------
    float
    """
    return gram_metrics(D, method=method, deep=False, memory_budget=memory_budget).coherence


def frame_potential(
    D, *, k: int = 1, method: str = "structured", memory_budget: int | None = None
) -> float:
    """Frame potential of the unit-norm atoms: ``FP = ||G||_F^2 = sum_{i,j} |G_ij|^2``.

    With ``k > 1`` the order-``k`` potential ``sum_{i,j} |G_ij|^{2k}`` (the
    quantity the order-``k`` Welch bound :func:`frame_potential_bound` bounds).
    The diagonal counts: ``FP = N' + sum_{i != j} |G_ij|^{2k}`` with ``N'`` the
    nonzero atoms, so ``FP = N`` for an orthonormal basis and ``N^2 / n`` for a
    unit norm tight frame.

    Parameters
    ----------
    D : GlobalDictionary, torch.Tensor or numpy.ndarray
    k : int
    method, memory_budget :
        As in :func:`mutual_coherence`.

    Returns
    -------
    float
    """
    return gram_metrics(
        D, method=method, order=k, deep=False, memory_budget=memory_budget
    ).frame_potential


def deep_frame_potential(
    D, *, method: str = "structured", memory_budget: int | None = None
) -> float:
    """Deep frame potential: mean squared Gram entry over the structurally nonzero pairs.

        DFP(D) = (1 / N_nz) sum_{(i, j) in S} G_ij^2 = (FP(D) - N') / N_nz

    with ``G = D_n^T D_n`` the Gram of the unit-norm columns. Precisely:

    * **which entries**: ``S``, the ordered off-diagonal pairs ``(i, j)``,
      ``i != j``, whose Gram entry is nonzero for *some* weights of the
      architecture (for a global dictionary: the atoms' supports overlap in
      some term and the contributions are not parameter-free ones that
      cancel); ``N_nz = |S|`` counts ``(i, j)`` and ``(j, i)`` separately. For
      a plain matrix ``S`` is the support overlap ``(|D|^T |D|)_ij > 0``, all
      pairs for a generic dense matrix, giving the classical mean
      ``(FP - N) / (N (N - 1))``.
    * **squared**: the entries ``G_ij^2`` are averaged, not ``|G_ij|``: the
      frame potential ``FP = ||G||_F^2`` is a sum of squares (smooth in the
      weights, and the quantity Welch-type bounds control). ``sqrt(DFP)`` is
      the root-mean-square inner product of two atoms that can interact.
    * **diagonal excluded**: ``G_ii = 1`` for every nonzero atom (0 for a zero
      column), a constant ``N'`` that says nothing about the atoms' mutual
      geometry; removing it is the ``- N'``.
    * **why ``N_nz``, not ``N (N - 1)``**: every entry outside ``S`` is zero for
      all weights, so it is forced by the architecture, not achieved by it;
      averaging over ``S`` only measures the inner products the weights
      control, and does not credit sparse connectivity for its structural
      zeros. This is the "average nonzero magnitude of inner products between
      atoms" of Murdock & Lucey (CVPR 2020), in its squared form.

    Relation to the coherence: ``mu^2 = max_{i != j} G_ij^2`` is the largest of
    the averaged numbers (entries outside ``S`` are zero), so

        mu^2 >= DFP = (FP - N') / N_nz,

    and with any lower bound ``FP >= FP_lb`` (:func:`lower_bounds`),
    ``mu^2 >= (FP_lb - N') / N_nz``. Model selection uses the minimum over
    the weights, ``DFP* = min_W DFP(D(W))``: every weight setting of the
    architecture has ``mu(W)^2 >= DFP(W) >= DFP*``, so ``sqrt(DFP*)`` lower-bounds
    the coherence the architecture can reach, and architectures are compared
    by it without data (:func:`minimize_frame_potential` approximates
    ``DFP*`` from above by gradient descent).

    For a batch-norm folded dictionary (``column_scales``) ``S`` is the
    architecture's: the channel scales change values, not supports.

    Parameters
    ----------
    D : GlobalDictionary, torch.Tensor or numpy.ndarray
    method, memory_budget :
        As in :func:`mutual_coherence`. The dense method finds ``S`` from two
        random weight draws; the structured one counts it exactly.

    Returns
    -------
    float
    """
    return gram_metrics(
        D, method=method, deep=True, memory_budget=memory_budget
    ).deep_frame_potential


def coherence_breakdown(
    D, *, method: str = "structured", memory_budget: int | None = None
) -> list[dict]:
    """Per block pair ``(a, b)`` of nodes: the largest ``|G_ij|`` and where it is attained.

    Parameters
    ----------
    D : GlobalDictionary
    method, memory_budget :
        As in :func:`mutual_coherence`.

    Returns
    -------
    list of dict
        One entry per block pair that is structurally nonzero or nonzero (``a``
        not after ``b`` in column order), largest first: ``blocks`` (``[a, b]``), ``max``,
        ``atoms`` (two dicts with ``node``, ``channel``, ``position`` (y, x) or
        ``feature``, and the global ``column``), ``frame_potential`` (the
        block's off-diagonal share of the FP, both orderings) and
        ``structural_nonzeros`` (its share of ``N_nz``).
    """
    if not isinstance(D, GlobalDictionary):
        raise TypeError(f"coherence_breakdown needs a GlobalDictionary, got {type(D).__name__}")
    return gram_metrics(
        D, method=method, deep=True, details=True, memory_budget=memory_budget
    ).blocks


@dataclass
class Measurement:
    """All geometry of one global dictionary (:func:`measure`).

    Attributes
    ----------
    metrics : GramMetrics
        Coherence, frame potential (order 1), deep frame potential, ``N_nz``
        and where the coherence is attained.
    bounds : dict
        :func:`lower_bounds` of the dictionary's architecture.
    """

    metrics: GramMetrics
    bounds: dict


def measure(
    D: GlobalDictionary,
    *,
    method: str = "structured",
    orders: tuple = (1, 2),
    details: bool = False,
    memory_budget: int | None = None,
) -> Measurement:
    """The metrics and the lower bounds of ``D`` together, from one structured plan.

    Equal to ``gram_metrics(D, method=method, deep=True, details=details)``
    and ``lower_bounds(D, orders=orders)``, but the architecture is planned
    and ``N_nz`` counted once for both (what ``deepframe metrics`` reports).

    Parameters
    ----------
    D : GlobalDictionary
    method : ``"structured"`` or ``"dense"``
        For the metrics; the bounds are always counted structurally.
    orders : tuple of int
        Orders ``k`` of the Welch bounds.
    details : bool
        Include the per-block breakdown (:attr:`GramMetrics.blocks`).
    memory_budget : int or str, optional
        See :func:`gram_metrics`.

    Returns
    -------
    Measurement
    """
    if not isinstance(D, GlobalDictionary):
        raise TypeError(f"measure needs a GlobalDictionary, got {type(D).__name__}")
    check_method(method)
    plan = GramPlan.build(D, memory_budget=memory_budget)
    bounds = bounds_of_plan(plan, orders=orders, field="real")
    if method == "structured":
        metrics = structured_metrics(plan, order=1, deep=True, details=details)
    else:
        metrics = gram_metrics(
            D, method=method, deep=True, details=details, memory_budget=memory_budget
        )
    return Measurement(metrics, bounds)
