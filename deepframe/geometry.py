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

Two implementations sit behind ``method=``:

``"dense"``
    The obviously-correct reference: ``D.todense()``, normalise the columns,
    form the ``N x N`` Gram. It refuses with :class:`GramTooLargeError` when
    that would exceed ``memory_budget`` bytes.
``"structured"`` (default)
    Exact, never forms the Gram. ``G = sum_t D_t^T D_t`` over the residual
    terms ``t`` (row blocks), so a block ``(a, b)`` of ``G`` is the sum over
    the terms containing both nodes of ``D_t[a]^T D_t[b]``. Every
    convolution-like column block (conv, project, shortcut, identity between
    ``(C, H, W)`` maps) puts atom ``(c, y, x)`` on the residual entries
    ``(i, u(y, alpha), v(x, beta))`` with weight ``K[c, i, alpha, beta]``,
    where ``u(y, alpha)`` is a per-axis 0/1 incidence (``y s - p + alpha`` for
    a synthesis block ``A^T``, ``(y + p - alpha) / s`` when divisible for a
    target block ``P``; taps that leave the map are dropped: zero padding).
    Hence ``G[(c,y,x), (c',y',x')] = sum_{taps} Q[c, c', taps] T_y[y, y', alpha,
    alpha'] T_x[x, x', beta, beta']`` with ``Q = sum_i K_a K_b`` (one batched
    matmul per tap pair) and ``T`` the per-axis window matrices of docs/geometry.md
    ("``M_x Q M_y^T``"). Along each axis the pairs ``(y, y')`` are grouped into
    classes with the same tap pattern and the same atom-norm classes: in the
    interior one class per offset ``y' - y``, plus the few border classes
    (truncated taps, strides, odd sizes). Each class is evaluated once and
    weighted by its multiplicity, which is exact. Blocks that involve a dense
    (vector) activation are evaluated row by row through the operators.
    Torch throughout: any device, differentiable (used by
    :func:`minimize_frame_potential`), float64 for exactness checks.

Lower bounds: :func:`welch_bound`, :func:`frame_potential_bound` and the
architecture-dependent :func:`lower_bounds`. See ``docs/geometry.md`` for the
derivations and measured scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch

from . import ops
from .dictionary import (
    DEFAULT_MEMORY_BUDGET,
    GlobalDictionary,
    MemoryBudgetError,
    check_memory,
    dictionary,
    random_weights,
    resolve_memory_budget,
)
from .graph import validate

__all__ = [
    "GramTooLargeError",
    "GramMetrics",
    "FramePotentialResult",
    "welch_bound",
    "frame_potential_bound",
    "gram_metrics",
    "mutual_coherence",
    "frame_potential",
    "deep_frame_potential",
    "coherence_breakdown",
    "lower_bounds",
    "minimize_frame_potential",
    "metrics_report",
    "DEFAULT_MEMORY_BUDGET",
]

# DEFAULT_MEMORY_BUDGET (2 GiB, from deepframe.dictionary): the default cap on the dense
# reference's Gram and on structured work buffers; memory_budget=None means that default
# or the environment variable DEEPFRAME_MEMORY_BUDGET.

METHODS = ("structured", "dense")
FIELDS = ("real", "complex")


class GramTooLargeError(MemoryBudgetError):
    """The dense Gram would not fit the memory budget (use ``method="structured"``)."""


# ==========================================================================
# Welch bounds
# ==========================================================================
def _check_bound_args(n_atoms: int, dim: int, k: int, field_: str) -> None:
    for name, value in (("n_atoms", n_atoms), ("dim", dim), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if field_ not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, got {field_!r}")


def _welch_constant(dim: int, k: int, field_: str) -> float:
    """``c_k``: ``1 / binom(n + k - 1, k)`` (complex) or ``prod_{i<k} (2i+1)/(n+2i)`` (real)."""
    if field_ == "complex":
        return 1.0 / math.comb(dim + k - 1, k)
    out = 1.0
    for i in range(k):
        out *= (2 * i + 1) / (dim + 2 * i)
    return out


def frame_potential_bound(n_atoms: int, dim: int, k: int = 1, field: str = "real") -> float:
    """Order-``k`` Welch bound on the frame potential: ``sum_{i,j} |G_ij|^{2k} >= N^2 c_k``.

    For ``N`` unit vectors in ``R^n`` (``field="real"``) or ``C^n``
    (``field="complex"``), with

    * ``c_k = 1 / binom(n + k - 1, k)`` (complex; the dimension of the
      symmetric tensors ``Sym^k(C^n)``),
    * ``c_k = (1 * 3 * ... * (2k - 1)) / (n (n + 2) ... (n + 2k - 2))`` (real;
      the ``2k``-th moment of ``<x, e>`` for ``x`` uniform on the sphere).

    ``k = 1`` gives ``FP >= N^2 / n`` in both fields, attained exactly by unit
    norm tight frames.

    Parameters
    ----------
    n_atoms : int
        ``N``.
    dim : int
        ``n``, the dimension of the ambient space (rows of ``D``).
    k : int
        Order.
    field : ``"real"`` or ``"complex"``

    Returns
    -------
    float
    """
    _check_bound_args(n_atoms, dim, k, field)
    return float(n_atoms) ** 2 * _welch_constant(dim, k, field)


def welch_bound(n_atoms: int, dim: int, k: int = 1, field: str = "real") -> float:
    """Order-``k`` Welch lower bound on the mutual coherence of ``N`` unit vectors in dimension n.

    From :func:`frame_potential_bound` and ``|G_ii| = 1``:
    ``N + N (N - 1) mu^{2k} >= sum_{i,j} |G_ij|^{2k} >= N^2 c_k``, so

        mu >= ((N c_k - 1) / (N - 1))^(1 / (2k))

    clipped at 0 when the right-hand side is not positive (``N <= n`` for
    ``k = 1``: an orthonormal basis has coherence 0). ``k = 1`` gives the
    classical ``mu >= sqrt((N - n) / (n (N - 1)))``, attained by equiangular
    tight frames, e.g. the simplex (``N = n + 1``, ``mu = 1 / n``).

    Parameters
    ----------
    n_atoms, dim, k, field :
        As in :func:`frame_potential_bound`.

    Returns
    -------
    float
        The bound; ``0.0`` for ``N = 1`` (no pairs).
    """
    _check_bound_args(n_atoms, dim, k, field)
    if n_atoms == 1:
        return 0.0
    value = (n_atoms * _welch_constant(dim, k, field) - 1.0) / (n_atoms - 1)
    return value ** (1.0 / (2 * k)) if value > 0 else 0.0


# ==========================================================================
# results
# ==========================================================================
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


@dataclass
class FramePotentialResult:
    """Result of :func:`minimize_frame_potential`.

    Attributes
    ----------
    weights : dict
        ``{key: tensor}`` final weights (detached, on the device used).
    history : list of float
        Deep frame potential before every step, then after the last one
        (``steps + 1`` values).
    dictionary : GlobalDictionary
        The dictionary with the final weights.
    initial_weights : dict
        The seeded starting point (on the CPU).
    """

    weights: dict
    history: list
    dictionary: GlobalDictionary
    initial_weights: dict

    @property
    def initial(self) -> float:
        """Deep frame potential of the random starting weights."""
        return self.history[0]

    @property
    def final(self) -> float:
        """Deep frame potential of the final weights."""
        return self.history[-1]


# ==========================================================================
# column pieces: D_t[a] for one term t and one node a
# ==========================================================================
@dataclass(eq=False)
class _Piece:
    """Column block ``D_t[a]`` of term ``t`` at node ``a``.

    Synthesis (``role="synth"``): ``D_t[a] = A_t^T``; target: ``D_t[a] = -P_ta``.
    A *conv-like* piece (both sides ``(C, H, W)``, operator conv / project /
    shortcut / identity) is described by a channel map (learned ``K`` of shape
    ``(C_a, C_res, kh, kw)`` or a selection ``sel[c]``) and per-axis incidence
    tables ``inc[axis][y, alpha]`` (residual index or -1).
    """

    term: int
    node: Any
    role: str
    op: ops.Operator
    node_shape: tuple
    res_shape: tuple
    conv_like: bool = False
    learned: bool = False
    kernel_size: tuple = (1, 1)
    inc: tuple = ()
    sel: np.ndarray | None = None
    scale: torch.Tensor | None = None  # per node channel: a Scaled synthesis block (B S)

    @property
    def base(self) -> ops.Operator:
        """The operator without its channel scale (:class:`deepframe.ops.Scaled`)."""
        return self.op.inner if isinstance(self.op, ops.Scaled) else self.op

    @property
    def sign(self) -> float:
        return 1.0 if self.role == "synth" else -1.0

    def column(self, e: torch.Tensor) -> torch.Tensor:
        """``D_t[a] e`` for a batch ``(B, *node_shape)`` -> ``(B, *res_shape)``."""
        return self.op.adjoint(e) if self.role == "synth" else -self.op.forward(e)

    def transpose(self, r: torch.Tensor) -> torch.Tensor:
        """``D_t[a]^T r`` for a batch ``(B, *res_shape)`` -> ``(B, *node_shape)``."""
        return self.op.forward(r) if self.role == "synth" else -self.op.adjoint(r)

    def kernel(self) -> torch.Tensor:
        """Learned channel map ``K[c_node, c_res, alpha, beta]`` (times the node's scale)."""
        w = self.base.weight
        if self.role != "synth":
            return w.transpose(0, 1)
        return w if self.scale is None else w * self.scale.to(w).reshape(-1, 1, 1, 1)

    @property
    def parametrised(self) -> bool:
        """Whether the operator has learned weights (else its entries are constants)."""
        return self.base.weight is not None

    def support_piece(self) -> _Piece:
        """The same piece with every learned weight replaced by 1 and no channel scale
        (float64; the architecture's support patterns)."""
        if not self.parametrised:
            if self.scale is None:
                return self
            return dataclasses.replace(self, op=self.base, scale=None)
        op = self.base
        ones = torch.ones(op.weight.shape, dtype=torch.float64, device=op.weight.device)
        if isinstance(op, ops.Conv):
            new = ops.Conv(ones, op.in_shape, stride=op.stride, padding=op.padding)
        else:
            new = ops.Dense(ones, op.in_shape)
        return dataclasses.replace(self, op=new, scale=None)


def _incidence(
    size: int, res_size: int, k: int, stride: int, padding: int, transposed: bool
) -> np.ndarray:
    """``inc[y, alpha]``: the residual index atom ``y`` reaches through tap ``alpha``, or -1.

    ``transposed`` (synthesis block ``A^T`` of ``A = conv(stride, padding)``):
    ``u = y s - p + alpha``. Otherwise (target block ``P = conv``): ``u`` with
    ``u s - p + alpha = y``. Indices outside ``[0, res_size)`` are zero padding.
    """
    y = np.arange(size)[:, None]
    a = np.arange(k)[None, :]
    if transposed:
        u = y * stride - padding + a
        ok = np.ones_like(u, dtype=bool)
    else:
        num = y + padding - a
        ok = num % stride == 0
        u = num // stride
    ok &= (u >= 0) & (u < res_size)
    return np.where(ok, u, -1)


def _make_piece(ti: int, node, role: str, op: ops.Operator) -> _Piece:
    if role == "synth":
        node_shape, res_shape = op.out_shape, op.in_shape
    else:
        node_shape, res_shape = op.in_shape, op.out_shape
    piece = _Piece(ti, node, role, op, tuple(node_shape), tuple(res_shape))
    if isinstance(op, ops.Scaled):  # batch norm folded: the node's atoms scaled per channel
        piece.scale = op.scale
        op = op.inner
    if len(node_shape) != 3 or len(res_shape) != 3 or isinstance(op, ops.Dense):
        return piece
    transposed = role == "synth"
    c_node = node_shape[0]
    if isinstance(op, ops.Conv):
        kh, kw = op.kernel_size
        stride, padding = op.stride, op.padding
        piece.learned = True
    elif isinstance(op, ops.Identity):
        kh = kw = 1
        stride, padding = 1, 0
        piece.sel = np.arange(c_node)
    elif isinstance(op, ops.Shortcut):
        kh = kw = 1
        stride, padding = op.stride, 0
        c_res = res_shape[0]
        sel = np.arange(c_node) + (-op.pad_before if transposed else op.pad_before)
        piece.sel = np.where((sel >= 0) & (sel < c_res), sel, -1)
    else:  # pragma: no cover - every operator kind is handled above
        return piece
    piece.conv_like = True
    piece.kernel_size = (kh, kw)
    piece.inc = (
        _incidence(node_shape[1], res_shape[1], kh, stride, padding, transposed),
        _incidence(node_shape[2], res_shape[2], kw, stride, padding, transposed),
    )
    return piece


# ==========================================================================
# block plans
# ==========================================================================
@dataclass(eq=False)
class _AxisClasses:
    """Classes of atom-position pairs ``(y, y')`` along one axis of a block."""

    rep: np.ndarray  # (P, 2) representative (y, y')
    mult: np.ndarray  # (P,) multiplicity
    same: np.ndarray  # (P,) bool: y == y' in a diagonal block
    taps: list  # per contribution: (L, 2) int array of tap pairs (alpha, alpha')
    window: list  # per contribution: (P, L) 0/1 float64 array
    mirror: np.ndarray | None = None  # diagonal blocks: the class of (y', y) for class (y, y')


@dataclass(eq=False)
class _Block:
    a: Any
    b: Any
    ia: int
    ib: int
    contribs: list  # [(piece_a, piece_b)]
    classes: bool = True
    axes: tuple = ()
    structural: int | None = None  # off-diagonal structural nonzeros of block (a, b) only


def _axis_classes(
    contribs: list, axis: int, cls_a: np.ndarray, cls_b: np.ndarray, diagonal: bool
) -> _AxisClasses:
    n_c = len(contribs)
    table: dict = {}
    for ci, (pa, pb) in enumerate(contribs):
        inc_a, inc_b = pa.inc[axis], pb.inc[axis]
        inverse = defaultdict(list)
        for y2, a2 in zip(*np.nonzero(inc_b >= 0)):
            inverse[int(inc_b[y2, a2])].append((int(y2), int(a2)))
        for y, a1 in zip(*np.nonzero(inc_a >= 0)):
            for y2, a2 in inverse.get(int(inc_a[y, a1]), ()):
                key = (int(y), y2)
                if key not in table:
                    table[key] = [set() for _ in range(n_c)]
                table[key][ci].add((int(a1), a2))
    groups: dict = {}
    for (y, y2), taps in sorted(table.items()):
        sig = (
            int(cls_a[y]),
            int(cls_b[y2]),
            diagonal and y == y2,
            tuple(frozenset(t) for t in taps),
        )
        if sig in groups:
            groups[sig][2] += 1
        else:
            groups[sig] = [y, y2, 1, taps]
    entries = list(groups.values())
    mirror = None
    if diagonal:
        sig_of = {}
        for (y, y2), taps in table.items():
            sig_of[(y, y2)] = (
                int(cls_a[y]),
                int(cls_b[y2]),
                y == y2,
                tuple(frozenset(t) for t in taps),
            )
        index = {sig: p for p, sig in enumerate(groups)}
        mirror = np.array([index[sig_of[(e[1], e[0])]] for e in entries], dtype=np.int64)
    rep = np.array([[e[0], e[1]] for e in entries], dtype=np.int64).reshape(-1, 2)
    mult = np.array([e[2] for e in entries], dtype=np.int64)
    same = np.array([diagonal and e[0] == e[1] for e in entries], dtype=bool)
    taps_out, windows = [], []
    for ci in range(n_c):
        used = sorted(set().union(*[e[3][ci] for e in entries])) if entries else []
        index = {t: i for i, t in enumerate(used)}
        window = np.zeros((len(entries), len(used)))
        for p, e in enumerate(entries):
            for t in e[3][ci]:
                window[p, index[t]] = 1.0
        taps_out.append(np.array(used, dtype=np.int64).reshape(-1, 2))
        windows.append(window)
    return _AxisClasses(rep, mult, same, taps_out, windows, mirror)


def _norm_classes(pieces: list, axis: int, size: int) -> np.ndarray:
    """Positions along ``axis`` whose atoms have the same norm (same tap validity everywhere)."""
    if any(not p.conv_like for p in pieces):
        return np.arange(size)
    ids: dict = {}
    out = np.empty(size, dtype=np.int64)
    for y in range(size):
        sig = tuple(tuple((p.inc[axis][y] >= 0).tolist()) for p in pieces)
        out[y] = ids.setdefault(sig, len(ids))
    return out


def _atom_location(d: GlobalDictionary, node, flat_index: int) -> dict:
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


class _StructuredGram:
    """Exact structured evaluation of the normalised Gram's metrics for one dictionary.

    Building the plan (pieces, blocks, position classes) depends only on the
    architecture; :meth:`evaluate` reads the current weights, so one plan
    serves every step of :func:`minimize_frame_potential`.
    """

    def __init__(self, d: GlobalDictionary, *, memory_budget: int | str | None = None):
        self.d = d
        self.memory_budget = resolve_memory_budget(memory_budget)
        check_memory(d.graph, "metrics", dtype=d.dtype, memory_budget=self.memory_budget)
        self.node_index = {j: i for i, j in enumerate(d.nodes)}
        self.pieces: dict = {j: [] for j in d.nodes}
        term_pieces = []
        for ti, t in enumerate(d.terms):
            members = [_make_piece(ti, t.synth, "synth", t.op)]
            members += [_make_piece(ti, k, "target", p) for k, p in t.targets]
            for p in members:
                self.pieces[p.node].append(p)
            term_pieces.append(members)
        by_pair: dict = defaultdict(list)
        for members in term_pieces:
            for i, p in enumerate(members):
                for q in members[i:]:
                    ip, iq = self.node_index[p.node], self.node_index[q.node]
                    by_pair[(min(ip, iq), max(ip, iq))].append((p, q) if ip <= iq else (q, p))
        self.classes = {}
        for j in d.nodes:
            shape = d.node_shapes[j]
            if len(shape) == 3:
                self.classes[j] = (
                    _norm_classes(self.pieces[j], 0, shape[1]),
                    _norm_classes(self.pieces[j], 1, shape[2]),
                )
        self.blocks = []
        for (ia, ib), contribs in sorted(by_pair.items()):
            a, b = d.nodes[ia], d.nodes[ib]
            block = _Block(a, b, ia, ib, contribs)
            block.classes = all(pa.conv_like and pb.conv_like for pa, pb in contribs)
            if block.classes:
                ca, cb = self.classes[a], self.classes[b]
                block.axes = tuple(
                    _axis_classes(contribs, ax, ca[ax], cb[ax], ia == ib) for ax in (0, 1)
                )
            self.blocks.append(block)

    # -- sizes -----------------------------------------------------------------
    def _chunk(self, per_row_bytes: int, rows: int) -> int:
        budget = max(self.memory_budget // 8, 1 << 20)
        return int(max(1, min(rows, budget // max(per_row_bytes, 1))))

    # -- norms -----------------------------------------------------------------
    def _explicit_sqnorms(self, piece: _Piece, dtype, device) -> torch.Tensor:
        n_node = math.prod(piece.node_shape)
        n_res = math.prod(piece.res_shape)
        if n_node <= n_res:
            eye = torch.eye(n_node, dtype=dtype, device=device).reshape(n_node, *piece.node_shape)
            return piece.column(eye).flatten(1).pow(2).sum(1).reshape(piece.node_shape)
        eye = torch.eye(n_res, dtype=dtype, device=device).reshape(n_res, *piece.res_shape)
        return piece.transpose(eye).pow(2).sum(0)

    def sqnorms(self, *, support: bool = False) -> dict:
        """``||d_i||^2`` per node as tensors of the node's shape (``support``: weights := 1)."""
        dtype, device = self.d.dtype, self.d.device
        if support:
            dtype = torch.float64
        out = {}
        for j in self.d.nodes:
            total = torch.zeros(self.d.node_shapes[j], dtype=dtype, device=device)
            for piece in self.pieces[j]:
                if support:
                    piece = piece.support_piece()
                if not piece.conv_like:
                    total = total + self._explicit_sqnorms(piece, dtype, device)
                    continue
                vy = torch.as_tensor(piece.inc[0] >= 0, dtype=dtype, device=device)
                vx = torch.as_tensor(piece.inc[1] >= 0, dtype=dtype, device=device)
                if piece.learned:
                    k = piece.kernel().to(dtype)
                    energy = (k * k).sum(1) if not support else torch.ones_like(k[:, 0])
                    total = total + torch.einsum("cab,ya,xb->cyx", energy, vy, vx)
                else:
                    keep = torch.as_tensor(piece.sel >= 0, dtype=dtype, device=device)
                    if piece.scale is not None:
                        keep = keep * piece.scale.to(dtype=dtype, device=device).square()
                    total = total + keep[:, None, None] * (vy[:, 0, None] * vx[None, :, 0])
            out[j] = total
        return out

    # -- structural counts (weight independent) -------------------------------
    def structural_nonzeros(self) -> int:
        """``N_nz``: off-diagonal Gram entries that are nonzero for some weights."""
        total = 0
        for block in self.blocks:
            if block.structural is None:
                block.structural = (
                    self._structural_classes(block)
                    if block.classes
                    else self._structural_full(block)
                )
            total += block.structural * (1 if block.ia == block.ib else 2)
        return total

    def _structural_classes(self, block: _Block) -> int:
        """Exact ``N_nz`` share of a class block.

        Entry ``(c, c')`` of class pair ``(p, q)`` is structurally nonzero iff some
        parametrised contribution reaches it (its channel maps overlap and its
        windows at ``p`` and ``q`` are nonempty: a sum of products of learned
        weights, a nonzero polynomial) or the parameter-free contributions
        (identity, shortcut) do not cancel there. Class pairs with the same
        pattern are counted together.
        """
        ay, ax = block.axes
        c_a = self.d.node_shapes[block.a][0]
        c_b = self.d.node_shapes[block.b][0]
        groups: dict = defaultdict(int)
        for p in range(len(ay.mult)):
            for q in range(len(ax.mult)):
                key = []
                for ci, (pa, pb) in enumerate(block.contribs):
                    on_y = ay.window[ci][p]
                    on_x = ax.window[ci][q]
                    if pa.learned or pb.learned:
                        key.append(bool(on_y.any() and on_x.any()))
                    else:  # a single tap each: the coefficient of the 0/1 channel pattern
                        key.append(float(on_y.sum() * on_x.sum()))
                key.append(bool(ay.same[p] and ax.same[q]))
                groups[tuple(key)] += int(ay.mult[p] * ax.mult[q])
        count = 0
        for key, mult in groups.items():
            hit = torch.zeros((c_a, c_b), dtype=torch.bool)
            const = torch.zeros((c_a, c_b), dtype=torch.float64)
            for ci, (pa, pb) in enumerate(block.contribs):
                if not key[ci]:
                    continue
                if pa.learned or pb.learned:
                    rows = (
                        torch.ones(c_a, dtype=torch.bool)
                        if pa.learned
                        else torch.as_tensor(pa.sel >= 0)
                    )
                    cols = (
                        torch.ones(c_b, dtype=torch.bool)
                        if pb.learned
                        else torch.as_tensor(pb.sel >= 0)
                    )
                    hit |= rows[:, None] & cols[None, :]
                else:
                    const += (
                        pa.sign
                        * pb.sign
                        * key[ci]
                        * _select_select(pa.sel, pb.sel, torch.float64, "cpu")
                    )
            hit |= const != 0
            if key[-1]:
                hit.fill_diagonal_(False)
            count += int(hit.sum()) * mult
        return count

    def _structural_full(self, block: _Block) -> int:
        small, other, swap = self._orient(block)
        n_small = math.prod(self.d.node_shapes[small])
        n_other = math.prod(self.d.node_shapes[other])
        chunk = self._chunk(n_other * 8 * 4, n_small)
        count = 0
        for i0 in range(0, n_small, chunk):
            i1 = min(n_small, i0 + chunk)
            e = _unit_batch(i0, i1, self.d.node_shapes[small], torch.float64, self.d.device)
            supp = torch.zeros((i1 - i0, n_other), dtype=torch.float64, device=self.d.device)
            const = torch.zeros_like(supp)
            with torch.no_grad():
                for pa, pb in block.contribs:
                    ps, po = (pb, pa) if swap else (pa, pb)
                    if ps.parametrised or po.parametrised:
                        s1, o1 = ps.support_piece(), po.support_piece()
                        supp += o1.transpose(_abs_column(s1, e)).flatten(1).abs()
                    else:  # the architecture's constants: channel scales left out
                        s1, o1 = ps.support_piece(), po.support_piece()
                        const += o1.transpose(s1.column(e.to(self.d.dtype))).flatten(1).double()
            hit = (supp > 0) | (const != 0)
            if block.ia == block.ib:
                idx = torch.arange(i0, i1, device=self.d.device)
                hit[idx - i0, idx] = False
            count += int(hit.sum())
        return count

    def _orient(self, block: _Block):
        n_a = math.prod(self.d.node_shapes[block.a])
        n_b = math.prod(self.d.node_shapes[block.b])
        if n_a <= n_b:
            return block.a, block.b, False
        return block.b, block.a, True

    # -- evaluation ------------------------------------------------------------
    def evaluate(self, *, order: int = 1, coherence: bool = True, details: bool = False) -> dict:
        """Metrics of the normalised Gram for the current weights.

        Returns a dict of tensors: ``offdiag`` (``sum_{i != j} |G_ij|^{2k}``),
        ``nonzero_atoms`` (int), and, with ``coherence=True``, ``coherence``
        (tensor) and ``where`` (block, atom pair); with ``details=True`` also
        ``blocks`` (list of per-block dicts).
        """
        sq = self.sqnorms()
        inv = {
            j: torch.where(
                v > 0, v.clamp_min(torch.finfo(v.dtype).tiny).rsqrt(), torch.zeros_like(v)
            )
            for j, v in sq.items()
        }
        nonzero = int(sum(int((v > 0).sum()) for v in sq.values()))
        offdiag = None
        best = None
        best_where = None
        per_block = []
        for block in self.blocks:
            if block.classes:
                fp, mx, where = self._eval_classes(block, inv, order, coherence)
            else:
                fp, mx, where = self._eval_full(block, inv, order, coherence)
            factor = 1 if block.ia == block.ib else 2
            offdiag = fp * factor if offdiag is None else offdiag + fp * factor
            if coherence and mx is not None and (best is None or float(mx) > float(best)):
                best, best_where = mx, (block, where)
            if details:
                per_block.append((block, fp * factor, mx, where))
        zero = torch.zeros((), dtype=self.d.dtype, device=self.d.device)
        out = {"offdiag": offdiag if offdiag is not None else zero, "nonzero_atoms": nonzero}
        if coherence:
            out["coherence"] = best if best is not None else zero
            out["where"] = best_where
        if details:
            out["blocks"] = per_block
        return out

    def _eval_classes(self, block: _Block, inv: dict, order: int, coherence: bool):
        ay, ax = block.axes
        dtype, device = self.d.dtype, self.d.device
        c_a = self.d.node_shapes[block.a][0]
        c_b = self.d.node_shapes[block.b][0]
        py, px = len(ay.mult), len(ax.mult)
        zero = torch.zeros((), dtype=dtype, device=device)
        live = [ci for ci in range(len(block.contribs)) if len(ay.taps[ci]) and len(ax.taps[ci])]
        if py == 0 or px == 0 or not live:
            return zero, None, None
        ry = torch.as_tensor(ay.rep, device=device)
        rx = torch.as_tensor(ax.rep, device=device)
        inv_a = inv[block.a][:, ry[:, 0]][:, :, rx[:, 0]].permute(1, 2, 0)  # (py, px, c_a)
        inv_b = inv[block.b][:, ry[:, 1]][:, :, rx[:, 1]].permute(1, 2, 0)  # (py, px, c_b)
        mult_x = torch.as_tensor(ax.mult, dtype=dtype, device=device)
        # Entry (c, c') of class pair (p, q):
        #   R = sum_contributions sign sum_{ly in window_y[p]} sum_{lx in window_x[q]} Q[ly, lx]
        # (docs/geometry.md's M_y Q M_x^T). A y-class uses at most kernel_size taps: sum those
        # slices of Q, then one small GEMM with the x windows. In a diagonal block the
        # class pair of (y', y), (x', x) holds the transposed entries of that of (y, y'),
        # (x, x'): evaluate the y-classes p <= mirror(p) only, the others by weight 2.
        if ay.mirror is not None:
            classes = [p for p in range(py) if p <= ay.mirror[p]]
            weight = {p: (2.0 if p < ay.mirror[p] else 1.0) * float(ay.mult[p]) for p in classes}
        else:
            classes = list(range(py))
            weight = {p: float(ay.mult[p]) for p in classes}
        taps_y, rows_y = [], []
        for ci in live:
            used = sorted(set().union(*[np.nonzero(ay.window[ci][p])[0].tolist() for p in classes]))
            local = {t: i for i, t in enumerate(used)}
            taps_y.append(ay.taps[ci][np.array(used, dtype=np.int64)].reshape(-1, 2))
            rows_y.append(
                {
                    p: torch.as_tensor(
                        [local[t] for t in np.nonzero(ay.window[ci][p])[0].tolist()],
                        dtype=torch.long,
                        device=device,
                    )
                    for p in classes
                }
            )
        wx = [torch.as_tensor(ax.window[ci], dtype=dtype, device=device) for ci in live]
        sizes = [(len(ty), len(ax.taps[ci])) for ty, ci in zip(taps_y, live)]
        q_bytes = sum(ly * lx for ly, lx in sizes) * c_a * c_b * 8
        whole = q_bytes <= self.memory_budget // 4
        products = [
            _tap_products(*block.contribs[ci], ty, ax.taps[ci], dtype, device)
            if whole and len(ty)
            else None
            for ty, ci in zip(taps_y, live)
        ]
        chunk = c_a if whole else self._chunk(8 * c_b * 2 * sum(a * b for a, b in sizes), c_a)
        grad = torch.is_grad_enabled()
        fp = None
        best, best_at = None, None
        for c0 in range(0, c_a, chunk):
            c1 = min(c_a, c0 + chunk)
            qs = []
            for n, ci in enumerate(live):
                q = products[n]
                if q is None and sizes[n][0]:
                    q = _tap_products(
                        *block.contribs[ci], taps_y[n], ax.taps[ci], dtype, device, (c0, c1)
                    )
                qs.append(
                    None if q is None else q.reshape(sizes[n][0], sizes[n][1], (c1 - c0) * c_b)
                )
            rows = torch.arange(c0, c1, device=device)
            for p in classes:
                r = None
                for n, ci in enumerate(live):
                    idx = rows_y[n][p]
                    if len(idx) == 0:
                        continue
                    pa, pb = block.contribs[ci]
                    s1 = qs[n][idx].sum(0) if len(idx) > 1 else qs[n][idx[0]]
                    part = wx[n] @ s1
                    if pa.sign * pb.sign < 0:
                        part = -part
                    r = part if r is None else r + part
                if r is None:
                    continue
                r = r.reshape(px, c1 - c0, c_b)
                if grad:
                    r = r * inv_a[p, :, c0:c1, None] * inv_b[p, :, None, :]
                else:
                    r.mul_(inv_a[p, :, c0:c1, None]).mul_(inv_b[p, :, None, :])
                if block.ia == block.ib and ay.same[p]:
                    diag = torch.as_tensor(np.nonzero(ax.same)[0], device=device)
                    if grad:
                        keep = torch.ones((px, c1 - c0, c_b), dtype=dtype, device=device)
                        keep[diag[:, None], (rows - c0)[None, :], rows[None, :]] = 0
                        r = r * keep
                    else:
                        r[diag[:, None], (rows - c0)[None, :], rows[None, :]] = 0
                energy = torch.linalg.vector_norm(r, ord=2 * order, dim=(1, 2)).pow(2 * order)
                part = (energy * mult_x).sum() * weight[p]
                fp = part if fp is None else fp + part
                if coherence:
                    lo, hi = torch.aminmax(r.detach())
                    m = float(torch.maximum(hi, -lo))
                    if best is None or m > float(best):
                        flat = r.detach().reshape(-1)
                        arg = int(flat.argmax()) if float(hi) >= float(-lo) else int(flat.argmin())
                        best = r.reshape(-1)[arg].abs()
                        best_at = (c0, c1, p, arg)
        where = None
        if best_at is not None:
            c0, c1, p_y, arg = best_at
            p_x, c, c2 = np.unravel_index(arg, (px, c1 - c0, c_b))
            (y, y2), (x, x2) = ay.rep[p_y], ax.rep[p_x]
            i = np.ravel_multi_index((c0 + c, y, x), self.d.node_shapes[block.a])
            j = np.ravel_multi_index((c2, y2, x2), self.d.node_shapes[block.b])
            where = (int(i), int(j))
        return (fp if fp is not None else zero), best, where

    def _eval_full(self, block: _Block, inv: dict, order: int, coherence: bool):
        small, other, swap = self._orient(block)
        dtype, device = self.d.dtype, self.d.device
        n_small = math.prod(self.d.node_shapes[small])
        n_other = math.prod(self.d.node_shapes[other])
        inv_s = inv[small].reshape(-1)
        inv_o = inv[other].reshape(-1)
        chunk = self._chunk(n_other * 8 * 4, n_small)
        fp = None
        best, best_at = None, None
        for i0 in range(0, n_small, chunk):
            i1 = min(n_small, i0 + chunk)
            e = _unit_batch(i0, i1, self.d.node_shapes[small], dtype, device)
            rows = None
            for pa, pb in block.contribs:
                ps, po = (pb, pa) if swap else (pa, pb)
                part = po.transpose(ps.column(e)).flatten(1)
                rows = part if rows is None else rows + part
            rows = rows * inv_s[i0:i1, None] * inv_o[None, :]
            if block.ia == block.ib:
                mask = torch.zeros_like(rows, dtype=torch.bool)
                idx = torch.arange(i0, i1, device=device)
                mask[idx - i0, idx] = True
                rows = rows.masked_fill(mask, 0.0)
            mag = rows.abs()
            part = mag.pow(2 * order).sum()
            fp = part if fp is None else fp + part
            if coherence:
                m, arg = mag.reshape(-1).max(0)
                if best is None or float(m) > float(best):
                    best = m
                    best_at = (i0 + int(arg) // n_other, int(arg) % n_other)
        where = None
        if best_at is not None:
            where = (best_at[1], best_at[0]) if swap else best_at
        return fp, best, where


def _unit_batch(i0: int, i1: int, shape: tuple, dtype, device) -> torch.Tensor:
    n = math.prod(shape)
    e = torch.zeros((i1 - i0, n), dtype=dtype, device=device)
    e[torch.arange(i1 - i0, device=device), torch.arange(i0, i1, device=device)] = 1
    return e.reshape(i1 - i0, *shape)


def _abs_column(piece: _Piece, e: torch.Tensor) -> torch.Tensor:
    return piece.column(e).abs()


def _select_select(sel_a: np.ndarray, sel_b: np.ndarray, dtype, device) -> torch.Tensor:
    a = torch.as_tensor(sel_a, device=device)
    b = torch.as_tensor(sel_b, device=device)
    return ((a[:, None] == b[None, :]) & (a[:, None] >= 0)).to(dtype)


def _tap_products(
    pa: _Piece,
    pb: _Piece,
    taps_y: np.ndarray,
    taps_x: np.ndarray,
    dtype,
    device,
    rows: tuple | None = None,
) -> torch.Tensor:
    """``Q[l, c, c'] = sum_i K_a[c, i, taps_a(l)] K_b[c', i, taps_b(l)]``, ``l = (ly, lx)``.

    ``rows=(c0, c1)`` restricts ``c`` to a chunk.
    """
    c0, c1 = rows if rows is not None else (0, pa.node_shape[0])
    # tap index of every l = (ly, lx) on each side, as flat kernel positions
    flat = [
        torch.as_tensor(
            (taps_y[:, side, None] * pk.kernel_size[1] + taps_x[None, :, side]).reshape(-1),
            device=device,
        )
        for side, pk in ((0, pa), (1, pb))
    ]

    def gathered(piece, side, transpose=False):
        # (L, c, i) or (L, i, c): indexing the leading tap axis yields contiguous operands
        k = piece.kernel()
        k = k.permute(2, 3, 1, 0) if transpose else k.permute(2, 3, 0, 1)
        return k.reshape(-1, k.shape[2], k.shape[3])[flat[side]]

    if pa.learned and pb.learned:
        # bmm is pathologically slow on strided views: hand it contiguous operands.
        ka = gathered(pa, 0)[:, c0:c1].contiguous()
        return torch.bmm(ka, gathered(pb, 1, transpose=True))
    # a selection piece of a scaled synthesis block contributes its scale per channel
    scale_a = None if pa.scale is None else pa.scale[c0:c1].to(dtype=dtype, device=device)
    scale_b = None if pb.scale is None else pb.scale.to(dtype=dtype, device=device)
    if pa.learned:
        ka = gathered(pa, 0)[:, c0:c1]  # (L, c, i)
        if _is_identity(pb.sel, ka.shape[2]):
            q = ka
        else:
            sel = torch.as_tensor(pb.sel, device=device)
            q = ka[:, :, sel.clamp_min(0)] * (sel >= 0).to(dtype)
        return q if scale_b is None else q * scale_b
    if pb.learned:
        kb = gathered(pb, 1, transpose=True)  # (L, i, c')
        if c0 == 0 and _is_identity(pa.sel[c0:c1], kb.shape[1]):
            q = kb
        else:
            sel = torch.as_tensor(pa.sel[c0:c1], device=device)
            q = kb[:, sel.clamp_min(0)] * (sel >= 0).to(dtype)[None, :, None]
        return q if scale_a is None else q * scale_a[None, :, None]
    q = _select_select(pa.sel[c0:c1], pb.sel, dtype, device)
    if scale_a is not None:
        q = q * scale_a[:, None]
    if scale_b is not None:
        q = q * scale_b[None, :]
    return q[None]


def _is_identity(sel: np.ndarray, size: int) -> bool:
    """Whether a channel selection is ``c -> c`` onto ``size`` channels (nothing to gather)."""
    return len(sel) == size and bool((sel == np.arange(size)).all())


# ==========================================================================
# the dense reference
# ==========================================================================
def _dense_matrix(d: GlobalDictionary, memory_budget: int) -> torch.Tensor:
    """``D`` as a dense float64 tensor; differentiable in the weights when grad is enabled."""
    n, big_n = d.shape
    _check_dense_budget(big_n, n, 8, memory_budget)
    if not torch.is_grad_enabled():
        return d.todense().to(torch.float64)
    eye = torch.eye(big_n, dtype=d.dtype, device=d.device)
    return d.matvec(eye).T.to(torch.float64)


def _check_dense_budget(big_n: int, n: int, itemsize: int, memory_budget: int | None) -> None:
    # D, its normalised copy and two N x N arrays (the Gram, and the identity batch
    # or the structure pattern)
    memory_budget = resolve_memory_budget(memory_budget)
    need = itemsize * (2 * big_n * big_n + 2 * n * big_n)
    if need > memory_budget:
        raise GramTooLargeError(
            f"method='dense' needs about {need / 2**30:.3g} GiB for the {big_n} x {big_n} Gram "
            f"of N={big_n} atoms in n={n} rows ({itemsize} bytes per entry), more than "
            f"memory_budget={memory_budget / 2**30:.3g} GiB; use method='structured' or raise "
            "memory_budget"
        )


def _normalised_gram(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = m.abs().pow(2).sum(0).sqrt()
    scale = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
    mn = m * scale.to(m.dtype)[None, :]
    return mn.conj().T @ mn, norms > 0


def _dense_structure(d: GlobalDictionary, memory_budget: int) -> torch.Tensor:
    """Structurally nonzero Gram entries of ``d``'s architecture, from two random weight draws.

    An entry that is nonzero for some weights is a nonzero polynomial in the
    weights, so it is nonzero at random weights with probability one;
    parameter-free cancellations (``-I + I``) are exact zeros in floating point.
    """
    pattern = None
    for seed in (101, 202):
        weights = random_weights(d.graph, seed=seed, dtype=torch.float64, device="cpu")
        dr = GlobalDictionary(d.graph, weights)
        m = _dense_matrix(dr, memory_budget).detach()
        hit = (m.T @ m) != 0
        pattern = hit if pattern is None else pattern | hit
    pattern.fill_diagonal_(False)
    return pattern


def _dense_metrics(
    d, *, order: int, memory_budget: int, want_dfp: bool, details: bool
) -> GramMetrics:
    if isinstance(d, GlobalDictionary):
        m = _dense_matrix(d, memory_budget)
    else:
        m = _as_matrix(d)
        _check_dense_budget(m.shape[1], m.shape[0], m.element_size(), memory_budget)
    n, big_n = m.shape
    plain = not isinstance(d, GlobalDictionary)
    support = (m != 0).double() if want_dfp and plain else None
    g, nonzero = _normalised_gram(m)
    del m
    off = g.abs() if g.is_complex() else g.abs_()  # |G|, in place for real G
    del g
    fp = float(torch.linalg.vector_norm(off, ord=2 * order).pow(2 * order))
    off.fill_diagonal_(0.0)
    if big_n > 1:
        arg = int(off.reshape(-1).argmax())
        i, j = divmod(arg, big_n)
        mu = float(off[i, j])
    else:
        i = j = 0
        mu = 0.0
    dfp = n_nz = None
    if want_dfp:
        if isinstance(d, GlobalDictionary):
            structure = _dense_structure(d, memory_budget)
        else:
            structure = (support.T @ support) > 0
            structure.fill_diagonal_(False)
        n_nz = int(structure.sum())
        dfp = float(off[structure].pow(2).sum()) / n_nz if n_nz else 0.0
    attained = {"value": mu}
    blocks = []
    if isinstance(d, GlobalDictionary):
        attained.update(_where_dense(d, i, j))
        if details:
            blocks = _dense_blocks(d, off, structure if want_dfp else None)
    else:
        attained["atoms"] = [{"column": i}, {"column": j}]
    return GramMetrics(
        mu, fp, dfp, big_n, n, int(nonzero.sum()), n_nz, attained, blocks, "dense", order
    )


def _locate(d: GlobalDictionary, column: int):
    k = int(np.searchsorted(d.col_offsets, column, side="right")) - 1
    return d.nodes[k], column - d.col_offsets[k]


def _where_dense(d: GlobalDictionary, i: int, j: int) -> dict:
    (a, ia), (b, ib) = _locate(d, i), _locate(d, j)
    if d.nodes.index(a) > d.nodes.index(b):
        (a, ia), (b, ib) = (b, ib), (a, ia)
    return {"blocks": [a, b], "atoms": [_atom_location(d, a, ia), _atom_location(d, b, ib)]}


def _dense_blocks(d: GlobalDictionary, off, structure) -> list:
    out = []
    offs = list(d.col_offsets) + [d.shape[1]]
    for ia, a in enumerate(d.nodes):
        for ib in range(ia, len(d.nodes)):
            b = d.nodes[ib]
            sub = off[offs[ia] : offs[ia + 1], offs[ib] : offs[ib + 1]]
            nnz = (
                int(structure[offs[ia] : offs[ia + 1], offs[ib] : offs[ib + 1]].sum())
                if structure is not None
                else None
            )
            if float(sub.max()) == 0.0 and not nnz:
                continue
            arg = int(sub.reshape(-1).argmax())
            i, j = divmod(arg, sub.shape[1])
            factor = 1 if ia == ib else 2
            out.append(
                {
                    "blocks": [a, b],
                    "max": float(sub[i, j]),
                    "atoms": [_atom_location(d, a, i), _atom_location(d, b, j)],
                    "frame_potential": factor * float(sub.pow(2).sum()),
                    "structural_nonzeros": None if nnz is None else factor * nnz,
                }
            )
    out.sort(key=lambda r: -r["max"])
    return out


def _as_matrix(d) -> torch.Tensor:
    m = d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d))
    if m.dim() != 2:
        raise ValueError(
            f"a dictionary matrix must be 2-D (rows x atoms), got shape {tuple(m.shape)}"
        )
    if m.is_complex():
        return m.to(torch.complex128)
    return m.to(torch.float64)


# ==========================================================================
# public metrics
# ==========================================================================
def _check_method(method: str) -> None:
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
        structured method refuses (:class:`~deepframe.dictionary.MemoryBudgetError`)
        when its estimated work buffers exceed it, and sizes its chunks by it.

    Returns
    -------
    GramMetrics
    """
    _check_method(method)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if method == "dense" or not isinstance(D, GlobalDictionary):
        with torch.no_grad():
            return _dense_metrics(
                D, order=order, memory_budget=memory_budget, want_dfp=deep, details=details
            )
    plan = _StructuredGram(D, memory_budget=memory_budget)
    return _structured_metrics(D, plan, order=order, deep=deep, details=details)


def _structured_metrics(
    D: GlobalDictionary, plan: _StructuredGram, *, order: int, deep: bool, details: bool
) -> GramMetrics:
    with torch.no_grad():
        res = plan.evaluate(order=order, coherence=True, details=details)
        squares = (
            float(res["offdiag"])
            if order == 1 or not deep
            else float(plan.evaluate(order=1, coherence=False)["offdiag"])
        )
    nonzero = res["nonzero_atoms"]
    offdiag = float(res["offdiag"])
    # The diagonal of the normalised Gram is 1 for every nonzero atom.
    fp = nonzero + offdiag
    n_nz = dfp = None
    if deep:
        n_nz = plan.structural_nonzeros()
        dfp = squares / n_nz if n_nz else 0.0
    mu = float(res["coherence"])
    attained = {"value": mu}
    if res["where"] is not None and res["where"][1] is not None:
        block, (i, j) = res["where"]
        attained.update(
            {
                "blocks": [block.a, block.b],
                "atoms": [_atom_location(D, block.a, i), _atom_location(D, block.b, j)],
            }
        )
    blocks = []
    if details:
        if deep:
            plan.structural_nonzeros()
        for block, fpb, mx, where in res["blocks"]:
            row = {
                "blocks": [block.a, block.b],
                "max": float(mx) if mx is not None else 0.0,
                "atoms": None,
                "frame_potential": float(fpb),
                "structural_nonzeros": (
                    None
                    if block.structural is None
                    else block.structural * (1 if block.ia == block.ib else 2)
                ),
            }
            if where is not None:
                row["atoms"] = [
                    _atom_location(D, block.a, where[0]),
                    _atom_location(D, block.b, where[1]),
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


# ==========================================================================
# lower bounds
# ==========================================================================
def _as_dictionary(graph_or_D):
    if isinstance(graph_or_D, GlobalDictionary):
        return graph_or_D
    if isinstance(graph_or_D, nx.DiGraph):
        return dictionary(graph_or_D, seed=0)
    return None


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
    d = _as_dictionary(graph_or_D)
    return _bounds(
        graph_or_D if d is None else d,
        None if d is None else _StructuredGram(d),
        orders=orders,
        field=field,
    )


def _bounds(d, plan: _StructuredGram | None, *, orders: tuple, field: str) -> dict:
    if plan is None:
        m = _as_matrix(d)
        n, _ = m.shape
        supp = (m != 0).double()
        atoms = int((supp.sum(0) > 0).sum())
        overlap = (supp.T @ supp) > 0
        overlap.fill_diagonal_(False)
        n_nz = int(overlap.sum())
        per_node = [{"node": "D", "atoms": atoms, "rows": min(atoms, int((supp.sum(1) > 0).sum()))}]
    else:
        with torch.no_grad():
            support = plan.sqnorms(support=True)
            per_node = []
            for j in d.nodes:
                rows = 0
                for piece in plan.pieces[j]:
                    s = piece.support_piece()
                    ones = torch.ones((1, *s.node_shape), dtype=torch.float64, device=d.device)
                    rows += int((_abs_column(s, ones) > 0).sum())
                n_j = int((support[j] > 0).sum())
                per_node.append({"node": j, "atoms": n_j, "rows": min(n_j, rows)})
        atoms = sum(p["atoms"] for p in per_node)
        n = d.shape[0]
        n_nz = plan.structural_nonzeros()
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


# ==========================================================================
# minimisation (dataless model selection)
# ==========================================================================
def minimize_frame_potential(
    graph: nx.DiGraph,
    steps: int = 100,
    lr: float = 1e-2,
    seed: int = 0,
    *,
    method: str = "structured",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    memory_budget: int | None = None,
) -> FramePotentialResult:
    """Minimum deep frame potential of an architecture by gradient descent over its weights.

    Dataless model selection (Murdock & Lucey 2020): starting from the seeded
    He-style random weights of :func:`deepframe.dictionary.random_weights`
    (drawn on the CPU in float64, then moved), run ``steps`` Adam steps (learning rate
    ``lr``) on

        DFP(W) = (1 / N_nz) sum_{(i, j) in S} G_ij(W)^2,

    differentiating through the exact structured (or dense) computation. The
    objective is invariant to the scale of each atom, so only the directions of
    the atoms move. No data is involved.

    The paper's model-selection criterion is the minimum ``DFP* = min_W
    DFP(W)`` (see :func:`deep_frame_potential` for the normalisation): since
    ``mu(W)^2 >= DFP(W) >= DFP*`` for all weights, a lower ``DFP*`` is a lower
    floor on the coherence the architecture can reach. The problem is not
    convex: the returned ``final`` DFP is an upper estimate of ``DFP*``
    (reached from one seed in ``steps`` steps), so compare architectures with
    the same ``steps``, ``lr`` and seeds, and read ``sqrt(final)`` as an
    estimate, not a certified bound, of that floor.

    Parameters
    ----------
    graph : networkx.DiGraph
    steps : int
    lr : float
    seed : int
        Seed of the starting weights.
    method : ``"structured"`` or ``"dense"``
    device : torch device, optional
        Where to compute (default CPU). With float64 the result does not depend
        on it beyond rounding.
    dtype : torch.dtype
    memory_budget : int or str, optional
        See :func:`gram_metrics`.

    Returns
    -------
    FramePotentialResult
    """
    _check_method(method)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    g = validate(graph)
    device = torch.device(device if device is not None else "cpu")
    initial = random_weights(
        g, seed=seed, dtype=torch.float64, device="cpu", memory_budget=memory_budget
    )
    params = {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in initial.items()}
    d = GlobalDictionary(g, params)
    if method == "structured":
        plan = _StructuredGram(d, memory_budget=memory_budget)
        n_nz = plan.structural_nonzeros()

        def objective():
            return plan.evaluate(order=1, coherence=False)["offdiag"] / max(n_nz, 1)
    else:
        structure = _dense_structure(d, memory_budget).to(device)
        n_nz = int(structure.sum())

        def objective():
            gram, _ = _normalised_gram(_dense_matrix(d, memory_budget))
            return gram.pow(2)[structure].sum() / max(n_nz, 1)

    history = []
    optimizer = torch.optim.Adam(list(params.values()), lr=lr) if params else None
    for _ in range(steps if params else 0):
        optimizer.zero_grad()
        value = objective()
        history.append(value.item())
        value.backward()
        optimizer.step()
    with torch.no_grad():
        history.append(float(objective()))
    final = {k: v.detach().clone() for k, v in params.items()}
    return FramePotentialResult(final, history, GlobalDictionary(g, final), initial)


# ==========================================================================
# report for the command line
# ==========================================================================
def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def metrics_report(
    graph_or_D,
    *,
    method: str = "structured",
    seed: int = 0,
    weights: Mapping | None = None,
    orders: tuple = (1, 2),
    details: bool = False,
    memory_budget: int | None = None,
) -> dict:
    """All geometry of one dictionary as a JSON-serialisable dict (``deepframe metrics``).

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
        See :func:`gram_metrics`.

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
    _check_method(method)
    plan = _StructuredGram(d, memory_budget=memory_budget)
    bounds = _bounds(d, plan, orders=orders, field="real")
    if method == "structured":
        m = _structured_metrics(d, plan, order=1, deep=True, details=details)
    else:
        m = gram_metrics(d, method=method, deep=True, details=details, memory_budget=memory_budget)
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
