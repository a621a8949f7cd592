"""Column pieces ``D_t[a]``: one term's column block at one node, as the structured Gram sees it.

docs/geometry.md, section 3, "Pieces". The Gram is ``G = sum_t D_t^T D_t``
over the terms ``t`` (row blocks) of the global dictionary, and a term's
columns at node ``a`` are ``D_t[a] = A_t^T`` for its synthesis node and
``D_t[a] = -P_ta`` for a target. A *convolution-like* piece (both sides
``(C, H, W)`` maps; operator conv, 1x1 projection, option-A shortcut or
identity) is described by

* a channel map: the learned kernel ``K[c, i, alpha, beta]`` (``c`` a channel
  of node ``a``, ``i`` one of the residual; block diagonal for a grouped
  convolution) or a 0/1 selection ``sel[c]`` (the residual channel of node
  channel ``c``, or -1), and
* per axis, a 0/1 incidence ``u(y, alpha)``: the residual row that atom
  position ``y`` reaches through tap ``alpha``, or -1 (zero padding),

so that atom ``(c, y, x)`` is ``sum_{i, alpha, beta} K[c, i, alpha, beta]
e_{i, u(y, alpha), v(x, beta)}``. Every other piece (a vector activation, a
``Dense`` operator) is evaluated row by row through its operator.

The kind of an edge is never read here: each operator describes its own tap
structure (:meth:`deepframe.ops.Operator.taps`, a :class:`deepframe.ops.TapStructure`)
and rebuilds itself with other weights (:meth:`deepframe.ops.Operator.with_weight`),
so a newly registered edge kind needs nothing in this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import ops

__all__ = ["Piece", "make_piece"]


# --------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Piece:
    """Column block ``D_t[a]`` of term ``t`` at node ``a``.

    Synthesis (``role="synth"``): ``D_t[a] = A_t^T``; target: ``D_t[a] = -P_ta``.

    Attributes
    ----------
    term : int
        Index of the term in ``GlobalDictionary.terms``.
    node : hashable
        The activation node ``a``.
    role : ``"synth"`` or ``"target"``
    op : deepframe.ops.Operator
        The term's operator as compiled (a :class:`deepframe.ops.Scaled` one
        for a batch-norm folded synthesis block).
    node_shape, res_shape : tuple
        Shapes of node ``a``'s activation and of the term's residual.
    conv_like : bool
        Described by a channel map and per-axis incidences (module docstring);
        otherwise evaluated through :meth:`column` and :meth:`transpose`.
    learned : bool
        Convolution-like with a learned kernel (else a channel selection).
    kernel_size : tuple of int
        ``(kh, kw)`` taps per axis of a convolution-like piece.
    incidence : tuple of numpy.ndarray
        ``(u, v)``: per axis, ``u[y, alpha]`` the residual index that atom
        position ``y`` reaches through tap ``alpha``, or -1.
    selection : numpy.ndarray or None
        Residual channel of every node channel (-1: none), parameter-free pieces.
    scale : torch.Tensor or None
        Per node channel: the batch-norm scale ``S`` of a synthesis block ``B S``.
    groups : int
        Blocks of a learned channel map (a grouped convolution; 1: dense).
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
    incidence: tuple = ()
    selection: np.ndarray | None = None
    scale: torch.Tensor | None = None
    groups: int = 1

    @property
    def base(self) -> ops.Operator:
        """The operator without its channel scale (:class:`deepframe.ops.Scaled`)."""
        return self.op.unscaled()[0]

    @property
    def sign(self) -> float:
        """``+1`` for a synthesis block ``A^T``, ``-1`` for a target block ``-P``."""
        return 1.0 if self.role == "synth" else -1.0

    @property
    def parametrised(self) -> bool:
        """Whether the operator has learned weights (else its entries are constants)."""
        return self.base.weight is not None

    def column(self, e: torch.Tensor) -> torch.Tensor:
        """``D_t[a] e`` for a batch ``(B, *node_shape)`` -> ``(B, *res_shape)``."""
        return self.op.adjoint(e) if self.role == "synth" else -self.op.forward(e)

    def transpose(self, r: torch.Tensor) -> torch.Tensor:
        """``D_t[a]^T r`` for a batch ``(B, *res_shape)`` -> ``(B, *node_shape)``."""
        return self.op.forward(r) if self.role == "synth" else -self.op.adjoint(r)

    def kernel(self) -> torch.Tensor:
        """Learned channel map ``K[c_node, c_res, alpha, beta]`` (times the node's scale);
        a grouped convolution's weight as its block-diagonal ungrouped one."""
        weight = ops.block_diagonal(self.base.weight, self.groups)
        if self.role != "synth":
            return weight.transpose(0, 1)
        if self.scale is None:
            return weight
        return weight * self.scale.to(weight).reshape(-1, 1, 1, 1)

    def channel_pattern(self) -> np.ndarray:
        """``(C_node, C_res)`` bool: the channel pairs the piece's channel map can join
        (all of them for an ungrouped learned map, its diagonal blocks for a grouped
        one, ``c`` with ``sel[c]`` for a selection)."""
        return self.base.taps().channel_pattern(
            self.node_shape[0], self.res_shape[0], self.role == "synth"
        )

    def support_piece(self) -> Piece:
        """The same piece with every learned weight replaced by 1 and no channel scale.

        Float64; its entries are nonzero where the architecture allows (the
        support patterns of the structural counts and the bounds).
        """
        if not self.parametrised:
            if self.scale is None:
                return self
            return dataclasses.replace(self, op=self.base, scale=None)
        base = self.base
        ones = torch.ones(base.weight.shape, dtype=torch.float64, device=base.weight.device)
        return dataclasses.replace(self, op=base.with_weight(ones), scale=None)


def make_piece(term: int, node: Any, role: str, op: ops.Operator) -> Piece:
    """The piece ``D_t[a]`` of term ``term`` at ``node`` with operator ``op``.

    Parameters
    ----------
    term : int
        Index of the term.
    node : hashable
        The node (the term's synthesis node, or one of its targets).
    role : ``"synth"`` or ``"target"``
    op : deepframe.ops.Operator
        The term's synthesis operator ``A_t`` or the target's ``P_ta``.

    Returns
    -------
    Piece
    """
    if role == "synth":
        node_shape, res_shape = tuple(op.out_shape), tuple(op.in_shape)
    else:
        node_shape, res_shape = tuple(op.in_shape), tuple(op.out_shape)
    base, scale = op.unscaled()  # batch norm folded: the node's atoms scaled per channel
    taps = base.taps()
    if taps is None:  # a dense map, or a map touching a vector: evaluated row by row
        return Piece(term, node, role, op, node_shape, res_shape, scale=scale)
    transposed = role == "synth"
    incidence = tuple(
        taps.incidence(axis, node_shape[1 + axis], res_shape[1 + axis], transposed)
        for axis in (0, 1)
    )
    return Piece(
        term,
        node,
        role,
        op,
        node_shape,
        res_shape,
        conv_like=True,
        learned=taps.learned,
        kernel_size=tuple(taps.kernel_size),
        incidence=incidence,
        selection=taps.selection(node_shape[0], res_shape[0], transposed),
        scale=scale,
        groups=taps.groups,
    )
