"""Pursuit solvers compiled from architecture graphs (docs/solvers.md).

``compile(graph, method=..., iterations=T)`` returns a :class:`PursuitNet`, a
``torch.nn.Module`` that approximately solves the global non-negative LASSO

    minimise_{w >= 0}  F(w) = 1/2 sum_t ||r_t(w)||^2 + sum_j <lambda_j, w_j>

of the graph (the terms ``r_t`` of :mod:`deepframe.dictionary`) by T unrolled
iterations, then classifies the output node's code (global average pooling +
linear). The module holds what is learned and what normalises: the weights,
``lambda_j``, ``beta_j``, batch norm, the input's ``mean`` / ``std``, the
Lipschitz bounds ``L_j`` of the current weights and the head. Each forward
pass builds the batch's :class:`deepframe.solvers.Problem`, runs the
feed-forward pass (L-TP, Eq. 4 / 17: every method's start, which folds batch
norm into the problem) and hands it to the method's solver in
:data:`deepframe.solvers.SOLVERS`:

* ``"feedforward"`` (L-TP): no iterations;
* ``"layered"`` (L-BP, Algorithm 1): T local proximal steps per node;
* ``"deep"`` (DP, Algorithm 2): T sweeps of proximal block coordinate descent,
  ``w_j <- ReLU(w^_j - s_j (grad_j f + lambda_j))``, ``s_j = 1 / (beta_j L_j)``
  with ``L_j`` a provable upper bound on the block Lipschitz constant
  (:meth:`PursuitNet.lipschitz`). DP-res is DP on a graph with skip edges.

No ``.item()``, no data-dependent Python branching and no detach inside the
unrolled loop: attacks differentiate through every iteration.

The package:

=====================  ==========================================================
:mod:`.options`        :class:`CompileOptions`: every option, validated at once
:mod:`.compiler`       :func:`compile`
:mod:`.net`            :class:`PursuitNet`: parameters, normalisation, the solve
:mod:`.lipschitz`      the bounds ``L_j`` of the steps (a part of PursuitNet)
:mod:`.parameters`     the parametrisation's constants, imported weights
=====================  ==========================================================
"""

from __future__ import annotations

from ..solvers import Trace
from .compiler import compile
from .net import PursuitNet
from .options import METHODS, CompileOptions

__all__ = ["compile", "PursuitNet", "Trace", "METHODS", "CompileOptions"]
