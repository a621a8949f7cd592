"""Slow, obviously-correct dense matrices to test the fast operators against.

Nothing here calls :mod:`deepframe.ops` or :mod:`deepframe.dictionary`: every
block is written out entry by entry from the weights and the graph's
attributes (a conv block by explicit loops over output pixels and kernel taps),
and the global dictionary is assembled from those blocks with
``scipy.sparse.bmat`` following docs/concepts.md:

* column blocks: activation nodes in
  ``networkx.lexicographical_topological_sort(g, key=str)`` order;
* row blocks: for each node in that order, one term per incoming edge
  ``k -> j`` (sources sorted by ``str``) for edge-centric nodes, holding
  ``A_kj^T`` at column ``j`` and ``-I`` at column ``k`` (Eq. 12); one term
  per node-centric node, holding ``A_j^T`` at column ``j`` and ``-E_jk`` at
  column ``k`` (Eq. 16, ``E_jk = B_jk^T`` the edge's forward matrix).

Use them only on small graphs: the matrices are dense ``numpy`` arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import networkx as nx
import numpy as np

__all__ = [
    "conv_matrix",
    "dense_matrix",
    "identity_matrix",
    "shortcut_matrix",
    "operator_matrix",
    "reference_blocks",
    "reference_dictionary",
]


def _numpy(weight) -> np.ndarray:
    if hasattr(weight, "detach"):
        weight = weight.detach().cpu().double().numpy()
    return np.asarray(weight, dtype=np.float64)


def _per_axis(value) -> tuple[int, int]:
    if isinstance(value, Sequence):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def conv_matrix(
    weight,
    in_shape: Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | None = None,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> np.ndarray:
    """The matrix of ``conv2d(., weight, stride, padding, dilation, groups)`` (zero
    padding, cross-correlation).

    Output pixel ``(y, x)`` of channel ``o`` reads input pixel
    ``(y s_h - p_h + a d_h, x s_w - p_w + b d_w)`` of channel ``g C_in / groups + i``
    (``g = o // (C_out / groups)``, the group of ``o``) with weight ``W[o, i, a, b]``
    when that pixel lies inside the map; rows and columns are in ``(C, H, W)``
    order. Built by loops over output channels, output pixels and taps.

    Parameters
    ----------
    weight : array or tensor of shape ``(C_out, C_in / groups, k_h, k_w)``
    in_shape : ``(C_in, H, W)``
    stride, dilation : int or (int, int)
    padding : int or (int, int), optional
        Default ``dilation * (k // 2)`` per axis.
    groups : int

    Returns
    -------
    numpy.ndarray of shape ``(C_out * H_out * W_out, C_in * H * W)``
    """
    w = _numpy(weight)
    c_out, c_group, kh, kw = w.shape
    c, h, wd = (int(s) for s in in_shape)
    if c != c_group * groups or c_out % groups:
        raise ValueError(
            f"weight {w.shape} with groups={groups} does not fit in_shape {tuple(in_shape)}"
        )
    sh, sw = _per_axis(stride)
    dh, dw = _per_axis(dilation)
    ph, pw = (dh * (kh // 2), dw * (kw // 2)) if padding is None else _per_axis(padding)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    matrix = np.zeros((c_out * ho * wo, c * h * wd))
    per_group = c_out // groups
    for o in range(c_out):
        first = (o // per_group) * c_group
        for y in range(ho):
            for x in range(wo):
                row = (o * ho + y) * wo + x
                for a in range(kh):
                    for b in range(kw):
                        sy, sx = y * sh - ph + a * dh, x * sw - pw + b * dw
                        if 0 <= sy < h and 0 <= sx < wd:
                            for i in range(c_group):
                                matrix[row, ((first + i) * h + sy) * wd + sx] = w[o, i, a, b]
    return matrix


def dense_matrix(weight) -> np.ndarray:
    """The matrix of a dense map ``W vec(x)`` (``vec`` in ``(C, H, W)`` order): ``W`` itself."""
    return _numpy(weight).copy()


def identity_matrix(size: int) -> np.ndarray:
    """``I``."""
    return np.eye(size)


def shortcut_matrix(
    in_shape: Sequence[int], out_channels: int, stride: int = 1, pad_before: int | None = None
) -> np.ndarray:
    """The option-A shortcut: keep every ``stride``-th pixel, zero-pad channels.

    Input channel ``c`` goes to output channel ``c + pad_before`` (default
    ``pad_before = (C_out - C_in) // 2``); output pixel ``(y, x)`` is input
    pixel ``(y s, x s)``; output size ``ceil(H / s) x ceil(W / s)``.
    """
    c, h, w = (int(s) for s in in_shape)
    ho, wo = -(-h // stride), -(-w // stride)
    before = (out_channels - c) // 2 if pad_before is None else int(pad_before)
    matrix = np.zeros((out_channels * ho * wo, c * h * w))
    for ch in range(c):
        for y in range(ho):
            for x in range(wo):
                row = ((ch + before) * ho + y) * wo + x
                matrix[row, (ch * h + y * stride) * w + x * stride] = 1
    return matrix


def operator_matrix(
    op: str,
    attrs: Mapping[str, Any],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    weight=None,
) -> np.ndarray:
    """Forward matrix ``A`` (``out_size x in_size``) of one operator of a graph.

    Parameters
    ----------
    op : str
        ``"conv"``, ``"dense"``, ``"identity"``, ``"project"`` or ``"shortcut"``.
    attrs : mapping
        The edge's (or node-centric node's) attributes: ``kernel_size``,
        ``stride``, ``padding``, ``dilation``, ``groups``, ``pad_before`` (shortcut).
    in_shape, out_shape : shapes of the source and of the result
    weight : array or tensor, optional
        The learned weight (``None`` for parameter-free operators).
    """
    in_size, out_size = math.prod(in_shape), math.prod(out_shape)
    stride = attrs.get("stride", 1)
    groups = int(attrs.get("groups", 1))
    if op == "identity":
        if tuple(in_shape) != tuple(out_shape):
            raise ValueError(f"identity between {tuple(in_shape)} and {tuple(out_shape)}")
        matrix = identity_matrix(in_size)
    elif op == "shortcut":
        matrix = shortcut_matrix(in_shape, out_shape[0], int(stride), attrs.get("pad_before"))
    elif op == "dense" or (op == "project" and len(in_shape) == 1):
        matrix = dense_matrix(weight)
    elif op == "project":
        matrix = conv_matrix(weight, in_shape, stride, 0, groups=groups)
    elif op == "conv":
        matrix = conv_matrix(
            weight,
            in_shape,
            stride,
            attrs.get("padding"),
            attrs.get("dilation", 1),
            groups,
        )
    else:
        raise ValueError(f"unknown op {op!r}")
    if matrix.shape != (out_size, in_size):
        raise AssertionError(
            f"{op}: reference matrix has shape {matrix.shape}, the graph says "
            f"{tuple(in_shape)} -> {tuple(out_shape)}"
        )
    return matrix


def reference_blocks(
    graph: nx.DiGraph, weights: Mapping[str, Any]
) -> tuple[list, list[tuple[str, dict]]]:
    """The nonzero blocks of the global dictionary, term by term.

    Parameters
    ----------
    graph : networkx.DiGraph
        A *validated* graph (node ``shape``, edge ``in_shape``/``out_shape``,
        node-centric ``input_shape``).
    weights : mapping
        ``{"k->j": W}`` for parametrised edges, ``{"j": W}`` for node-centric
        nodes' own operators.

    Returns
    -------
    nodes : list
        Column blocks in order.
    terms : list of ``(term name, {node: dense block})``
        Row blocks in order; each block is the ``(rows, atoms of node)`` matrix.
    """
    source = next(n for n, a in graph.nodes(data=True) if a.get("kind") == "input")
    nodes = [n for n in nx.lexicographical_topological_sort(graph, key=str) if n != source]
    terms = []
    for j in nodes:
        na = graph.nodes[j]
        preds = sorted(graph.predecessors(j), key=str)
        if na.get("merge", "edge") == "edge":
            for k in preds:
                ea = graph.edges[k, j]
                a = operator_matrix(
                    ea["op"], ea, graph.nodes[k]["shape"], na["shape"], weights.get(f"{k}->{j}")
                )
                blocks = {j: a.T}
                if k != source:
                    blocks[k] = -identity_matrix(a.shape[1])
                terms.append((f"{k}->{j}", blocks))
        else:
            z = na["input_shape"]
            a = operator_matrix(na["op"], na, z, na["shape"], weights.get(str(j)))
            blocks = {j: a.T}
            for k in preds:
                if k == source:
                    continue
                ea = graph.edges[k, j]
                blocks[k] = -operator_matrix(
                    ea.get("op", "identity"),
                    ea,
                    graph.nodes[k]["shape"],
                    z,
                    weights.get(f"{k}->{j}"),
                )
            terms.append((str(j), blocks))
    return nodes, terms


def reference_dictionary(graph: nx.DiGraph, weights: Mapping[str, Any]):
    """The global dictionary assembled with ``scipy.sparse.bmat`` from :func:`reference_blocks`.

    Returns
    -------
    scipy.sparse.csr_array of shape ``(rows, atoms)``
    """
    import scipy.sparse as sp

    nodes, terms = reference_blocks(graph, weights)
    col = {j: i for i, j in enumerate(nodes)}
    grid: list[list[Any]] = [[None] * len(nodes) for _ in terms]
    for i, (_, blocks) in enumerate(terms):
        for k, block in blocks.items():
            grid[i][col[k]] = sp.csr_array(block)
    return sp.csr_array(sp.bmat(grid, format="csr"))
