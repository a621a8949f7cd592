"""The structured exact engine: the normalised Gram's metrics without forming the Gram.

docs/geometry.md, sections 2 and 3. ``G = sum_t D_t^T D_t`` over the residual
terms ``t``, so block ``(a, b)`` of ``G`` is the sum over the terms containing
both nodes of ``D_t[a]^T D_t[b]`` (a *contribution*: a pair of
:class:`~deepframe.geometry.pieces.Piece`). The engine has four rooms below
this module:

========================  =====================================================
:mod:`.pieces`            the column pieces ``D_t[a]`` and their per-axis taps
:mod:`.blocks`            the blocks, the position classes along their axes
:mod:`.reductions`        one block's ``sum |G_ij|^{2k}`` and ``max |G_ij|``
                          for the current weights (by classes, or row by row)
:mod:`.structural`        one block's structural nonzero count ``N_nz``
========================  =====================================================

and this module joins them: :class:`GramPlan` holds everything that depends
on the architecture only (pieces, blocks, classes); :meth:`GramPlan.evaluate`
reads the current weights, normalises by the atoms' norms
(:meth:`GramPlan.squared_norms`) and adds the blocks' shares up, so one plan
serves every step of :func:`~deepframe.geometry.minimize_frame_potential`.
Torch throughout: any device, any floating dtype, differentiable.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from ..dictionary import GlobalDictionary
from ..memory import check_memory, resolve_memory_budget
from .blocks import AxisClasses, BlockPlan, axis_classes, norm_classes
from .pieces import Piece, make_piece
from .reductions import evaluate_by_classes, evaluate_row_by_row
from .structural import structural_by_classes, structural_row_by_row

__all__ = ["GramPlan", "BlockPlan", "AxisClasses", "GramEvaluation", "BlockEvaluation"]


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
        deepframe.memory.MemoryBudgetError
            When the estimated work buffers exceed ``memory_budget``
            (``None``: ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB).
        """
        memory_budget = resolve_memory_budget(memory_budget)
        check_memory(d.structure, "metrics", dtype=d.dtype, memory_budget=memory_budget)
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
            structural_by_classes(self.dictionary, block)
            if block.by_classes
            else structural_row_by_row(self.dictionary, self.memory_budget, block)
            for block in self.blocks
        )

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
                fp, maximum, where = evaluate_by_classes(
                    self.dictionary, self.memory_budget, block, inverse_norms, order, coherence
                )
            else:
                fp, maximum, where = evaluate_row_by_row(
                    self.dictionary, self.memory_budget, block, inverse_norms, order, coherence
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


def _explicit_squared_norms(piece: Piece, dtype, device) -> torch.Tensor:
    """``||D_t[a] e_i||^2`` for every atom of a piece that is not convolution-like."""
    n_node = math.prod(piece.node_shape)
    n_res = math.prod(piece.res_shape)
    if n_node <= n_res:
        eye = torch.eye(n_node, dtype=dtype, device=device).reshape(n_node, *piece.node_shape)
        return piece.column(eye).flatten(1).pow(2).sum(1).reshape(piece.node_shape)
    eye = torch.eye(n_res, dtype=dtype, device=device).reshape(n_res, *piece.res_shape)
    return piece.transpose(eye).pow(2).sum(0)
