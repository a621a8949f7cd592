"""Shared numerical tools of the operators: the block power iteration and the dot test.

:func:`power_iteration` estimates the largest eigenvalue of a symmetric
positive semi-definite map (``A^T A`` for :meth:`Operator.sqnorm`, the Gram of a
whole dictionary for :meth:`deepframe.GlobalDictionary.sqnorm`);
:func:`dot_test` checks that an adjoint is exact (``<A u, v> = <u, A^T v>``),
for every edge kind, the compiled dictionary and :mod:`deepframe.testing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Shape = tuple[int, ...]

__all__ = ["DotTest", "dot_test", "power_iteration"]


def power_iteration(
    apply_gram,
    shape: Shape,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    iterations: int = 100,
    tol: float = 1e-10,
    seed: int = 0,
    block: int = 4,
) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite map by block power iteration.

    Subspace iteration on ``block`` vectors at once (through the batch
    dimension): ``Q <- orth(M Q)``, estimate = the largest eigenvalue of the
    Rayleigh-Ritz matrix ``Q^T M Q``. A single vector converges like
    ``(lambda_2 / lambda_1)^t``, which is slow when the top eigenvalues
    cluster (the x/y symmetry of a square convolution does that); a block of 4
    converges like ``(lambda_5 / lambda_1)^t``.

    Parameters
    ----------
    apply_gram : callable
        ``V -> M V`` for a batch of vectors of shape ``(b, *shape)``.
    shape : tuple of int
        Shape of one vector (without the batch dimension).
    iterations : int
        Maximum number of iterations.
    tol : float
        Stop when the estimate changes by less than ``tol`` (relative).
    seed : int
        Seed of the random start block (a private generator; no global state).
    block : int
        Number of vectors iterated together (at most the dimension).

    Returns
    -------
    float
        The largest Ritz value, a lower bound on ``lambda_max(M)`` that converges
        to it.
    """
    n = math.prod(shape)
    b = max(1, min(block, n))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn((n, b), generator=generator, dtype=torch.float64)
    q = torch.linalg.qr(q.to(dtype=dtype, device=device)).Q
    estimate = 0.0
    with torch.no_grad():
        for _ in range(iterations):
            mq = apply_gram(q.T.reshape(b, *shape)).reshape(b, n).T
            h = q.T @ mq
            new = float(torch.linalg.eigvalsh((h + h.T) / 2)[-1])
            if new <= 0.0:
                return 0.0
            q = torch.linalg.qr(mq).Q
            converged = abs(new - estimate) <= tol * abs(new)
            estimate = new
            if converged:
                break
    return estimate


@dataclass(frozen=True)
class DotTest:
    """Outcome of :func:`dot_test`.

    Attributes
    ----------
    error : float
        ``|<A u, v> - <u, A^T v>| / max(|<A u, v>|, |<u, A^T v>|)`` (``inf`` when
        a map returned the wrong shape).
    lhs, rhs : float
        ``<A u, v>`` and ``<u, A^T v>``, accumulated in float64 (``nan`` when a
        map returned the wrong shape).
    forward_shape, adjoint_shape : tuple of int
        Shapes ``A u`` and ``A^T v`` came back with (batch dimension included).
    """

    error: float
    lhs: float
    rhs: float
    forward_shape: Shape
    adjoint_shape: Shape


def dot_test(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int = 0,
    batch: int = 2,
) -> DotTest:
    """The dot test of a linear map: ``<A u, v> = <u, A^T v>`` for random ``u, v``.

    The one implementation behind :meth:`Operator.dottest`,
    :meth:`deepframe.GlobalDictionary.dottest` and
    :func:`deepframe.testing.assert_dottest` (PyLops' check of an adjoint).
    ``u`` (``(batch, *in_shape)``) and then ``v`` (``(batch, *out_shape)``) are
    drawn in float64 from a private generator seeded with ``seed`` and cast to
    ``dtype`` on ``device``; the inner products are accumulated in float64.

    Returns
    -------
    DotTest
        The relative error, both inner products and the shapes both maps
        returned (an exact adjoint restores its source's exact shape).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn((batch, *in_shape), generator=generator, dtype=torch.float64)
    v = torch.randn((batch, *out_shape), generator=generator, dtype=torch.float64)
    u, v = u.to(dtype=dtype, device=device), v.to(dtype=dtype, device=device)
    with torch.no_grad():
        au, atv = forward(u), adjoint(v)
    shapes = (tuple(au.shape), tuple(atv.shape))
    if shapes != ((batch, *out_shape), (batch, *in_shape)):
        return DotTest(math.inf, math.nan, math.nan, *shapes)
    lhs = float((au.double() * v.double()).sum())
    rhs = float((u.double() * atv.double()).sum())
    return DotTest(abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300), lhs, rhs, *shapes)
