"""The blocks of the structured Gram and the position classes along their axes.

docs/geometry.md, section 3. Block ``(a, b)`` of ``G = sum_t D_t^T D_t`` is
the sum over the terms containing both nodes of ``D_t[a]^T D_t[b]`` (a
*contribution*: a pair of :class:`~deepframe.geometry.pieces.Piece`). This
module holds what a block is before any weight is read:

* :class:`AxisClasses` / :func:`axis_classes`: along each axis the position
  pairs ``(y, y')`` grouped into classes with the same windows and the same
  atom-norm classes (:func:`norm_classes`), each evaluated once from a
  representative pair and weighted by its multiplicity, which is exact;
  :func:`classes_to_evaluate` says which classes a diagonal block needs;
* :class:`BlockPlan`: one block, its contributions and its classes;
* the small tools both walks of a block share (the metrics in
  :mod:`.reductions`, the structural count in :mod:`.structural`):
  :func:`orient`, :func:`chunk_rows`, :func:`unit_batch`,
  :func:`selection_overlap`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..dictionary import GlobalDictionary

__all__ = [
    "AxisClasses",
    "axis_classes",
    "norm_classes",
    "classes_to_evaluate",
    "BlockPlan",
    "orient",
    "chunk_rows",
    "unit_batch",
    "selection_overlap",
]


# ==========================================================================
# position classes along one axis
# ==========================================================================
@dataclass(frozen=True, eq=False)
class AxisClasses:
    """Classes of atom-position pairs ``(y, y')`` along one axis of a block ``(a, b)``.

    Two pairs are in one class when every contribution has the same window
    (set of tap pairs ``(alpha, alpha')`` with ``u_a(y, alpha) = u_b(y',
    alpha')`` valid), both atoms are in the same norm classes, and (diagonal
    blocks) both or neither have ``y = y'``. Only pairs with a nonzero window
    appear.

    Attributes
    ----------
    representatives : numpy.ndarray
        ``(P, 2)`` int64: one pair ``(y, y')`` per class.
    multiplicity : numpy.ndarray
        ``(P,)`` int64: the number of pairs in each class.
    on_diagonal : numpy.ndarray
        ``(P,)`` bool: ``y = y'`` in a diagonal block ``(a, a)``.
    taps : list of numpy.ndarray
        Per contribution: ``(L, 2)`` int64, the tap pairs ``(alpha, alpha')``
        some class uses.
    windows : list of numpy.ndarray
        Per contribution: ``(P, L)`` float64, 1 where class ``p`` uses tap pair ``l``.
    mirror : numpy.ndarray or None
        Diagonal blocks: ``(P,)`` int64, the class of ``(y', y)`` for the
        class of ``(y, y')`` (its entries are the transposed ones).
    """

    representatives: np.ndarray
    multiplicity: np.ndarray
    on_diagonal: np.ndarray
    taps: list
    windows: list
    mirror: np.ndarray | None = None


def axis_classes(
    contributions: tuple,
    axis: int,
    norm_classes_a: np.ndarray,
    norm_classes_b: np.ndarray,
    diagonal: bool,
) -> AxisClasses:
    """Group the position pairs of one axis of a block into :class:`AxisClasses`.

    Parameters
    ----------
    contributions : tuple of (Piece, Piece)
        The convolution-like piece pairs of the block.
    axis : int
        0 (rows, ``y``) or 1 (columns, ``x``).
    norm_classes_a, norm_classes_b : numpy.ndarray
        Norm class of every position of nodes ``a`` and ``b`` (:func:`norm_classes`).
    diagonal : bool
        Whether the block is ``(a, a)``.
    """
    n_contributions = len(contributions)
    # (y, y') -> per contribution, the set of tap pairs that meet on one residual row
    windows_of: dict = {}
    for index, (piece_a, piece_b) in enumerate(contributions):
        incidence_a, incidence_b = piece_a.incidence[axis], piece_b.incidence[axis]
        reached_from_b = defaultdict(list)
        for y2, tap2 in zip(*np.nonzero(incidence_b >= 0)):
            reached_from_b[int(incidence_b[y2, tap2])].append((int(y2), int(tap2)))
        for y, tap in zip(*np.nonzero(incidence_a >= 0)):
            for y2, tap2 in reached_from_b.get(int(incidence_a[y, tap]), ()):
                key = (int(y), y2)
                if key not in windows_of:
                    windows_of[key] = [set() for _ in range(n_contributions)]
                windows_of[key][index].add((int(tap), tap2))

    def signature(y: int, y2: int, windows: list, same: bool) -> tuple:
        return (
            int(norm_classes_a[y]),
            int(norm_classes_b[y2]),
            same,
            tuple(frozenset(w) for w in windows),
        )

    groups: dict = {}  # signature -> [y, y', multiplicity, windows]
    for (y, y2), windows in sorted(windows_of.items()):
        sig = signature(y, y2, windows, diagonal and y == y2)
        if sig in groups:
            groups[sig][2] += 1
        else:
            groups[sig] = [y, y2, 1, windows]
    entries = list(groups.values())
    mirror = None
    if diagonal:
        class_of = {sig: p for p, sig in enumerate(groups)}
        mirror = np.array(
            [class_of[signature(y2, y, windows_of[(y2, y)], y == y2)] for y, y2, _, _ in entries],
            dtype=np.int64,
        )
    representatives = np.array([[e[0], e[1]] for e in entries], dtype=np.int64).reshape(-1, 2)
    multiplicity = np.array([e[2] for e in entries], dtype=np.int64)
    on_diagonal = np.array([diagonal and e[0] == e[1] for e in entries], dtype=bool)
    taps, windows = [], []
    for index in range(n_contributions):
        used = sorted(set().union(*[e[3][index] for e in entries])) if entries else []
        column = {tap_pair: i for i, tap_pair in enumerate(used)}
        window = np.zeros((len(entries), len(used)))
        for p, e in enumerate(entries):
            for tap_pair in e[3][index]:
                window[p, column[tap_pair]] = 1.0
        taps.append(np.array(used, dtype=np.int64).reshape(-1, 2))
        windows.append(window)
    return AxisClasses(representatives, multiplicity, on_diagonal, taps, windows, mirror)


def norm_classes(pieces: tuple, axis: int, size: int) -> np.ndarray:
    """Positions along ``axis`` whose atoms have the same norm (same tap validity everywhere)."""
    if any(not p.conv_like for p in pieces):
        return np.arange(size)
    ids: dict = {}
    out = np.empty(size, dtype=np.int64)
    for y in range(size):
        sig = tuple(tuple((p.incidence[axis][y] >= 0).tolist()) for p in pieces)
        out[y] = ids.setdefault(sig, len(ids))
    return out


def classes_to_evaluate(axis: AxisClasses) -> tuple[list, dict]:
    """The classes to evaluate along ``axis`` and the weight of each.

    With a mirror (diagonal block) only ``p <= mirror(p)``, weighted twice
    when ``p`` also stands for its distinct mirror; else every class, weighted
    by its multiplicity.
    """
    if axis.mirror is not None:
        classes = [p for p in range(len(axis.multiplicity)) if p <= axis.mirror[p]]
        weights = {
            p: (2.0 if p < axis.mirror[p] else 1.0) * float(axis.multiplicity[p]) for p in classes
        }
    else:
        classes = list(range(len(axis.multiplicity)))
        weights = {p: float(axis.multiplicity[p]) for p in classes}
    return classes, weights


# ==========================================================================
# one block
# ==========================================================================
@dataclass(frozen=True, eq=False)
class BlockPlan:
    """Block ``(a, b)`` of the Gram (``a`` not after ``b`` in column order).

    Attributes
    ----------
    node_a, node_b : hashable
        The two activation nodes.
    index_a, index_b : int
        Their positions in ``GlobalDictionary.nodes``.
    contributions : tuple of (Piece, Piece)
        ``(D_t[a], D_t[b])`` for every term ``t`` containing both nodes
        (twice the same piece pair appears once per term).
    by_classes : bool
        Every contribution is convolution-like: evaluated through position
        classes; otherwise row by row.
    axes : tuple of AxisClasses
        ``(y, x)`` classes when :attr:`by_classes`, else empty.
    """

    node_a: Any
    node_b: Any
    index_a: int
    index_b: int
    contributions: tuple
    by_classes: bool
    axes: tuple = ()

    @property
    def diagonal(self) -> bool:
        """Whether the block is ``(a, a)``."""
        return self.index_a == self.index_b

    @property
    def orderings(self) -> int:
        """Occurrences of the block in ``G``: 1 if diagonal, else 2 (``(a, b)``, ``(b, a)``)."""
        return 1 if self.diagonal else 2


def orient(d: GlobalDictionary, block: BlockPlan) -> tuple:
    """``(smaller node, other node, swapped)``: row-by-row work iterates the smaller one."""
    size_a = math.prod(d.node_shapes[block.node_a])
    size_b = math.prod(d.node_shapes[block.node_b])
    if size_a <= size_b:
        return block.node_a, block.node_b, False
    return block.node_b, block.node_a, True


def chunk_rows(memory_budget: int, per_row_bytes: int, rows: int) -> int:
    """Rows per chunk of row-by-row work: ``per_row_bytes`` each within an eighth of
    ``memory_budget`` (at least 1 MiB), at least 1 and at most ``rows``."""
    budget = max(memory_budget // 8, 1 << 20)
    return int(max(1, min(rows, budget // max(per_row_bytes, 1))))


def unit_batch(i0: int, i1: int, shape: tuple, dtype, device) -> torch.Tensor:
    """The unit vectors ``e_i``, ``i0 <= i < i1``, of a node of ``shape``: ``(i1 - i0, *shape)``."""
    n = math.prod(shape)
    e = torch.zeros((i1 - i0, n), dtype=dtype, device=device)
    e[torch.arange(i1 - i0, device=device), torch.arange(i0, i1, device=device)] = 1
    return e.reshape(i1 - i0, *shape)


def selection_overlap(selection_a: np.ndarray, selection_b: np.ndarray, dtype, device):
    """``[sel_a[c] = sel_b[c'] >= 0]``: the channel Gram of two selection pieces."""
    a = torch.as_tensor(selection_a, device=device)
    b = torch.as_tensor(selection_b, device=device)
    return ((a[:, None] == b[None, :]) & (a[:, None] >= 0)).to(dtype)
