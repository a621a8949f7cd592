"""The dense reference: form ``D`` and its normalised Gram, read off the metrics.

docs/geometry.md, section 4. ``D.todense()``, normalise the columns,
``G = D_n^T D_n``. ``S`` for the deep frame potential is the nonzero pattern
of the Gram at two independent random weight draws (a structurally nonzero
entry is a nonzero polynomial in the weights, so it is nonzero at random
weights with probability one; parameter-free cancellations are exact zeros in
floating point), independent of the structured count. Obviously correct and
``O(N^2)`` in memory: it refuses with :class:`GramTooLargeError` beyond the
memory budget. Plain matrices (numpy or torch, real or complex) always take
this path.
"""

from __future__ import annotations

import numpy as np
import torch

from ..dictionary import GlobalDictionary, random_weights
from ..memory import MemoryBudgetError, resolve_memory_budget
from .results import GramMetrics, atom_location

__all__ = [
    "GramTooLargeError",
    "dense_metrics",
    "dense_matrix",
    "dense_structure",
    "normalised_gram",
    "as_matrix",
]


class GramTooLargeError(MemoryBudgetError):
    """The dense Gram would not fit the memory budget (use ``method="structured"``)."""


def check_dense_budget(big_n: int, n: int, itemsize: int, memory_budget: int | None) -> None:
    """Refuse (:class:`GramTooLargeError`) when ``itemsize (2 N^2 + 2 n N)`` bytes exceed it.

    That is ``D``, its normalised copy and two ``N x N`` arrays (the Gram, and
    the identity batch or the structure pattern).
    """
    memory_budget = resolve_memory_budget(memory_budget)
    need = itemsize * (2 * big_n * big_n + 2 * n * big_n)
    if need > memory_budget:
        raise GramTooLargeError(
            f"method='dense' needs about {need / 2**30:.3g} GiB for the {big_n} x {big_n} Gram "
            f"of N={big_n} atoms in n={n} rows ({itemsize} bytes per entry), more than "
            f"memory_budget={memory_budget / 2**30:.3g} GiB; use method='structured' or raise "
            "memory_budget"
        )


def dense_matrix(d: GlobalDictionary, memory_budget: int | None) -> torch.Tensor:
    """``D`` as a dense float64 tensor; differentiable in the weights when grad is enabled."""
    n, big_n = d.shape
    check_dense_budget(big_n, n, 8, memory_budget)
    if not torch.is_grad_enabled():
        return d.todense().to(torch.float64)
    eye = torch.eye(big_n, dtype=d.dtype, device=d.device)
    return d.matvec(eye).T.to(torch.float64)


def normalised_gram(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(D_n^H D_n, nonzero)``: the Gram of the unit-norm columns (zero columns stay zero).

    Returns
    -------
    gram : torch.Tensor
        ``(N, N)``.
    nonzero : torch.Tensor
        ``(N,)`` bool, the nonzero columns.
    """
    norms = m.abs().pow(2).sum(0).sqrt()
    scale = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
    mn = m * scale.to(m.dtype)[None, :]
    return mn.conj().T @ mn, norms > 0


def dense_structure(d: GlobalDictionary, memory_budget: int | None) -> torch.Tensor:
    """Structurally nonzero Gram entries of ``d``'s architecture, from two random weight draws.

    An entry that is nonzero for some weights is a nonzero polynomial in the
    weights, so it is nonzero at random weights with probability one;
    parameter-free cancellations (``-I + I``) are exact zeros in floating point.

    Returns
    -------
    torch.Tensor
        ``(N, N)`` bool on the CPU, diagonal ``False``.
    """
    pattern = None
    for seed in (101, 202):
        weights = random_weights(d.graph, seed=seed, dtype=torch.float64, device="cpu")
        dr = GlobalDictionary(d.graph, weights)
        m = dense_matrix(dr, memory_budget).detach()
        hit = (m.T @ m) != 0
        pattern = hit if pattern is None else pattern | hit
    pattern.fill_diagonal_(False)
    return pattern


def as_matrix(d) -> torch.Tensor:
    """A plain dictionary matrix as a float64 (or complex128) ``(n, N)`` tensor."""
    m = d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d))
    if m.dim() != 2:
        raise ValueError(
            f"a dictionary matrix must be 2-D (rows x atoms), got shape {tuple(m.shape)}"
        )
    if m.is_complex():
        return m.to(torch.complex128)
    return m.to(torch.float64)


def dense_metrics(
    d, *, order: int, memory_budget: int | None, want_dfp: bool, details: bool
) -> GramMetrics:
    """:class:`GramMetrics` of a global dictionary or a plain matrix from its dense Gram.

    Parameters
    ----------
    d : GlobalDictionary, torch.Tensor or numpy.ndarray
        For a plain matrix ``S`` is the support overlap ``|D|^T |D| > 0``.
    order : int
        ``k`` of ``sum_{i,j} |G_ij|^{2k}``.
    memory_budget : int or str or None
    want_dfp : bool
        Also find ``S``, ``N_nz`` and the deep frame potential.
    details : bool
        Also the per-block breakdown (global dictionaries only).
    """
    if isinstance(d, GlobalDictionary):
        m = dense_matrix(d, memory_budget)
    else:
        m = as_matrix(d)
        check_dense_budget(m.shape[1], m.shape[0], m.element_size(), memory_budget)
    n, big_n = m.shape
    plain = not isinstance(d, GlobalDictionary)
    support = (m != 0).double() if want_dfp and plain else None
    g, nonzero = normalised_gram(m)
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
            structure = dense_structure(d, memory_budget)
        else:
            structure = (support.T @ support) > 0
            structure.fill_diagonal_(False)
        n_nz = int(structure.sum())
        dfp = float(off[structure].pow(2).sum()) / n_nz if n_nz else 0.0
    attained = {"value": mu}
    blocks = []
    if isinstance(d, GlobalDictionary):
        attained.update(_where(d, i, j))
        if details:
            blocks = _blocks(d, off, structure if want_dfp else None)
    else:
        attained["atoms"] = [{"column": i}, {"column": j}]
    return GramMetrics(
        mu, fp, dfp, big_n, n, int(nonzero.sum()), n_nz, attained, blocks, "dense", order
    )


def _locate(d: GlobalDictionary, column: int) -> tuple:
    """``(node, flat index in the node)`` of a global column."""
    k = int(np.searchsorted(d.col_offsets, column, side="right")) - 1
    return d.nodes[k], column - d.col_offsets[k]


def _where(d: GlobalDictionary, i: int, j: int) -> dict:
    (a, ia), (b, ib) = _locate(d, i), _locate(d, j)
    if d.nodes.index(a) > d.nodes.index(b):
        (a, ia), (b, ib) = (b, ib), (a, ia)
    return {"blocks": [a, b], "atoms": [atom_location(d, a, ia), atom_location(d, b, ib)]}


def _blocks(d: GlobalDictionary, off: torch.Tensor, structure: torch.Tensor | None) -> list:
    """The per block pair breakdown of :func:`~deepframe.geometry.coherence_breakdown`."""
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
                    "atoms": [atom_location(d, a, i), atom_location(d, b, j)],
                    "frame_potential": factor * float(sub.pow(2).sum()),
                    "structural_nonzeros": None if nnz is None else factor * nnz,
                }
            )
    out.sort(key=lambda r: -r["max"])
    return out
