"""The metrics of one block of the normalised Gram for the current weights.

docs/geometry.md, sections 2 and 3. For two convolution-like pieces

    G[(c, y, x), (c', y', x')] = sum_{taps} Q[c, c', (alpha, beta), (alpha', beta')]
                                 * T_y[y, y', alpha, alpha'] * T_x[x, x', beta, beta']
    Q = sum_i K_a[c, i, alpha, beta] K_b[c', i, alpha', beta']

with ``T`` the per-axis 0/1 windows ``[u_a(y, alpha) = u_b(y', alpha')]``.
:func:`evaluate_by_classes` forms ``Q`` (:func:`tap_products`) and evaluates
each class pair of a block (:class:`~deepframe.geometry.blocks.AxisClasses`)
once, weighted by its multiplicity; :func:`evaluate_row_by_row` evaluates a
block that involves a vector activation or a ``Dense`` operator through the
operators, chunked. Both return the block's share of ``sum |G_ij|^{2k}``, its
largest ``|G_ij|`` and where; :meth:`deepframe.geometry.structured.GramPlan.evaluate`
adds them up. Torch throughout: any device, any floating dtype, differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from ..dictionary import GlobalDictionary
from .blocks import (
    BlockPlan,
    chunk_rows,
    classes_to_evaluate,
    orient,
    selection_overlap,
    unit_batch,
)
from .pieces import Piece

__all__ = ["evaluate_by_classes", "evaluate_row_by_row", "tap_products"]


class _ClassPairEntries(NamedTuple):
    """Normalised entries of one y-class against every x-class, for a chunk of channels."""

    channels: tuple  # (c0, c1): rows c0..c1-1 of node a's channels
    class_y: int  # the y-class p
    weight: float  # multiplicity of p (doubled when p stands for its mirror too)
    values: torch.Tensor  # (P_x, c1 - c0, C_b): entry [q, c - c0, c'] of class pair (p, q)


def _class_pair_entries(
    d: GlobalDictionary, memory_budget: int, block: BlockPlan, inverse_norms: dict
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
    dtype, device = d.dtype, d.device
    channels_a = d.node_shapes[block.node_a][0]
    channels_b = d.node_shapes[block.node_b][0]
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
    inverse_a = inverse_norms[block.node_a][:, reps_y[:, 0]][:, :, reps_x[:, 0]].permute(1, 2, 0)
    inverse_b = inverse_norms[block.node_b][:, reps_y[:, 1]][:, :, reps_x[:, 1]].permute(1, 2, 0)
    classes_y, weights_y = classes_to_evaluate(axis_y)
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
    whole = product_bytes <= memory_budget // 4
    products = [
        tap_products(*block.contributions[index], ty, axis_x.taps[index], dtype, device)
        if whole and len(ty)
        else None
        for ty, index in zip(taps_y, live)
    ]
    chunk = (
        channels_a
        if whole
        else chunk_rows(
            memory_budget, 8 * channels_b * 2 * sum(a * b for a, b in sizes), channels_a
        )
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
                None if q is None else q.reshape(sizes[n][0], sizes[n][1], (c1 - c0) * channels_b)
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


def evaluate_by_classes(
    d: GlobalDictionary,
    memory_budget: int,
    block: BlockPlan,
    inverse_norms: dict,
    order: int,
    coherence: bool,
) -> tuple:
    """``sum |G_ij|^{2k}`` (one ordering), ``max |G_ij|`` and where, over a class block.

    Every class pair's entries stand for ``multiplicity_y * multiplicity_x``
    position pairs: the sum weighs them so, the maximum needs them once.
    """
    axis_y, axis_x = block.axes
    dtype, device = d.dtype, d.device
    channels_b = d.node_shapes[block.node_b][0]
    n_classes_x = len(axis_x.multiplicity)
    multiplicity_x = torch.as_tensor(axis_x.multiplicity, dtype=dtype, device=device)
    fp = None
    best, best_at = None, None
    for (c0, c1), p, weight, entries in _class_pair_entries(d, memory_budget, block, inverse_norms):
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
        i = np.ravel_multi_index((c0 + c, y, x), d.node_shapes[block.node_a])
        j = np.ravel_multi_index((c2, y2, x2), d.node_shapes[block.node_b])
        where = (int(i), int(j))
    if fp is None:
        fp = torch.zeros((), dtype=dtype, device=device)
    return fp, best, where


def evaluate_row_by_row(
    d: GlobalDictionary,
    memory_budget: int,
    block: BlockPlan,
    inverse_norms: dict,
    order: int,
    coherence: bool,
) -> tuple:
    """As :func:`evaluate_by_classes` for a block with a vector side or a ``Dense``
    operator: ``D_t[b]^T (D_t[a] e_i)`` for the atoms ``e_i`` of the smaller node, chunked."""
    small, other, swap = orient(d, block)
    dtype, device = d.dtype, d.device
    n_small = math.prod(d.node_shapes[small])
    n_other = math.prod(d.node_shapes[other])
    inverse_small = inverse_norms[small].reshape(-1)
    inverse_other = inverse_norms[other].reshape(-1)
    chunk = chunk_rows(memory_budget, n_other * 8 * 4, n_small)
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
