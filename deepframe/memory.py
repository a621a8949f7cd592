"""Memory estimates: what an operation on an architecture will allocate, checked before it runs.

Everything that allocates by the size of an architecture (weight
initialisation, :func:`deepframe.compile`, the geometry) first estimates the
bytes it needs from the graph's :class:`~deepframe.terms.Structure` alone
(:func:`estimate_memory`, no tensor allocated) and refuses with
:class:`MemoryBudgetError`, stating the estimate, when that exceeds the memory
budget: the ``memory_budget`` argument, else the environment variable
``DEEPFRAME_MEMORY_BUDGET`` (``"16G"``, ``"512M"``, bytes), else
:data:`DEFAULT_MEMORY_BUDGET` (2 GiB) (:func:`resolve_memory_budget`,
:func:`check_memory`).

The operations estimated are the keys of :meth:`MemoryEstimate.bytes`:
``"weights"``, ``"pursuit"`` and ``"metrics"``. A new operation whose memory
grows with the architecture (the activations an unrolled solver keeps for
its backward pass, say) adds its sizes to :class:`MemoryEstimate`, its
formula to :meth:`MemoryEstimate.bytes` and its wording to the refusal, here.

Layering: this module needs the terms of a graph (:mod:`deepframe.terms`),
never its weights; :mod:`deepframe.dictionary` and everything above it call it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import networkx as nx
import torch

from ._io import format_bytes, parse_size
from .terms import Structure, structure

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MEMORY_BUDGET_ENV",
    "MemoryBudgetError",
    "MemoryEstimate",
    "check_memory",
    "estimate_memory",
    "resolve_memory_budget",
]

#: Bytes a single call may allocate by default (raise it per call with
#: ``memory_budget=``, or for every call with ``DEEPFRAME_MEMORY_BUDGET``).
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
#: Environment variable that sets the memory budget when no argument does.
MEMORY_BUDGET_ENV = "DEEPFRAME_MEMORY_BUDGET"


class MemoryBudgetError(MemoryError, ValueError):
    """A request would need more memory than the budget; the message states the estimate."""


def resolve_memory_budget(memory_budget: int | str | None = None) -> int:
    """The budget in bytes: the argument, else ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB.

    Raises
    ------
    ValueError
        The argument or the environment variable is not a positive size.
    """
    if memory_budget is not None:
        return parse_size(memory_budget)
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_BUDGET
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ValueError(f"environment variable {MEMORY_BUDGET_ENV}: {exc}") from None


@dataclass(frozen=True)
class MemoryEstimate:
    """Sizes of a validated architecture that set what its tensors cost (entries, not bytes).

    Attributes
    ----------
    weights : int
        Learned weight entries (all edges and node operators).
    largest_weight : tuple
        ``(key, shape)`` of the largest weight tensor, ``(None, ())`` if none.
    atoms, rows : int
        ``N`` (code entries, columns of ``D``) and ``n`` (residual entries, rows).
    conv_atoms : int
        Atoms of ``(C, H, W)`` nodes.
    max_taps : int
        Largest ``kernel_size ** 2`` of an operator between ``(C, H, W)`` maps.
    explicit : int
        Entries of the largest explicit operator block the geometry forms for
        an operator that touches a vector node: ``m * m + m * M`` with ``m``,
        ``M`` the smaller and larger of its input and output sizes.
    full_block : int
        Largest ``N_a * N_b`` over the Gram blocks of node pairs that share a
        term with an operator touching a vector node (evaluated row by row).
    bound : int
        Bytes of the largest Lipschitz bound a pursuit solver computes at a
        forward pass (:meth:`deepframe.ops.Operator.sqnorm_bound`, one
        operator at a time): for a convolution (``C_out x C_in`` kernel,
        stride ``s``) on a periodic grid of ``G_h x G_w`` (about the input
        map over ``s``), the complex128 kernel DFT and its Gram over ``G_h x
        (G_w // 2 + 1)`` frequencies, ``C_out C_in s^2 + 2 m^2`` entries each
        (``m = min(C_out, C_in s^2)``), counted at 40 bytes per entry for the
        16-byte entries and eigvalsh's workspace; for a dense operator, three
        float64 copies of its matrix (the SVD).
    """

    weights: int
    largest_weight: tuple
    atoms: int
    rows: int
    conv_atoms: int
    max_taps: int
    explicit: int
    full_block: int
    bound: int

    def bytes(self, what: str, itemsize: int = 8, memory_budget: int | None = None) -> int:
        """Estimated peak bytes of an operation, ``itemsize`` bytes per entry.

        ``"weights"`` (:func:`deepframe.dictionary.random_weights`: every
        weight at ``itemsize`` plus two float64 temporaries of the largest; also
        :func:`deepframe.compile` of a feed-forward network), ``"pursuit"``
        (:func:`deepframe.compile` of a solver with ``T > 0``: the weights and
        the Lipschitz bound its first forward pass computes, :attr:`bound`;
        measured peaks of that bound were 0.88-0.92 times ``32`` bytes per
        entry, so about 0.7 of this estimate) and ``"metrics"`` (the
        structured geometry's float64 work buffers beyond the weights:
        ``6 + max_taps / 2`` entries per conv atom, plus the largest explicit
        block, plus 9 entries per pair of the largest row-by-row Gram block,
        which is chunked to at most a quarter of ``memory_budget``). Measured
        peaks (``ru_maxrss``, torch 2.13, CPU) were 36-155 bytes per conv atom
        for kernels 1-7, 0.43-0.87 times this estimate
        (``analysis/bench_memory_estimate.py``).
        """
        largest = math.prod(self.largest_weight[1]) if self.largest_weight[0] else 0
        draw = 2 * 8 * largest
        if what == "weights":
            return self.weights * itemsize + draw
        if what == "pursuit":
            return self.weights * itemsize + draw + self.bound
        if what == "metrics":
            rows = 9 * 8 * self.full_block
            if memory_budget is not None:
                rows = min(rows, memory_budget // 4)
            return int(8 * (self.conv_atoms * (6 + self.max_taps / 2) + self.explicit) + rows)
        raise ValueError(f"unknown memory estimate {what!r}; expected weights, pursuit or metrics")


def estimate_memory(g: nx.DiGraph | Structure) -> MemoryEstimate:
    """The sizes of a validated graph that set its memory cost, without allocating a tensor."""
    st = structure(g)
    shapes = st.parameters
    weights = sum(math.prod(shape) for shape, _ in shapes.values())
    largest = max(shapes.items(), key=lambda kv: math.prod(kv[1][0]), default=(None, ((), 0)))
    node_sizes = {j: math.prod(shape) for j, shape in st.node_shapes.items()}
    conv_atoms = sum(node_sizes[j] for j, shape in st.node_shapes.items() if len(shape) == 3)
    specs = st.terms
    max_taps, explicit, full_block, bound = 1, 0, 0, (0, None)
    for spec in specs:
        ops_ = [spec.op, *(p for _, p in spec.targets)]
        for op in ops_:
            n_in, n_out = math.prod(op.in_shape), math.prod(op.out_shape)
            if len(op.in_shape) == 3 and len(op.out_shape) == 3:
                max_taps = max(max_taps, op.kernel_size**2)
            else:
                small, big = min(n_in, n_out), max(n_in, n_out)
                explicit = max(explicit, small * small + small * big)
            bound = max(bound, (op.bound_bytes(), op.weight_key), key=lambda b: b[0])
        if any(len(op.in_shape) != 3 or len(op.out_shape) != 3 for op in ops_):
            sizes = [node_sizes[spec.synth], *(node_sizes[k] for k, _ in spec.targets)]
            full_block = max(full_block, max(sizes) ** 2)
    return MemoryEstimate(
        weights=weights,
        largest_weight=(largest[0], tuple(largest[1][0])),
        atoms=sum(node_sizes.values()),
        rows=sum(math.prod(spec.op.in_shape) for spec in specs),
        conv_atoms=conv_atoms,
        max_taps=max_taps,
        explicit=explicit,
        full_block=full_block,
        bound=bound[0],
    )


_WHAT = {
    "weights": "initialising the weights",
    "pursuit": "the pursuit solver (weights and the Lipschitz bounds of a forward pass)",
    "metrics": "the structured geometry",
}


def check_memory(
    g: nx.DiGraph | Structure,
    what: str,
    *,
    dtype: torch.dtype = torch.float64,
    memory_budget: int | str | None = None,
) -> int:
    """Refuse an operation whose estimated memory exceeds the budget; return the estimate.

    Parameters
    ----------
    g : networkx.DiGraph or Structure
        Validated architecture (or its :class:`~deepframe.terms.Structure`).
    what : {"weights", "pursuit", "metrics"}
        The operation (see :meth:`MemoryEstimate.bytes`).
    dtype : torch.dtype
        Of the tensors the operation makes.
    memory_budget : int or str, optional
        Bytes (or ``"16G"``); default ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB.

    Raises
    ------
    MemoryBudgetError
        With the estimate, what dominates it, the budget and what to do.
    """
    budget = resolve_memory_budget(memory_budget)
    estimate = estimate_memory(g)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = estimate.bytes(what, itemsize, budget)
    if need <= budget:
        return need
    key, shape = estimate.largest_weight
    if what == "metrics":
        detail = f"{estimate.atoms:,} atoms, {estimate.conv_atoms:,} of them in conv maps"
        advice = "use a smaller input shape or narrower layers"
    else:
        detail = f"{estimate.weights:,} learned weights"
        if key is not None:
            detail += f", the largest {key!r} of shape {'x'.join(map(str, shape))}"
        if what == "pursuit":
            detail += f"; {format_bytes(estimate.bound)} for the largest Lipschitz bound"
        advice = "use narrower layers, a smaller input shape or fewer dense features"
    raise MemoryBudgetError(
        f"{_WHAT[what]} needs about {format_bytes(need)} ({detail}), more than the memory "
        f"budget of {format_bytes(budget)}: {advice}, or raise the budget (memory_budget=, "
        f"{MEMORY_BUDGET_ENV}=32G, or --memory-budget 32G on the command line) if the "
        "machine has the memory"
    )
