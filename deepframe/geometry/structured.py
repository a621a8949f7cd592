"""The structured exact engine: the normalised Gram's metrics without forming the Gram.

docs/geometry.md, sections 2 and 3. ``G = sum_t D_t^T D_t`` over the residual
terms ``t``, so block ``(a, b)`` of ``G`` is the sum over the terms containing
both nodes of ``D_t[a]^T D_t[b]`` (a *contribution*: a pair of
:class:`~deepframe.geometry.pieces.Piece`). For two convolution-like pieces

    G[(c, y, x), (c', y', x')] = sum_{taps} Q[c, c', (alpha, beta), (alpha', beta')]
                                 * T_y[y, y', alpha, alpha'] * T_x[x, x', beta, beta']
    Q = sum_i K_a[c, i, alpha, beta] K_b[c', i, alpha', beta']

with ``T`` the per-axis 0/1 windows ``[u_a(y, alpha) = u_b(y', alpha')]``.
Along each axis the position pairs ``(y, y')`` are grouped into *classes*
with the same windows and the same atom-norm classes (one class per offset in
the interior, a few at the borders); each class is evaluated once from a
representative pair and weighted by its multiplicity, which is exact. Blocks
that involve a vector activation or a ``Dense`` operator are evaluated row by
row through the operators.

:class:`GramPlan` holds everything that depends on the architecture only
(pieces, blocks, classes); :meth:`GramPlan.evaluate` reads the current
weights, so one plan serves every step of
:func:`~deepframe.geometry.minimize_frame_potential`. Torch throughout: any
device, any floating dtype, differentiable.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ..dictionary import GlobalDictionary
from ..memory import check_memory, resolve_memory_budget
from .pieces import Piece, make_piece

__all__ = ["GramPlan", "BlockPlan", "AxisClasses", "GramEvaluation", "BlockEvaluation"]


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


# ==========================================================================
# the plan
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


@dataclass
class BlockEvaluation:
    """One block's share of a :class:`GramEvaluation`.

    Attributes
    ----------
    block : BlockPlan
    frame_potential : torch.Tensor
        ``sum |G_ij|^{2k}`` over the block's off-diagonal entries, both orderings.
    maximum : torch.Tensor or None
        ``max |G_ij|`` over them (``None``: no entry, or not requested).
    where : tuple of int or None
        ``(i, j)``: flat atom indices in nodes ``a`` and ``b`` attaining it.
    """

    block: BlockPlan
    frame_potential: torch.Tensor
    maximum: torch.Tensor | None
    where: tuple | None


@dataclass
class GramEvaluation:
    """The normalised Gram's metrics for the current weights (:meth:`GramPlan.evaluate`).

    Attributes
    ----------
    offdiagonal : torch.Tensor
        ``sum_{i != j} |G_ij|^{2k}`` (differentiable when grad is enabled).
    nonzero_atoms : int
        Atoms with a nonzero column: the diagonal of ``G`` is 1 for each.
    coherence : torch.Tensor or None
        ``max_{i != j} |G_ij|`` (``None`` unless requested).
    attained_block : BlockPlan or None
        The block where the coherence is attained.
    attained_atoms : tuple of int or None
        ``(i, j)``: flat atom indices in that block's nodes ``a`` and ``b``.
    blocks : list of BlockEvaluation
        Per block (only with ``details=True``).
    """

    offdiagonal: torch.Tensor
    nonzero_atoms: int
    coherence: torch.Tensor | None = None
    attained_block: BlockPlan | None = None
    attained_atoms: tuple | None = None
    blocks: list = field(default_factory=list)


class _ClassPairEntries(NamedTuple):
    """Normalised entries of one y-class against every x-class, for a chunk of channels."""

    channels: tuple  # (c0, c1): rows c0..c1-1 of node a's channels
    class_y: int  # the y-class p
    weight: float  # multiplicity of p (doubled when p stands for its mirror too)
    values: torch.Tensor  # (P_x, c1 - c0, C_b): entry [q, c - c0, c'] of class pair (p, q)


@dataclass(frozen=True, eq=False)
class GramPlan:
    """The architecture's part of the structured Gram of one dictionary.

    Pieces, blocks and position classes depend only on the architecture and
    the input size; :meth:`evaluate` reads the dictionary's current weights.
    Build with :meth:`build`.

    Attributes
    ----------
    dictionary : GlobalDictionary
    memory_budget : int
        Bytes for work buffers (chunks are sized by it).
    pieces : dict
        Node -> tuple of its :class:`~deepframe.geometry.pieces.Piece` (its column blocks).
    position_classes : dict
        ``(C, H, W)`` node -> ``(y, x)`` arrays of per-position norm classes.
    blocks : tuple of BlockPlan
        The structurally present blocks of ``G``, in column order.
    """

    dictionary: GlobalDictionary
    memory_budget: int
    pieces: dict
    position_classes: dict
    blocks: tuple

    @classmethod
    def build(cls, d: GlobalDictionary, *, memory_budget: int | str | None = None) -> GramPlan:
        """Plan the structured Gram of ``d``.

        Raises
        ------
        deepframe.dictionary.MemoryBudgetError
            When the estimated work buffers exceed ``memory_budget``
            (``None``: ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB).
        """
        memory_budget = resolve_memory_budget(memory_budget)
        check_memory(d.graph, "metrics", dtype=d.dtype, memory_budget=memory_budget)
        node_index = {j: i for i, j in enumerate(d.nodes)}
        pieces: dict = {j: [] for j in d.nodes}
        term_pieces = []
        for term_index, term in enumerate(d.terms):
            members = [make_piece(term_index, term.synth, "synth", term.op)]
            members += [make_piece(term_index, k, "target", p) for k, p in term.targets]
            for piece in members:
                pieces[piece.node].append(piece)
            term_pieces.append(members)
        # every pair of pieces of one term is a contribution to the block of their nodes
        by_pair: dict = defaultdict(list)
        for members in term_pieces:
            for i, first in enumerate(members):
                for second in members[i:]:
                    index_1, index_2 = node_index[first.node], node_index[second.node]
                    by_pair[(min(index_1, index_2), max(index_1, index_2))].append(
                        (first, second) if index_1 <= index_2 else (second, first)
                    )
        pieces = {j: tuple(node_pieces) for j, node_pieces in pieces.items()}
        position_classes = {}
        for j in d.nodes:
            shape = d.node_shapes[j]
            if len(shape) == 3:
                position_classes[j] = (
                    norm_classes(pieces[j], 0, shape[1]),
                    norm_classes(pieces[j], 1, shape[2]),
                )
        blocks = []
        for (index_a, index_b), contributions in sorted(by_pair.items()):
            a, b = d.nodes[index_a], d.nodes[index_b]
            contributions = tuple(contributions)
            by_classes = all(pa.conv_like and pb.conv_like for pa, pb in contributions)
            axes = ()
            if by_classes:
                classes_a, classes_b = position_classes[a], position_classes[b]
                axes = tuple(
                    axis_classes(
                        contributions, axis, classes_a[axis], classes_b[axis], index_a == index_b
                    )
                    for axis in (0, 1)
                )
            blocks.append(BlockPlan(a, b, index_a, index_b, contributions, by_classes, axes))
        return cls(d, memory_budget, pieces, position_classes, tuple(blocks))

    # -- sizes -----------------------------------------------------------------
    def _chunk_rows(self, per_row_bytes: int, rows: int) -> int:
        budget = max(self.memory_budget // 8, 1 << 20)
        return int(max(1, min(rows, budget // max(per_row_bytes, 1))))

    def _orient(self, block: BlockPlan) -> tuple:
        """``(smaller node, other node, swapped)``: row-by-row work iterates the smaller one."""
        size_a = math.prod(self.dictionary.node_shapes[block.node_a])
        size_b = math.prod(self.dictionary.node_shapes[block.node_b])
        if size_a <= size_b:
            return block.node_a, block.node_b, False
        return block.node_b, block.node_a, True

    # -- norms -----------------------------------------------------------------
    def squared_norms(self, *, support: bool = False) -> dict:
        """``||d_i||^2`` per node, as tensors of the node's shape.

        ``||d_i||^2 = sum_pieces sum_{valid taps} sum_i K[c, i, tap]^2`` (plus
        the selection's scale squared for every parameter-free piece), from
        per-axis validity masks: truncated border atoms get their exact norms.

        Parameters
        ----------
        support : bool
            Every learned weight replaced by 1 and no channel scales (float64):
            nonzero exactly for the atoms the architecture can make nonzero.
        """
        dtype, device = self.dictionary.dtype, self.dictionary.device
        if support:
            dtype = torch.float64
        out = {}
        for j in self.dictionary.nodes:
            total = torch.zeros(self.dictionary.node_shapes[j], dtype=dtype, device=device)
            for piece in self.pieces[j]:
                if support:
                    piece = piece.support_piece()
                if not piece.conv_like:
                    total = total + _explicit_squared_norms(piece, dtype, device)
                    continue
                valid_y = torch.as_tensor(piece.incidence[0] >= 0, dtype=dtype, device=device)
                valid_x = torch.as_tensor(piece.incidence[1] >= 0, dtype=dtype, device=device)
                if piece.learned:
                    kernel = piece.kernel().to(dtype)
                    energy = (
                        (kernel * kernel).sum(1) if not support else torch.ones_like(kernel[:, 0])
                    )
                    total = total + torch.einsum("cab,ya,xb->cyx", energy, valid_y, valid_x)
                else:
                    keep = torch.as_tensor(piece.selection >= 0, dtype=dtype, device=device)
                    if piece.scale is not None:
                        keep = keep * piece.scale.to(dtype=dtype, device=device).square()
                    total = total + keep[:, None, None] * (
                        valid_y[:, 0, None] * valid_x[None, :, 0]
                    )
            out[j] = total
        return out

    # -- structural counts (weight independent) -------------------------------
    def structural_nonzeros(self) -> int:
        """``N_nz``: off-diagonal Gram entries that are nonzero for some weights."""
        return sum(
            count * block.orderings
            for block, count in zip(self.blocks, self.block_structural_nonzeros)
        )

    @functools.cached_property
    def block_structural_nonzeros(self) -> tuple:
        """Per block: its structurally nonzero off-diagonal entries, one ordering.

        Computed on first use and kept (it depends on the architecture only).
        """
        return tuple(
            self._structural_by_classes(block)
            if block.by_classes
            else self._structural_row_by_row(block)
            for block in self.blocks
        )

    def _structural_by_classes(self, block: BlockPlan) -> int:
        """Exact ``N_nz`` share of a class block.

        Entry ``(c, c')`` of class pair ``(p, q)`` is structurally nonzero iff some
        parametrised contribution reaches it (its channel maps overlap and its
        windows at ``p`` and ``q`` are nonempty: a sum of products of learned
        weights, a nonzero polynomial) or the parameter-free contributions
        (identity, shortcut) do not cancel there. Class pairs with the same
        pattern are counted together.
        """
        axis_y, axis_x = block.axes
        channels_a = self.dictionary.node_shapes[block.node_a][0]
        channels_b = self.dictionary.node_shapes[block.node_b][0]
        patterns: dict = defaultdict(int)
        for p in range(len(axis_y.multiplicity)):
            for q in range(len(axis_x.multiplicity)):
                key = []
                for index, (piece_a, piece_b) in enumerate(block.contributions):
                    window_y = axis_y.windows[index][p]
                    window_x = axis_x.windows[index][q]
                    if piece_a.learned or piece_b.learned:
                        key.append(bool(window_y.any() and window_x.any()))
                    else:  # a single tap each: the coefficient of the 0/1 channel pattern
                        key.append(float(window_y.sum() * window_x.sum()))
                key.append(bool(axis_y.on_diagonal[p] and axis_x.on_diagonal[q]))
                patterns[tuple(key)] += int(axis_y.multiplicity[p] * axis_x.multiplicity[q])
        count = 0
        for key, multiplicity in patterns.items():
            hit = torch.zeros((channels_a, channels_b), dtype=torch.bool)
            constant = torch.zeros((channels_a, channels_b), dtype=torch.float64)
            for index, (piece_a, piece_b) in enumerate(block.contributions):
                if not key[index]:
                    continue
                if piece_a.learned or piece_b.learned:
                    rows = (
                        torch.ones(channels_a, dtype=torch.bool)
                        if piece_a.learned
                        else torch.as_tensor(piece_a.selection >= 0)
                    )
                    cols = (
                        torch.ones(channels_b, dtype=torch.bool)
                        if piece_b.learned
                        else torch.as_tensor(piece_b.selection >= 0)
                    )
                    hit |= rows[:, None] & cols[None, :]
                else:
                    constant += (
                        piece_a.sign
                        * piece_b.sign
                        * key[index]
                        * selection_overlap(
                            piece_a.selection, piece_b.selection, torch.float64, "cpu"
                        )
                    )
            hit |= constant != 0
            if key[-1]:
                hit.fill_diagonal_(False)
            count += int(hit.sum()) * multiplicity
        return count

    def _structural_row_by_row(self, block: BlockPlan) -> int:
        """Exact ``N_nz`` share of a block evaluated row by row: support patterns, chunked."""
        d = self.dictionary
        small, other, swap = self._orient(block)
        n_small = math.prod(d.node_shapes[small])
        n_other = math.prod(d.node_shapes[other])
        chunk = self._chunk_rows(n_other * 8 * 4, n_small)
        count = 0
        for i0 in range(0, n_small, chunk):
            i1 = min(n_small, i0 + chunk)
            e = unit_batch(i0, i1, d.node_shapes[small], torch.float64, d.device)
            support = torch.zeros((i1 - i0, n_other), dtype=torch.float64, device=d.device)
            constant = torch.zeros_like(support)
            with torch.no_grad():
                for piece_a, piece_b in block.contributions:
                    piece_small, piece_other = (piece_b, piece_a) if swap else (piece_a, piece_b)
                    ones_small, ones_other = (
                        piece_small.support_piece(),
                        piece_other.support_piece(),
                    )
                    if piece_small.parametrised or piece_other.parametrised:
                        support += ones_other.transpose(ones_small.column(e).abs()).flatten(1).abs()
                    else:  # the architecture's constants: channel scales left out
                        column = ones_small.column(e.to(d.dtype))
                        constant += ones_other.transpose(column).flatten(1).double()
            hit = (support > 0) | (constant != 0)
            if block.diagonal:
                idx = torch.arange(i0, i1, device=d.device)
                hit[idx - i0, idx] = False
            count += int(hit.sum())
        return count

    # -- evaluation ------------------------------------------------------------
    def evaluate(
        self, *, order: int = 1, coherence: bool = True, details: bool = False
    ) -> GramEvaluation:
        """Metrics of the normalised Gram for the current weights.

        Parameters
        ----------
        order : int
            ``k`` of ``sum_{i != j} |G_ij|^{2k}``.
        coherence : bool
            Also find ``max_{i != j} |G_ij|`` and where it is attained.
        details : bool
            Also return every block's share (:attr:`GramEvaluation.blocks`).

        Returns
        -------
        GramEvaluation
        """
        squared = self.squared_norms()
        inverse_norms = {
            j: torch.where(
                v > 0, v.clamp_min(torch.finfo(v.dtype).tiny).rsqrt(), torch.zeros_like(v)
            )
            for j, v in squared.items()
        }
        nonzero = int(sum(int((v > 0).sum()) for v in squared.values()))
        offdiagonal = None
        best = best_block = best_atoms = None
        per_block = []
        for block in self.blocks:
            if block.by_classes:
                fp, maximum, where = self._evaluate_by_classes(
                    block, inverse_norms, order, coherence
                )
            else:
                fp, maximum, where = self._evaluate_row_by_row(
                    block, inverse_norms, order, coherence
                )
            share = fp * block.orderings
            offdiagonal = share if offdiagonal is None else offdiagonal + share
            if coherence and maximum is not None and (best is None or float(maximum) > float(best)):
                best, best_block, best_atoms = maximum, block, where
            if details:
                per_block.append(BlockEvaluation(block, share, maximum, where))
        zero = torch.zeros((), dtype=self.dictionary.dtype, device=self.dictionary.device)
        result = GramEvaluation(offdiagonal if offdiagonal is not None else zero, nonzero)
        if coherence:
            result.coherence = best if best is not None else zero
            result.attained_block, result.attained_atoms = best_block, best_atoms
        result.blocks = per_block
        return result

    def _class_pair_entries(
        self, block: BlockPlan, inverse_norms: dict
    ) -> Iterator[_ClassPairEntries]:
        """The entries of a class block's class pairs, normalised, one y-class at a time.

        Entry ``(c, c')`` of class pair ``(p, q)`` is

            R = sum_contributions sign sum_{ly in window_y[p]} sum_{lx in window_x[q]} Q[ly, lx]

        (docs/geometry.md's ``M_y Q M_x^T``), times ``1 / (||d_(c,y,x)||
        ||d_(c',y',x')||)`` at the representatives, with the diagonal of ``G``
        set to zero. A y-class uses at most ``kh`` taps: those slices of ``Q``
        are summed, then one small GEMM with the x windows gives every x-class
        at once. In a diagonal block the class pair of ``(y', y), (x', x)``
        holds the transposed entries of that of ``(y, y'), (x, x')``: only the
        y-classes ``p <= mirror(p)`` are yielded, the others through a weight of 2.
        ``Q`` is formed whole when it fits a quarter of the memory budget, else
        per chunk of node ``a``'s channels.
        """
        axis_y, axis_x = block.axes
        dtype, device = self.dictionary.dtype, self.dictionary.device
        channels_a = self.dictionary.node_shapes[block.node_a][0]
        channels_b = self.dictionary.node_shapes[block.node_b][0]
        n_classes_y, n_classes_x = len(axis_y.multiplicity), len(axis_x.multiplicity)
        live = [
            index
            for index in range(len(block.contributions))
            if len(axis_y.taps[index]) and len(axis_x.taps[index])
        ]
        if n_classes_y == 0 or n_classes_x == 0 or not live:
            return
        reps_y = torch.as_tensor(axis_y.representatives, device=device)
        reps_x = torch.as_tensor(axis_x.representatives, device=device)
        # (P_y, P_x, C): inverse norms of the representatives' atoms
        inverse_a = inverse_norms[block.node_a][:, reps_y[:, 0]][:, :, reps_x[:, 0]].permute(
            1, 2, 0
        )
        inverse_b = inverse_norms[block.node_b][:, reps_y[:, 1]][:, :, reps_x[:, 1]].permute(
            1, 2, 0
        )
        classes_y, weights_y = _classes_to_evaluate(axis_y)
        # per live contribution: the y tap pairs the evaluated classes use, and per class
        # the rows of those (a y-class uses few of them)
        taps_y, tap_rows_y = [], []
        for index in live:
            windows = axis_y.windows[index]
            used = sorted(set().union(*[np.nonzero(windows[p])[0].tolist() for p in classes_y]))
            row_of = {tap_pair: i for i, tap_pair in enumerate(used)}
            taps_y.append(axis_y.taps[index][np.array(used, dtype=np.int64)].reshape(-1, 2))
            tap_rows_y.append(
                {
                    p: torch.as_tensor(
                        [row_of[t] for t in np.nonzero(windows[p])[0].tolist()],
                        dtype=torch.long,
                        device=device,
                    )
                    for p in classes_y
                }
            )
        windows_x = [
            torch.as_tensor(axis_x.windows[index], dtype=dtype, device=device) for index in live
        ]
        sizes = [(len(ty), len(axis_x.taps[index])) for ty, index in zip(taps_y, live)]
        product_bytes = sum(ly * lx for ly, lx in sizes) * channels_a * channels_b * 8
        whole = product_bytes <= self.memory_budget // 4
        products = [
            tap_products(*block.contributions[index], ty, axis_x.taps[index], dtype, device)
            if whole and len(ty)
            else None
            for ty, index in zip(taps_y, live)
        ]
        chunk = (
            channels_a
            if whole
            else self._chunk_rows(8 * channels_b * 2 * sum(a * b for a, b in sizes), channels_a)
        )
        grad = torch.is_grad_enabled()
        for c0 in range(0, channels_a, chunk):
            c1 = min(channels_a, c0 + chunk)
            chunk_products = []
            for n, index in enumerate(live):
                q = products[n]
                if q is None and sizes[n][0]:
                    q = tap_products(
                        *block.contributions[index],
                        taps_y[n],
                        axis_x.taps[index],
                        dtype,
                        device,
                        (c0, c1),
                    )
                chunk_products.append(
                    None
                    if q is None
                    else q.reshape(sizes[n][0], sizes[n][1], (c1 - c0) * channels_b)
                )
            rows = torch.arange(c0, c1, device=device)
            for p in classes_y:
                entries = None
                for n, index in enumerate(live):
                    tap_rows = tap_rows_y[n][p]
                    if len(tap_rows) == 0:
                        continue
                    piece_a, piece_b = block.contributions[index]
                    q = chunk_products[n]
                    summed = q[tap_rows].sum(0) if len(tap_rows) > 1 else q[tap_rows[0]]
                    part = windows_x[n] @ summed
                    if piece_a.sign * piece_b.sign < 0:
                        part = -part
                    entries = part if entries is None else entries + part
                if entries is None:
                    continue
                entries = entries.reshape(n_classes_x, c1 - c0, channels_b)
                if grad:
                    entries = entries * inverse_a[p, :, c0:c1, None] * inverse_b[p, :, None, :]
                else:
                    entries.mul_(inverse_a[p, :, c0:c1, None]).mul_(inverse_b[p, :, None, :])
                if block.diagonal and axis_y.on_diagonal[p]:  # G_ii: not an inner product
                    same_x = torch.as_tensor(np.nonzero(axis_x.on_diagonal)[0], device=device)
                    if grad:
                        keep = torch.ones(
                            (n_classes_x, c1 - c0, channels_b), dtype=dtype, device=device
                        )
                        keep[same_x[:, None], (rows - c0)[None, :], rows[None, :]] = 0
                        entries = entries * keep
                    else:
                        entries[same_x[:, None], (rows - c0)[None, :], rows[None, :]] = 0
                yield _ClassPairEntries((c0, c1), p, weights_y[p], entries)

    def _evaluate_by_classes(
        self, block: BlockPlan, inverse_norms: dict, order: int, coherence: bool
    ) -> tuple:
        """``sum |G_ij|^{2k}`` (one ordering), ``max |G_ij|`` and where, over a class block.

        Every class pair's entries stand for ``multiplicity_y * multiplicity_x``
        position pairs: the sum weighs them so, the maximum needs them once.
        """
        axis_y, axis_x = block.axes
        dtype, device = self.dictionary.dtype, self.dictionary.device
        channels_b = self.dictionary.node_shapes[block.node_b][0]
        n_classes_x = len(axis_x.multiplicity)
        multiplicity_x = torch.as_tensor(axis_x.multiplicity, dtype=dtype, device=device)
        fp = None
        best, best_at = None, None
        for (c0, c1), p, weight, entries in self._class_pair_entries(block, inverse_norms):
            energy = torch.linalg.vector_norm(entries, ord=2 * order, dim=(1, 2)).pow(2 * order)
            part = (energy * multiplicity_x).sum() * weight
            fp = part if fp is None else fp + part
            if coherence:
                low, high = torch.aminmax(entries.detach())
                magnitude = float(torch.maximum(high, -low))
                if best is None or magnitude > float(best):
                    flat = entries.detach().reshape(-1)
                    arg = int(flat.argmax()) if float(high) >= float(-low) else int(flat.argmin())
                    best = entries.reshape(-1)[arg].abs()
                    best_at = (c0, c1, p, arg)
        where = None
        if best_at is not None:
            c0, c1, p, arg = best_at
            q, c, c2 = np.unravel_index(arg, (n_classes_x, c1 - c0, channels_b))
            (y, y2), (x, x2) = axis_y.representatives[p], axis_x.representatives[q]
            i = np.ravel_multi_index((c0 + c, y, x), self.dictionary.node_shapes[block.node_a])
            j = np.ravel_multi_index((c2, y2, x2), self.dictionary.node_shapes[block.node_b])
            where = (int(i), int(j))
        if fp is None:
            fp = torch.zeros((), dtype=dtype, device=device)
        return fp, best, where

    def _evaluate_row_by_row(
        self, block: BlockPlan, inverse_norms: dict, order: int, coherence: bool
    ) -> tuple:
        """As :meth:`_evaluate_by_classes` for a block with a vector side or a ``Dense``
        operator: ``D_t[b]^T (D_t[a] e_i)`` for the atoms ``e_i`` of the smaller node, chunked."""
        d = self.dictionary
        small, other, swap = self._orient(block)
        dtype, device = d.dtype, d.device
        n_small = math.prod(d.node_shapes[small])
        n_other = math.prod(d.node_shapes[other])
        inverse_small = inverse_norms[small].reshape(-1)
        inverse_other = inverse_norms[other].reshape(-1)
        chunk = self._chunk_rows(n_other * 8 * 4, n_small)
        fp = None
        best, best_at = None, None
        for i0 in range(0, n_small, chunk):
            i1 = min(n_small, i0 + chunk)
            e = unit_batch(i0, i1, d.node_shapes[small], dtype, device)
            rows = None
            for piece_a, piece_b in block.contributions:
                piece_small, piece_other = (piece_b, piece_a) if swap else (piece_a, piece_b)
                part = piece_other.transpose(piece_small.column(e)).flatten(1)
                rows = part if rows is None else rows + part
            rows = rows * inverse_small[i0:i1, None] * inverse_other[None, :]
            if block.diagonal:
                mask = torch.zeros_like(rows, dtype=torch.bool)
                idx = torch.arange(i0, i1, device=device)
                mask[idx - i0, idx] = True
                rows = rows.masked_fill(mask, 0.0)
            magnitude = rows.abs()
            part = magnitude.pow(2 * order).sum()
            fp = part if fp is None else fp + part
            if coherence:
                m, arg = magnitude.reshape(-1).max(0)
                if best is None or float(m) > float(best):
                    best = m
                    best_at = (i0 + int(arg) // n_other, int(arg) % n_other)
        where = None
        if best_at is not None:
            where = (best_at[1], best_at[0]) if swap else best_at
        return fp, best, where


def _classes_to_evaluate(axis: AxisClasses) -> tuple[list, dict]:
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


def _explicit_squared_norms(piece: Piece, dtype, device) -> torch.Tensor:
    """``||D_t[a] e_i||^2`` for every atom of a piece that is not convolution-like."""
    n_node = math.prod(piece.node_shape)
    n_res = math.prod(piece.res_shape)
    if n_node <= n_res:
        eye = torch.eye(n_node, dtype=dtype, device=device).reshape(n_node, *piece.node_shape)
        return piece.column(eye).flatten(1).pow(2).sum(1).reshape(piece.node_shape)
    eye = torch.eye(n_res, dtype=dtype, device=device).reshape(n_res, *piece.res_shape)
    return piece.transpose(eye).pow(2).sum(0)


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


def tap_products(
    piece_a: Piece,
    piece_b: Piece,
    taps_y: np.ndarray,
    taps_x: np.ndarray,
    dtype,
    device,
    rows: tuple | None = None,
) -> torch.Tensor:
    """``Q[l, c, c'] = sum_i K_a[c, i, taps_a(l)] K_b[c', i, taps_b(l)]``, ``l = (ly, lx)``.

    One batched matmul over the tap pairs ``l`` (a selection piece gathers
    instead). ``rows=(c0, c1)`` restricts ``c`` to a chunk.

    Returns
    -------
    torch.Tensor
        ``(L_y * L_x, c1 - c0, C_b)``; ``(1, c1 - c0, C_b)`` for two selections.
    """
    c0, c1 = rows if rows is not None else (0, piece_a.node_shape[0])
    # tap index of every l = (ly, lx) on each side, as flat kernel positions
    flat = [
        torch.as_tensor(
            (taps_y[:, side, None] * piece.kernel_size[1] + taps_x[None, :, side]).reshape(-1),
            device=device,
        )
        for side, piece in ((0, piece_a), (1, piece_b))
    ]

    def gathered(piece: Piece, side: int, transpose: bool = False) -> torch.Tensor:
        # (L, c, i) or (L, i, c): indexing the leading tap axis yields contiguous operands
        k = piece.kernel()
        k = k.permute(2, 3, 1, 0) if transpose else k.permute(2, 3, 0, 1)
        return k.reshape(-1, k.shape[2], k.shape[3])[flat[side]]

    if piece_a.learned and piece_b.learned:
        # bmm is pathologically slow on strided views: hand it contiguous operands.
        kernel_a = gathered(piece_a, 0)[:, c0:c1].contiguous()
        return torch.bmm(kernel_a, gathered(piece_b, 1, transpose=True))
    # a selection piece of a scaled synthesis block contributes its scale per channel
    scale_a = None if piece_a.scale is None else piece_a.scale[c0:c1].to(dtype=dtype, device=device)
    scale_b = None if piece_b.scale is None else piece_b.scale.to(dtype=dtype, device=device)
    if piece_a.learned:
        kernel_a = gathered(piece_a, 0)[:, c0:c1]  # (L, c, i)
        if _is_identity(piece_b.selection, kernel_a.shape[2]):
            q = kernel_a
        else:
            selection = torch.as_tensor(piece_b.selection, device=device)
            q = kernel_a[:, :, selection.clamp_min(0)] * (selection >= 0).to(dtype)
        return q if scale_b is None else q * scale_b
    if piece_b.learned:
        kernel_b = gathered(piece_b, 1, transpose=True)  # (L, i, c')
        if c0 == 0 and _is_identity(piece_a.selection[c0:c1], kernel_b.shape[1]):
            q = kernel_b
        else:
            selection = torch.as_tensor(piece_a.selection[c0:c1], device=device)
            q = kernel_b[:, selection.clamp_min(0)] * (selection >= 0).to(dtype)[None, :, None]
        return q if scale_a is None else q * scale_a[None, :, None]
    q = selection_overlap(piece_a.selection[c0:c1], piece_b.selection, dtype, device)
    if scale_a is not None:
        q = q * scale_a[:, None]
    if scale_b is not None:
        q = q * scale_b[None, :]
    return q[None]


def _is_identity(selection: np.ndarray, size: int) -> bool:
    """Whether a channel selection is ``c -> c`` onto ``size`` channels (nothing to gather)."""
    return len(selection) == size and bool((selection == np.arange(size)).all())
