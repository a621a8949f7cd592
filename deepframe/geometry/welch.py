"""Welch bounds: how small the coherence and frame potential of unit vectors can be.

docs/geometry.md, section 5. For ``N`` unit vectors in ``R^n`` or ``C^n``
and an order ``k >= 1``,

    sum_{i,j} |G_ij|^(2k) >= N^2 c_k,        mu >= ((N c_k - 1) / (N - 1))^(1 / (2k)),

with ``c_k = 1 / binom(n + k - 1, k)`` over C and
``c_k = (1 * 3 * ... * (2k - 1)) / (n (n + 2) ... (n + 2k - 2))`` over R.
These depend on ``N`` and ``n`` only; the architecture-dependent bounds are
in :mod:`deepframe.geometry.bounds`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["FIELDS", "frame_potential_bound", "welch_bound"]

#: The scalar fields of the Welch bounds.
FIELDS = ("real", "complex")


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
