"""The importer's symbolic values and their algebra: folding batch norm, summing maps.

While :mod:`.trace` walks a traced model, every tensor is one of these values:
an activation node (:class:`_Node`), a sum of linear maps from nodes plus a
constant that waits for its ReLU (:class:`_Affine` of :class:`_Term`), a
concatenation (:class:`_Cat`) or features read for a ``Linear``
(:class:`_Features`). Here also: batch norm folded into a sum (:func:`_fold_bn`),
two maps from one node summed into one (:func:`_sum_maps`) and a term written
as an edge, which the term's edge kind states (:func:`_edge`,
:meth:`deepframe.ops.Operator.torch_edge`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .. import ops
from ..ops.identity import selection_matrix

_DOCS = "docs/bring-your-own-model.md lists what is supported"


# --------------------------------------------------------------------------
# symbolic values: what each fx node computes, in graph terms
# --------------------------------------------------------------------------
@dataclass
class _Node:
    """An activation node of the graph (or the input): a code ``w_j``."""

    name: str
    shape: tuple


@dataclass
class _Term:
    """One linear map from a node into a sum: becomes an edge when a ReLU closes the sum.

    ``kind``: the edge kind of :mod:`deepframe.ops` that computes it:
    :class:`~deepframe.ops.Conv` (weight ``(C_out, C_in / groups, k_h, k_w)``,
    ``stride``, ``padding`` and ``dilation`` per axis),
    :class:`~deepframe.ops.Dense` (weight ``(d, prod(src_shape))``, the source
    flattened; with ``pooled``, weight ``(d, C)`` applied to the source's
    global average), :class:`~deepframe.ops.Identity` and
    :class:`~deepframe.ops.Shortcut` (parameter-free, with an optional
    per-output-channel ``scale`` from a batch norm).
    """

    src: str
    src_shape: tuple
    kind: type[ops.Operator]
    weight: torch.Tensor | None = None
    stride: int = 1
    padding: int = 0
    pad_before: int = 0
    out_channels: int = 0
    scale: torch.Tensor | None = None
    origin: str = ""
    pooled: bool = False
    dilation: tuple = (1, 1)
    groups: int = 1

    @property
    def label(self) -> str:
        """What the term is, for messages: its kind's name, or ``pooled``."""
        return "pooled" if self.pooled else self.kind.kind

    def key(self) -> tuple:
        kernel = None if self.weight is None else tuple(self.weight.shape)
        shape = (ops.pair(self.stride), ops.pair(self.padding), self.pad_before, self.out_channels)
        return (self.kind, self.pooled, kernel, *shape, ops.pair(self.dilation), self.groups)


@dataclass
class _Affine:
    """``sum_t A_t w_src(t) + const`` (per channel): a pre-activation under construction.

    ``bn`` is a batch norm waiting for its ReLU (``batchnorm="node"``).
    """

    terms: list
    const: torch.Tensor
    shape: tuple
    bn: dict | None = None


@dataclass
class _Cat:
    """Values concatenated along channels."""

    parts: list
    shape: tuple


@dataclass
class _Features:
    """A vector read from activation nodes: flattened (``"flat"``) or globally
    average-pooled (``"pooled"``), concatenated; ``ones`` trailing axes of size 1
    (``(B, d, 1, 1)`` after pooling with ``keepdim``)."""

    parts: list  # (_Node, mode)
    ones: int = 0
    shape: tuple = field(default=())


def _features(parts, ones: int = 0) -> _Features:
    d = sum(math.prod(n.shape) if mode == "flat" else n.shape[0] for n, mode in parts)
    return _Features(parts, ones, (d,) + (1,) * ones)


def _fold_bn(a: _Affine, gamma, beta, mean, var, eps) -> _Affine:
    """Fold an eval-mode batch norm into a sum of maps.

    ``BN(sum_t A_t w + c) = sum_t (s A_t) w + s (c - mean) + beta`` with
    ``s = gamma / sqrt(var + eps)`` per channel.
    """
    s = gamma / torch.sqrt(var + eps)
    terms = []
    for t in a.terms:
        if t.weight is not None:
            terms.append(replace(t, weight=t.weight * s.reshape(-1, *([1] * (t.weight.dim() - 1)))))
        else:
            terms.append(replace(t, scale=s.clone() if t.scale is None else t.scale * s))
    return _Affine(terms, s * (a.const - mean) + beta, a.shape)


