"""The structural nonzero count ``N_nz`` of the Gram: weight independent, exact.

docs/geometry.md, sections 2 and 3. ``N_nz`` counts the off-diagonal entries of ``G``
that are nonzero for *some* weights of the architecture (the denominator of
the deep frame potential). A block whose contributions are all
convolution-like is counted class pair by class pair
(:func:`structural_by_classes`); any other block row by row through the
support patterns of its pieces (:func:`structural_row_by_row`).
:attr:`deepframe.geometry.structured.GramPlan.block_structural_nonzeros`
keeps the per-block counts.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from ..dictionary import GlobalDictionary
from .blocks import BlockPlan, chunk_rows, orient, selection_overlap, unit_batch

__all__ = ["structural_by_classes", "structural_row_by_row"]


def structural_by_classes(d: GlobalDictionary, block: BlockPlan) -> int:
    """Exact ``N_nz`` share of a class block.

    Entry ``(c, c')`` of class pair ``(p, q)`` is structurally nonzero iff some
    parametrised contribution reaches it (its channel maps overlap: some
    residual channel that both ``c`` and ``c'`` reach, which a grouped
    convolution's blocks restrict, and its
    windows at ``p`` and ``q`` are nonempty: a sum of products of learned
    weights, a nonzero polynomial) or the parameter-free contributions
    (identity, shortcut) do not cancel there. Class pairs with the same
    pattern are counted together.
    """
    axis_y, axis_x = block.axes
    channels_a = d.node_shapes[block.node_a][0]
    channels_b = d.node_shapes[block.node_b][0]
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
    # per learned contribution, the channel pairs (c, c') some residual channel joins:
    # a rectangle without groups, a block pattern with them (computed once per block)
    reach = {}
    for index, (piece_a, piece_b) in enumerate(block.contributions):
        if not (piece_a.learned or piece_b.learned):
            continue
        if piece_a.groups == 1 and piece_b.groups == 1:
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
            reach[index] = rows[:, None] & cols[None, :]
        else:
            pattern_a = torch.as_tensor(piece_a.channel_pattern(), dtype=torch.float64)
            pattern_b = torch.as_tensor(piece_b.channel_pattern(), dtype=torch.float64)
            reach[index] = (pattern_a @ pattern_b.T) > 0
    count = 0
    for key, multiplicity in patterns.items():
        hit = torch.zeros((channels_a, channels_b), dtype=torch.bool)
        constant = torch.zeros((channels_a, channels_b), dtype=torch.float64)
        for index, (piece_a, piece_b) in enumerate(block.contributions):
            if not key[index]:
                continue
            if piece_a.learned or piece_b.learned:
                hit |= reach[index]
            else:
                constant += (
                    piece_a.sign
                    * piece_b.sign
                    * key[index]
                    * selection_overlap(piece_a.selection, piece_b.selection, torch.float64, "cpu")
                )
        hit |= constant != 0
        if key[-1]:
            hit.fill_diagonal_(False)
        count += int(hit.sum()) * multiplicity
    return count


def structural_row_by_row(d: GlobalDictionary, memory_budget: int, block: BlockPlan) -> int:
    """Exact ``N_nz`` share of a block evaluated row by row: support patterns, chunked."""
    small, other, swap = orient(d, block)
    n_small = math.prod(d.node_shapes[small])
    n_other = math.prod(d.node_shapes[other])
    chunk = chunk_rows(memory_budget, n_other * 8 * 4, n_small)
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
