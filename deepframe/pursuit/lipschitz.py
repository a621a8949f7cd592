"""The step sizes of the pursuit: provable bounds ``L_j`` of the block Lipschitz constants.

:class:`LipschitzBounds` is the part of :class:`~deepframe.pursuit.PursuitNet`
that bounds ``||A||^2`` of every operator of the current weights (batch norm's
column scale included), sums them per node into ``L_j`` (DP) and
``L_local_j`` (L-BP), rounds up to the module's dtype and caches the
eval-mode values until a weight or running statistic changes. In training the
weights change at every step: there each learned operator's bound is the
exact bound at reference weights plus a perturbation bound (:class:`_Reference`),
recomputed exactly when its slack passes a tolerance or after a number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .parameters import _BN_EPS, _round_up


@dataclass
class _Reference:
    """The exact bound of one learned operator at reference weights ``W_0``.

    ``weight``: a detached copy of ``W_0`` (the parameter's dtype: one copy of the
    weights, the size of SGD's momentum); ``sqnorm``: ``s_0 =``
    ``sqnorm_bound()`` at ``W_0`` (``>= ||A(W_0)||^2``); ``root``: ``sqrt(s_0)``;
    ``steps``: training forwards since; ``owner``: identity, storage, dtype and
    device of the parameter it was taken from (anything else: stale).
    """

    weight: torch.Tensor
    sqnorm: torch.Tensor
    root: torch.Tensor
    owner: tuple
    steps: int = 0


def _owner(weight: torch.Tensor) -> tuple:
    return (id(weight), weight.data_ptr(), weight.dtype, weight.device)


class LipschitzBounds:
    """The ``L_j`` of a :class:`~deepframe.pursuit.PursuitNet` (a mixin of it).

    Reads the net's ``terms()``, ``nodes``, batch-norm parameters and buffers,
    ``_synth_terms`` / ``_target_terms``; holds ``_exact`` (the frozen exact
    norms of :meth:`refresh_lipschitz`), ``_lipschitz_cache`` and, for training
    forwards, the reference bounds (:meth:`_training_sqnorm`).

    Attributes
    ----------
    lipschitz_tolerance : float
        Training forwards: the slack ``bound / s_0 - 1`` past which an
        operator's bound is recomputed exactly (default 0.05); ``0``: exactly
        at every forward (the bound of the current weights, as in eval mode).
    lipschitz_every : int
        Training forwards: recompute every operator's bound exactly at least
        every this many forwards (default 20; ``1``: at every forward).
    """

    lipschitz_tolerance: float = 0.05
    lipschitz_every: int = 20

    def _references(self) -> dict:
        """``{(term, target or None): _Reference}`` of the training forwards.

        Kept in the instance ``__dict__`` (not a parameter or buffer: never in
        the ``state_dict``); a copy (``copy.deepcopy``, pickling) has none
        (``PursuitNet.__getstate__`` leaves them out), and a reference whose
        owner is not the parameter it bounds now is recomputed.
        """
        refs = self.__dict__.get("_lipschitz_references")
        if refs is None:
            refs = self.__dict__["_lipschitz_references"] = {}
        return refs

    def train(self, mode: bool = True):
        """``nn.Module.train``, which also starts the training bounds afresh.

        Every call drops the reference bounds, so each training phase (an
        epoch of :func:`deepframe.train.train`, which calls ``model.train()``
        once per epoch) starts from exact bounds of its weights: a run resumed
        from a checkpoint takes the very steps of the run it continues.
        """
        self._forget_references()
        return super().train(mode)

    def _forget_references(self, *args) -> None:
        """Drop every reference bound and pending slack (``load_state_dict``'s hook)."""
        self.__dict__["_lipschitz_references"] = {}
        self.__dict__["_lipschitz_pending"] = None

    def _read_pending(self) -> set:
        """The operators whose slack passed the tolerance at an earlier forward.

        The flags of a forward are copied to the host without waiting (CUDA: a
        non-blocking copy into pinned memory and an event) and read at a later
        forward once the copy is done (the event says so; never waited on), so
        the decision costs no host synchronisation; on CPU they are host memory
        already and read at the next forward (a deterministic schedule; on CUDA
        when a recomputation comes may depend on timing, never whether the
        bound holds).
        """
        pending = self.__dict__.get("_lipschitz_pending")
        if pending is None:
            return set()
        keys, flags, event = pending
        if event is not None and not event.query():
            return set()
        self.__dict__["_lipschitz_pending"] = None
        return {key for key, over in zip(keys, flags.tolist()) if over}

    def _post_pending(self, flags: dict) -> None:
        """Queue this forward's slack flags ``{key: 0-dim bool tensor}`` for a later read."""
        if not flags or self.__dict__.get("_lipschitz_pending") is not None:
            return
        keys = list(flags)
        stacked = torch.stack([flags[k] for k in keys])
        event = None
        if stacked.device.type == "cuda":
            host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            host.copy_(stacked, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            stacked = host
        self.__dict__["_lipschitz_pending"] = (keys, stacked, event)

    def _training_sqnorm(self, key, op) -> torch.Tensor:
        """Upper bound on ``||A||^2`` of an unscaled operator at the current weights.

        Learned operators keep a :class:`_Reference` at weights ``W_0``:

            ||A(W)||_2 <= ||A(W_0)||_2 + ||A(W - W_0)||_2 <= sqrt(s_0) + e,

        ``e`` = :meth:`deepframe.ops.Operator.change_norm_bound` of ``W -
        W_0`` (the operator is linear in its weight), so ``(sqrt(s_0) +
        e)^2 (1 + ROUNDING_MARGIN)`` is a provable bound for any change of
        the weights, whatever made it. It is recomputed exactly
        (``sqnorm_bound()``, new ``W_0``) when there is no valid reference,
        after ``lipschitz_every`` forwards, or when a forward's slack ``bound /
        s_0 - 1`` passed ``lipschitz_tolerance`` (read at a later forward,
        :meth:`_read_pending`: the bound is provable either way, the
        tolerance only bounds how loose it gets).
        """
        weight = op.weight
        if weight is None or self.lipschitz_tolerance <= 0 or self.lipschitz_every <= 1:
            return op.sqnorm_bound()
        refs = self._references()
        ref = refs.get(key)
        stale = ref is None or ref.owner != _owner(weight) or ref.steps >= self.lipschitz_every
        if stale or key in self.__dict__.get("_lipschitz_due", ()):
            frozen = weight.detach().clone()
            exact = op.with_weight(frozen).sqnorm_bound()
            refs[key] = _Reference(frozen, exact, exact.sqrt(), _owner(weight), 1)
            return exact
        # both converted first: the difference is taken in float64
        change = op.change_norm_bound(
            weight.detach().to(torch.float64) - ref.weight.to(torch.float64)
        )
        if change is None:
            return op.sqnorm_bound()
        ref.steps += 1
        bound = (ref.root + change).square() * (1.0 + ops.ROUNDING_MARGIN)
        self.__dict__.setdefault("_lipschitz_flags", {})[key] = bound > ref.sqnorm * (
            1.0 + self.lipschitz_tolerance
        )
        return bound

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
        op = terms[i].op if n is None else terms[i].targets[n][1]
        if n is None and scale is not None:
            op = ops.Scaled(op, scale)
        if not self.training or torch.compiler.is_compiling():
            return op.sqnorm_bound()
        inner, column_scale = op.unscaled()
        bound = self._training_sqnorm((i, n), inner)
        if column_scale is None:
            return bound
        # as ops.Scaled.sqnorm_bound: ||S A||^2 <= max(s^2) ||A||^2
        return bound * column_scale.detach().to(torch.float64).square().max()

    def _begin_bounds(self) -> None:
        """Before a forward's bounds: which operators are due for an exact recomputation."""
        if self.training and not torch.compiler.is_compiling():
            self.__dict__["_lipschitz_due"] = self._read_pending()
            self.__dict__["_lipschitz_flags"] = {}

    def _end_bounds(self) -> None:
        """After a forward's bounds: queue their slack flags (:meth:`_read_pending`)."""
        if torch.compiler.is_compiling():
            return
        flags = self.__dict__.pop("_lipschitz_flags", None)
        self.__dict__.pop("_lipschitz_due", None)
        if flags:
            self._post_pending(flags)

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
                scale = scales.get(t.synth) if n is None else None
                if op.weight is None and scale is None:
                    values[(i, n)] = op.sqnorm_bound()  # exactly 1
                    continue
                dense = _dense_float64(op, scale)
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


def _dense_float64(op, scale: torch.Tensor | None) -> torch.Tensor:
    """The matrix of ``diag(scale) A`` formed in float64 (weight and scale converted first).

    Forming ``diag(s) A`` in a float32 module's dtype rounds every product
    ``s_c W`` to float32 before the float64 SVD, which can put the "exact"
    norm below the one of the dictionary the solver uses (by ~1e-8 relative).
    """
    if op.weight is not None:
        op = op.with_weight(op.weight.detach().to(torch.float64))
    dense = op.todense().to(torch.float64)
    if scale is None:
        return dense
    per_row = scale.detach().to(device=dense.device, dtype=torch.float64)
    per_row = per_row.repeat_interleave(op.out_size // op.out_shape[0])
    return per_row[:, None] * dense