def _sum_maps(s: _Term, t: _Term) -> _Term | None:
    """Two different maps from one node into one sum, as one map (None if impossible).

    The graph holds one edge per pair of nodes, so parallel maps are summed:
    a dense map plus an identity is ``W + diag(scale)``; convolutions and
    parameter-free maps (an identity or shortcut is a 1x1 kernel with padding
    0) with the same stride are embedded, centred, in the larger kernel and
    added, where their paddings then agree (grouped or dilated convolutions
    as the ungrouped, undilated ones of the same map).
    """
    if s.pooled or t.pooled:
        return None
    if len(s.src_shape) == 1:
        return replace(s, kind=ops.Dense, weight=_dense_weight(s) + _dense_weight(t), scale=None)
    if ops.pair(s.stride) != ops.pair(t.stride):
        return None
    sizes = [max(_kernel(s)[axis], _kernel(t)[axis]) for axis in (0, 1)]
    if any((sizes[axis] - _kernel(u)[axis]) % 2 for u in (s, t) for axis in (0, 1)):
        return None
    pads = {
        tuple(ops.pair(u.padding)[axis] + (sizes[axis] - _kernel(u)[axis]) // 2 for axis in (0, 1))
        for u in (s, t)
    }
    if len(pads) != 1:
        return None
    weight = _conv_weight(s, sizes) + _conv_weight(t, sizes)
    origin = " + ".join(u.origin for u in (s, t) if u.origin)
    return _Term(s.src, s.src_shape, ops.Conv, weight, s.stride, pads.pop(), origin=origin)


def _plain(t: _Term) -> torch.Tensor | None:
    """A conv term's weight as that of an undilated, ungrouped convolution (the same map)."""
    if t.weight is None:
        return None
    return ops.dilated_kernel(ops.block_diagonal(t.weight, t.groups), t.dilation)


def _kernel(t: _Term) -> tuple[int, int]:
    """``(k_h, k_w)`` of the term's map as an undilated convolution (1x1: parameter-free)."""
    return (1, 1) if t.weight is None else tuple(int(k) for k in _plain(t).shape[-2:])


def _selection(t: _Term) -> torch.Tensor:
    """The channel map of a parameter-free term: ``M[c + pad_before, c] = scale``."""
    return selection_matrix(t.src_shape[0], t.out_channels, t.pad_before, t.scale)


def _dense_weight(t: _Term) -> torch.Tensor:
    return t.weight if t.weight is not None else _selection(t)


def _conv_weight(t: _Term, sizes) -> torch.Tensor:
    """The term's map as a ``sizes[0] x sizes[1]`` undilated, ungrouped kernel, centred."""
    if t.weight is None:
        w = torch.zeros((t.out_channels, t.src_shape[0], *sizes), dtype=torch.float64)
        w[:, :, sizes[0] // 2, sizes[1] // 2] = _selection(t)
        return w
    kh, kw = _kernel(t)
    dh, dw = (sizes[0] - kh) // 2, (sizes[1] - kw) // 2
    return F.pad(_plain(t), (dw, dw, dh, dh))


def _edge(t: _Term) -> tuple[dict, torch.Tensor | None]:
    """Edge attributes and weight of a term, as its edge kind writes them
    (:meth:`deepframe.ops.Operator.torch_edge`)."""
    weight = t.weight
    if t.pooled:  # mean over positions, then the weight: one dense map
        hw = math.prod(t.src_shape[1:])
        weight = weight[:, :, None].expand(-1, -1, hw) / hw
        weight = weight.reshape(t.weight.shape[0], -1).contiguous()
    return t.kind.torch_edge(
        weight,
        t.src_shape,
        stride=t.stride,
        padding=t.padding,
        out_channels=t.out_channels,
        pad_before=t.pad_before,
        scale=t.scale,
        dilation=t.dilation,
        groups=t.groups,
    )


def _zeros(c: int) -> torch.Tensor:
    return torch.zeros(c, dtype=torch.float64)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64).clone()


def _bias(bias, c: int) -> torch.Tensor:
    return _zeros(c) if bias is None else _f64(bias)


def _pair(v) -> tuple:
    if isinstance(v, int):
        return (v, v)
    return tuple(v) if len(v) == 2 else (v[0], v[0])


def _describe(v) -> str:
    if isinstance(v, _Node):
        return f"activation node {v.name!r}"
    if isinstance(v, _Affine):
        return "a linear map's output (no ReLU yet)"
    if isinstance(v, _Cat):
        return "a concatenation"
    if isinstance(v, _Features):
        return "pooled / flattened features"
    if isinstance(v, torch.Tensor):
        return f"a constant tensor of shape {tuple(v.shape)}"
    return f"the value {v!r}"
