"""The step sizes of the pursuit: provable bounds ``L_j`` of the block Lipschitz constants.

:class:`LipschitzBounds` is the part of :class:`~deepframe.pursuit.PursuitNet`
that bounds ``||A||^2`` of every operator of the current weights (batch norm's
column scale included), sums them per node into ``L_j`` (DP) and
``L_local_j`` (L-BP), rounds up to the module's dtype and caches the
eval-mode values until a weight or running statistic changes.
"""

from __future__ import annotations

import torch

from .. import ops
from .parameters import _BN_EPS, _round_up


class LipschitzBounds:
    """The ``L_j`` of a :class:`~deepframe.pursuit.PursuitNet` (a mixin of it).

    Reads the net's ``terms()``, ``nodes``, batch-norm parameters and buffers,
    ``_synth_terms`` / ``_target_terms``; holds ``_exact`` (the frozen exact
    norms of :meth:`refresh_lipschitz`) and ``_lipschitz_cache``.
    """

    def _eval_scales(self) -> dict:
        """``{node: s_j = gamma_j / sqrt(running_var_j + eps)}`` for batch-norm nodes."""
        out = {}
        for j in self.nodes:
            name = self._names[j]
            if name in self.bn_scale:
                var = getattr(self, f"bn_var_{name}")
                out[j] = self.bn_scale[name] / torch.sqrt(var + _BN_EPS)
        return out

    def _sqnorm(self, terms, i, n, scale=None) -> torch.Tensor:
        """Upper bound on ``||A||^2`` of term ``i``'s synthesis operator (``n is None``,
        with the batch-norm ``scale`` of its node) or of its target ``n``."""
        if self._exact is not None and not self.training:
            return self._exact[(i, n)]
        if n is None:
            op = terms[i].op if scale is None else ops.Scaled(terms[i].op, scale)
            return op.sqnorm_bound()
        return terms[i].targets[n][1].sqnorm_bound()

    def _node_lipschitz(self, terms, j, scale, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_j, L_local_j)`` in ``dtype``, each rounded up from float64.

        ``scale`` is node j's batch-norm scale when ``terms`` are not folded yet
        (``None`` once its synthesis operators are :class:`deepframe.ops.Scaled`).

        ``L_local_j = sum_{t: synth j} ||B_t S_j||^2`` (node j's own terms, L-BP)
        and ``L_j = L_local_j + sum_{t: j target} ||P_tj||^2`` (DP). Each
        ``||.||^2`` is an upper bound (:meth:`deepframe.ops.Operator.sqnorm_bound`),
        so by the triangle inequality ``L_j >= lambda_max(D_j^T D_j)``, the
        Lipschitz constant of ``grad_j f``.
        """
        with torch.no_grad():
            local = sum(self._sqnorm(terms, i, None, scale) for i in self._synth_terms[j])
            other = sum(self._sqnorm(terms, i, n) for i, n in self._target_terms[j])
            return _round_up(local + other, dtype), _round_up(local, dtype)

    @torch.no_grad()
    def refresh_lipschitz(self, *, exact: bool = False) -> None:
        """Choose how ``||A||^2`` of every operator is bounded.

        By default (``exact=False``) the solver bounds each operator of the
        current weights at every forward pass with
        :meth:`deepframe.ops.Operator.sqnorm_bound` (periodic-extension bound for
        convolutions, exact for dense, identity and shortcut operators): nothing
        is cached, so this call only leaves the exact mode. ``exact=True``
        (analysis, small graphs) instead takes each operator's exact squared
        norm from the SVD of its dense matrix, batch norm folded with the
        running statistics, times ``1 + ROUNDING_MARGIN``: still an upper bound
        of ``L_j`` (triangle inequality), tighter. These values are frozen
        until the next call: they apply to eval-mode forwards on the weights of
        this call (training forwards always use the default bound).
        """
        self._lipschitz_cache = None
        if not exact:
            self._exact = None
            return
        terms = self.terms()
        scales = self._eval_scales()
        values = {}
        for i, t in enumerate(terms):
            blocks = [(None, t.op)] + [(n, p) for n, (_, p) in enumerate(t.targets)]
            for n, op in blocks:
                if n is None and t.synth in scales:
                    op = ops.Scaled(op, scales[t.synth])
                if op.weight is None and not isinstance(op, ops.Scaled):
                    values[(i, n)] = op.sqnorm_bound()  # exactly 1
                    continue
                dense = op.todense().to(torch.float64)
                top = torch.linalg.matrix_norm(dense, ord=2).square()
                values[(i, n)] = top * (1.0 + ops.ROUNDING_MARGIN)
        self._exact = values

    def _lipschitz_key(self) -> tuple:
        """Identity and version counter of every tensor the eval-mode ``L_j`` depend on.

        Every in-place change through the parameters (optimiser steps,
        ``load_state_dict``, ``copy_`` under ``no_grad``) bumps a version
        counter; a new tensor has a new identity or storage.
        """
        tensors = [*self.weights.values(), *self.bn_scale.values()]
        tensors += [getattr(self, f"bn_var_{name}") for name in self.bn_scale]
        return tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)

    def lipschitz(self) -> dict:
        """``{node: L_j}``: exactly the values the solver uses in eval mode.

        Deep pursuit: ``L_j = max(s_j^2) sum_{t: synth j} ||B_t||^2 + sum_{t: j
        target} ||P_tj||^2``; layered pursuit: the node's own terms only,
        ``max(s_j^2) sum_{t: synth j} ||B_t||^2``. Batch norm's column scaling
        ``S_j = diag(s_j)``, ``s_j = gamma / sqrt(running_var + eps)``, enters through
        ``||B S_j|| <= max|s_j| ||B||`` (``s_j = 1`` without batch norm), every ``||.||^2``
        is a provable upper bound (:meth:`deepframe.ops.Operator.sqnorm_bound`,
        or the exact norms after ``refresh_lipschitz(exact=True)``) and the sum is
        rounded up to the module's dtype, so ``L_j >= lambda_max`` of the block
        Hessian the step is taken on. Detached 0-dim tensors.
        """
        terms = self.terms()
        scales = self._eval_scales()
        dtype = self.input_mean.dtype
        index = 1 if self.method == "layered" else 0
        return {j: self._node_lipschitz(terms, j, scales.get(j), dtype)[index] for j in self.nodes}
