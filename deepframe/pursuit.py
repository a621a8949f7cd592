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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .dictionary import (
    GlobalDictionary,
    Term,
    node_lambdas,
    random_weights,
    split_weights,
    structure,
)
from .graph import validate
from .solvers import SOLVERS, Problem, SolverOptions, Trace, fista_alphas
from .solvers import conv_groups as _conv_groups

__all__ = ["compile", "PursuitNet", "Trace", "METHODS"]

METHODS = tuple(SOLVERS)  # ("feedforward", "layered", "deep")
SCHEDULES = ("gauss-seidel", "jacobi")
THRESHOLDS = ("step", "paper")
LAYERED_INITS = ("final", "feedforward")
NEGATIVE_BIAS = ("error", "clip")

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1
_LAMBDA_FLOOR = 1e-4  # softplus cannot reach 0: a requested lambda of 0 starts here
_BETA_INIT = 1.0 - 1e-4  # beta = exp(-softplus(rho)) cannot reach 1: learned beta starts here


def _round_up(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` (float64) converted to ``dtype``, rounded towards +infinity."""
    value = torch.as_tensor(value, dtype=torch.float64)
    low = value.to(dtype)
    up = torch.nextafter(low, torch.full_like(low, math.inf))
    return torch.where(low.to(torch.float64) < value, up, low)


def _drop_power_buffers(state_dict, prefix, *args) -> None:
    """Checkpoints written before L_j became a bound carry power-iteration buffers
    (``power_<term>_<block>_v`` / ``_sq``); the solver no longer has them."""
    for key in [
        k for k in state_dict if re.fullmatch(re.escape(prefix) + r"power_\d+_\w+_(v|sq)", k)
    ]:
        del state_dict[key]


def _safe_name(key: str, taken: set) -> str:
    name = re.sub(r"[^0-9A-Za-z_]", "_", key.replace("->", "__"))
    base, i = name, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


class PursuitNet(nn.Module):
    """A pursuit solver over an architecture graph followed by a linear classifier.

    Built by :func:`compile`; see its documentation for the options.

    Learned parameters: the graph's weights (``weights``), ``lambda_j >= 0``
    per channel as ``softplus(rho)`` (``lambda_rho``; with ``free_lambda``, a
    solver that never iterates holds ``lambda_j`` of any sign as is in
    ``lambda_free``), ``beta_j in (0, 1)`` as
    ``exp(-softplus(rho))`` (``beta_rho``, only with ``beta="learned"``), the
    batch-norm scales (``bn_scale``) and the classifier ``head``.
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        *,
        method: str,
        iterations: int,
        alpha,
        beta,
        learn_lambda: bool,
        threshold: str,
        schedule: str,
        layered_init: str,
        num_classes: int,
        mean,
        std,
        seed: int,
        checkpoint_sweeps: bool | int = False,
        channels_last: bool = False,
        torch_compile: bool | Mapping = False,
        free_lambda: bool = False,
    ):
        super().__init__()
        st = structure(graph)  # a graph or its Structure (compile hands down the latter)
        self.structure = st
        self.graph = graph = st.graph
        self.method = method
        self.iterations = int(iterations)
        self.threshold = threshold
        self.schedule = schedule
        self.layered_init = layered_init
        self.checkpoint_sweeps = checkpoint_sweeps
        self.channels_last = bool(channels_last)
        self.torch_compile = (
            dict(torch_compile) if isinstance(torch_compile, Mapping) else bool(torch_compile)
        )
        self.nodes = list(st.nodes)
        self.input = st.input
        self.output = st.output
        self.input_shape = st.input_shape
        if alpha == "fista":
            self.alphas = fista_alphas(self.iterations)
        else:
            self.alphas = [float(alpha)] * self.iterations

        taken: set = set()
        self._weight_names = {}  # weight key -> parameter name
        self._names = {}  # node -> parameter name of its lambda, beta, batch norm
        self.weights = nn.ParameterDict()
        # Drawn in float64 (as deepframe.dictionary draws them); compile() casts the
        # module to its dtype, so a float64 model holds exactly the same weights.
        for key, w in random_weights(st, seed=seed, dtype=torch.float64).items():
            self._weight_names[key] = _safe_name(key, taken)
            self.weights[self._weight_names[key]] = nn.Parameter(w)
        self.lambda_rho = nn.ParameterDict()
        self.lambda_free = nn.ParameterDict()
        self.free_lambda = bool(free_lambda)
        self.beta_rho = nn.ParameterDict()
        self.bn_scale = nn.ParameterDict()
        self._fixed_beta = None if beta == "learned" else float(beta)
        for j, lam in node_lambdas(st, dtype=torch.float64).items():
            name = _safe_name(str(j), taken)
            self._names[j] = name
            if self.free_lambda:
                self.lambda_free[name] = nn.Parameter(lam.clone(), requires_grad=learn_lambda)
            else:
                rho = torch.log(torch.expm1(lam.clamp_min(_LAMBDA_FLOOR)))
                self.lambda_rho[name] = nn.Parameter(rho, requires_grad=learn_lambda)
            if self._fixed_beta is None:
                self.beta_rho[name] = nn.Parameter(
                    torch.tensor(math.log(math.expm1(-math.log(_BETA_INIT))))
                )
            if graph.nodes[j].get("batchnorm", False):
                c = graph.nodes[j]["shape"][0]
                self.bn_scale[name] = nn.Parameter(torch.ones(c))
                self.register_buffer(f"bn_mean_{name}", torch.zeros(c))
                self.register_buffer(f"bn_var_{name}", torch.ones(c))

        c_out = graph.nodes[self.output]["shape"][0]
        self.head = nn.Linear(c_out, num_classes)
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(c_out)
            self.head.weight.copy_(
                torch.rand(self.head.weight.shape, generator=gen) * 2 * bound - bound
            )
            self.head.bias.zero_()

        shape = (-1, 1, 1) if len(self.input_shape) == 3 else (-1,)
        mean = (
            torch.zeros(self.input_shape[0])
            if mean is None
            else torch.as_tensor(mean, dtype=torch.float64)
        )
        std = (
            torch.ones(self.input_shape[0])
            if std is None
            else torch.as_tensor(std, dtype=torch.float64)
        )
        self.register_buffer("input_mean", mean.to(torch.float64).reshape(shape).clone())
        self.register_buffer("input_std", std.to(torch.float64).reshape(shape).clone())

        # Structure of the terms (weights-independent): which terms touch which node.
        self._specs = list(st.terms)
        terms = self.terms()
        self._synth_terms = {
            j: [i for i, t in enumerate(terms) if t.synth == j] for j in self.nodes
        }
        self._target_terms = {
            j: [(i, n) for i, t in enumerate(terms) for n, (k, _) in enumerate(t.targets) if k == j]
            for j in self.nodes
        }
        self._exact = None  # {(term, target or None): ||A||^2}, see refresh_lipschitz(exact=True)
        self._lipschitz_cache = None  # (key, {node: (L_j, L_local_j)}) of eval-mode forwards
        self._register_load_state_dict_pre_hook(_drop_power_buffers)
        # The Jacobi sweep applies same-shaped convolutions as one grouped call.
        self._conv_groups = _conv_groups(self._specs)

    # ------------------------------------------------------------------
    # parameters as the graph names them
    # ------------------------------------------------------------------
    def weight_dict(self) -> dict[str, torch.Tensor]:
        """``{weight key: parameter}`` with the keys of :func:`parameter_shapes`."""
        return {key: self.weights[name] for key, name in self._weight_names.items()}

    def lambdas(self) -> dict:
        """``{node: lambda_j}`` (per channel/feature; ``>= 0`` unless ``free_lambda``)."""
        if self.free_lambda:
            return {j: self.lambda_free[self._names[j]] for j in self.nodes}
        return {j: F.softplus(self.lambda_rho[self._names[j]]) for j in self.nodes}

    def betas(self) -> dict:
        """``{node: beta_j}`` in ``(0, 1]``."""
        if self._fixed_beta is not None:
            return {j: self._fixed_beta for j in self.nodes}
        return {j: torch.exp(-F.softplus(self.beta_rho[self._names[j]])) for j in self.nodes}

    def terms(self) -> list[Term]:
        """The residual terms with the current weights (batch norm not folded)."""
        weights = self.weight_dict()
        return [spec.build(weights) for spec in self._specs]

    def dictionary(self) -> GlobalDictionary:
        """The dictionary the solver solves in eval mode (detached): batch norm folded.

        A node with batch norm normalises its feed-forward pre-activation with
        the running statistics and is then folded into the problem (docs/solvers.md, "Batch norm"):
        its synthesis blocks become ``B_t S_j``, ``S_j = diag(s_j)``, ``s_j =
        gamma_j / sqrt(running_var_j + eps)`` (``column_scales``; its target
        blocks ``-P_tj`` stay unscaled), and its penalty the effective
        ``lambda_j = max(lambda_j + s_j mu_j, 0)`` with ``mu_j`` the running
        mean. Without batch norm this is the dictionary of the weights and
        ``lambda_j``. Because only the synthesis blocks scale, the normalised
        columns differ from :meth:`unfolded_dictionary`'s, and so do its
        coherence and frame potentials.

        The objective the solver decreases is ``D.objective(net.normalize(x),
        codes)``: the model's input normalisation (``mean``, ``std``) is applied
        to ``x`` first. In training mode the solver folds the *batch*
        statistics instead, which no fixed dictionary describes.
        """
        unfolded = self.unfolded_dictionary()
        scales = {j: s.detach() for j, s in self._eval_scales().items()}
        lambdas = dict(unfolded.lambdas)
        for j, s in scales.items():
            mean = getattr(self, f"bn_mean_{self._names[j]}")
            lambdas[j] = F.relu(lambdas[j] + s * mean)
        return GlobalDictionary(self.graph, unfolded.weights, lambdas, column_scales=scales)

    def unfolded_dictionary(self) -> GlobalDictionary:
        """The :class:`GlobalDictionary` of the weights and ``lambda_j`` alone (detached),
        batch norm left out: what the solver solves for a model without batch norm,
        and the architecture's dictionary at the trained weights otherwise.
        """
        weights = {k: w.detach() for k, w in self.weight_dict().items()}
        lambdas = {j: lam.detach() for j, lam in self.lambdas().items()}
        return GlobalDictionary(self.graph, weights, lambdas)

    # ------------------------------------------------------------------
    # Lipschitz constants
    # ------------------------------------------------------------------
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

    # ------------------------------------------------------------------
    # the solver
    # ------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` in ``[0, 1]`` of shape ``(B, *input_shape)``."""
        code = self.encode(x)[self.output]
        pooled = code.flatten(2).mean(2) if code.dim() == 4 else code
        return self.head(pooled)

    def encode(self, x: torch.Tensor, trace: bool = False):
        """Codes ``{node: (B, *shape)}`` after the pursuit; with ``trace=True`` also a
        :class:`Trace`.
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected input of shape (B, {self.input_shape}), got {tuple(x.shape)}"
            )
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.torch_compile and not trace:
            return self._compiled()(x)
        return self._solve(x, trace)

    def _compiled(self):
        """``torch.compile`` of :meth:`_solve` (built on first use, ``fullgraph=True``)."""
        fn = self.__dict__.get("_compiled_solve")
        if fn is None:
            options = self.torch_compile if isinstance(self.torch_compile, dict) else {}
            fn = torch.compile(self._solve, **{"fullgraph": True, **options})
            self.__dict__["_compiled_solve"] = fn
        return fn

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_compiled_solve", None)  # rebuilt on first use (not picklable)
        return state

    def _solve(self, x: torch.Tensor, trace: bool = False):
        """:meth:`encode` after the input checks: the pursuit itself.

        The feed-forward pass (L-TP; lines 1-3 of Algorithm 2) builds the codes
        every method starts from and completes the :class:`Problem` (batch norm
        folded, effective lambdas, ``L_j``); ``SOLVERS[method]`` iterates from
        there. With ``T = 0`` every method is the feed-forward pass.
        """
        problem = self._problem(self.normalize(x))
        codes = self._feedforward(problem, complete=trace or self.iterations > 0)
        history = [dict(codes)] if trace else None
        if self.iterations > 0:
            problem.betas = self.betas()
            codes = SOLVERS[self.method](problem, codes, self._options(), history)
        if not trace:
            return codes
        return codes, Trace.from_history(problem, history)

    def _problem(self, xn: torch.Tensor) -> Problem:
        """The :class:`Problem` of the current weights for the normalised input ``xn``
        (batch norm not folded yet: :meth:`_feedforward` does that)."""
        return Problem(
            self.terms(),
            xn,
            self.nodes,
            self._synth_terms,
            self._target_terms,
            conv_groups=self._conv_groups,
            threshold=self.threshold,
        )

    def _options(self) -> SolverOptions:
        """The iteration options of the solvers, from the module's attributes."""
        return SolverOptions(
            iterations=self.iterations,
            alphas=tuple(self.alphas),
            schedule=self.schedule,
            layered_init=self.layered_init,
            segment=self._segment_length(),
        )

    def _feedforward(self, problem: Problem, complete: bool = True) -> dict:
        """L-TP (Eq. 4 / Eq. 17) with batch norm; completes ``problem`` if ``complete``.

        ``w_j = ReLU(a_j - lambda_j)`` in topological order, ``a_j =
        problem.preactivation(j, codes)``; a batch-norm node normalises ``a_j``
        (``torch.nn.functional.batch_norm`` with shift ``-lambda_j``: the
        ordinary network) and is then folded into the problem
        (docs/solvers.md, "Batch norm"): its synthesis blocks scale by ``S_j``
        (:meth:`Problem.scale_columns`), its feed-forward threshold is
        ``lambda_j + s_j mu_j`` and its effective lambda ``max(lambda_j + s_j
        mu_j, 0)``. When the pursuit iterates, ``L_j`` and ``L_local_j`` are
        bounded on the scaled blocks (:meth:`_node_lipschitz`, detached; kept
        in eval mode until a weight or running statistic changes).

        ``complete=False`` returns the same codes without completing the
        problem: nothing reads it after a feed-forward pass that is neither
        iterated nor traced, and in training mode the fold would compute each
        batch-norm node's batch statistics a second time (about a sixth of a
        T = 0 training step with batch norm, measured by
        ``analysis/bench.py --section batchnorm``).
        """
        lambdas = self.lambdas()
        # Eval-mode bounds depend on the weights and running statistics only: kept
        # until one of them changes (not while tracing for torch.compile).
        use_cache = not self.training and self.iterations > 0 and not torch.compiler.is_compiling()
        key = self._lipschitz_key() if use_cache else None
        cached = None
        if use_cache and self._lipschitz_cache is not None and self._lipschitz_cache[0] == key:
            cached = self._lipschitz_cache[1]
        codes = {}
        for j in self.nodes:
            a = problem.preactivation(j, codes)
            lam = lambdas[j]
            name = self._names[j]
            batchnorm = name in self.bn_scale
            if batchnorm:
                gamma = self.bn_scale[name]
                mean, var = getattr(self, f"bn_mean_{name}"), getattr(self, f"bn_var_{name}")
                pre = F.batch_norm(a, mean, var, gamma, -lam, self.training, _BN_MOMENTUM, _BN_EPS)
            else:
                pre = a - lam.reshape((-1,) + (1,) * (a.dim() - 2))
            codes[j] = F.relu(pre)
            if not complete:
                continue
            threshold = lam
            if batchnorm:
                if self.training:
                    dims = [0] + list(range(2, a.dim()))
                    mean, var = a.mean(dims), a.var(dims, unbiased=False)
                scale = gamma / torch.sqrt(var + _BN_EPS)
                problem.scale_columns(j, scale)
                threshold = lam + scale * mean
            problem.feedforward_thresholds[j] = threshold
            problem.lambdas[j] = F.relu(threshold)
            if cached is not None:
                problem.lipschitz[j], problem.local_lipschitz[j] = cached[j]
            elif self.iterations > 0:  # node j's synthesis operators are scaled by now
                problem.lipschitz[j], problem.local_lipschitz[j] = self._node_lipschitz(
                    problem.terms, j, None, a.dtype
                )
        if use_cache and cached is None:
            self._lipschitz_cache = (
                key,
                {j: (problem.lipschitz[j], problem.local_lipschitz[j]) for j in self.nodes},
            )
        return codes

    def gradient(self, x: torch.Tensor, codes: Mapping) -> dict:
        """``{node: grad_j f}`` of the smooth part at ``codes`` (Eq. 15 / Eq. 18).

        The same block gradient the solver uses (:meth:`Problem.gradient`), of
        :meth:`unfolded_dictionary`'s problem (batch norm not folded); ``x`` is
        the raw input (normalised here).
        """
        problem = self._problem(self.normalize(x))
        synth = [t.op.adjoint(codes[t.synth]) for t in problem.terms]
        return {j: problem.gradient(j, codes, codes[j], synth, synth) for j in self.nodes}

    def _segment_length(self) -> int:
        """Iterations per recomputed segment with ``checkpoint_sweeps`` (0: no checkpoints).

        ``True`` picks ``round(sqrt(T / 3))``, at least 1. A segment boundary keeps
        one code per node; recomputing a segment of ``k`` sweeps holds about three
        per node and sweep (residuals, gradients, new codes), so the peak is about
        ``(T / k + 3 k)`` codes per node, least near ``k = sqrt(T / 3)``.
        """
        k = self.checkpoint_sweeps
        if k is True:
            return max(1, round(math.sqrt(self.iterations / 3)))
        return int(k)

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, iterations={self.iterations}, "
            f"schedule={self.schedule!r}, threshold={self.threshold!r}, "
            f"layered_init={self.layered_init!r}, "
            f"nodes={len(self.nodes)}"
        )


def compile(
    graph: nx.DiGraph,
    method: str = "deep",
    iterations: int = 0,
    *,
    alpha: float | str = 0.0,
    beta: float | str = "learned",
    learn_lambda: bool = True,
    threshold: str = "step",
    schedule: str = "gauss-seidel",
    layered_init: str = "final",
    num_classes: int | None = None,
    mean=None,
    std=None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device=None,
    checkpoint_sweeps: bool | int = False,
    channels_last: bool = False,
    torch_compile: bool | Mapping = False,
    weights: Mapping[str, torch.Tensor] | None = None,
    negative_bias: str = "error",
) -> PursuitNet:
    """Compile an architecture graph into a pursuit solver + classifier.

    Parameters
    ----------
    graph : networkx.DiGraph
        Architecture (validated here).
    method : {"feedforward", "layered", "deep"}
        L-TP, L-BP (Algorithm 1) or DP (Algorithm 2; DP-res on graphs with skips).
    iterations : int
        ``T``, the number of unrolled iterations (ignored by ``"feedforward"``).
    alpha : float in [0, 1) or ``"fista"``
        Extrapolation ``w^ = w^[t-1] + alpha (w^[t-1] - w^[t-2])`` (Eq. 14), fixed,
        or the FISTA momentum schedule.
    beta : ``"learned"`` or float in (0, 1]
        Step ``s_j = 1 / (beta_j L_j)``: learned per node (initialised just below
        1) or fixed.
    learn_lambda : bool
        Learn ``lambda_j = softplus(rho_j) >= 0`` per channel (initialised from the
        nodes' ``bias``, at least 1e-4).
    threshold : {"step", "paper"}
        ``"step"`` thresholds by ``s_j lambda_j`` (fixed points = minimisers of F);
        ``"paper"`` by ``lambda_j``, literally Eq. 13.
    schedule : {"gauss-seidel", "jacobi"}
        Deep pursuit order: newest values of every block (Gauss-Seidel, Algorithm 2)
        or all blocks from the previous sweep (Jacobi; parallel, but the block
        step ``1 / L_j`` no longer guarantees descent).
    layered_init : {"final", "feedforward"}
        Where layered pursuit starts node j. ``"feedforward"``: its feed-forward
        code ``w_j^[0] = ReLU(B_j^T w_{j-1}^[0] - lambda_j)``, Eq. 9 read
        literally. ``"final"`` (default): the same threshold applied to the
        predecessors' *final* codes, ``ReLU(B_j^T w_{j-1}^[T] - lambda_j)``, a
        start consistent with the local problem (Eq. 7), which reconstructs
        ``w_{j-1}^[T]``; the default because the trained L-BP models of this
        project use it. Both coincide for the first node and for ``T = 0``.
    num_classes : int, optional
        Outputs of the linear head (default: the rows of ``weights["head.weight"]``,
        else 10).
    mean, std : sequence of float, optional
        Per-channel input normalisation applied inside the model.
    seed : int
        Seed of the initial weights (the same He-style weights as
        ``deepframe.dictionary(graph, seed=seed)``).
    checkpoint_sweeps : bool or int
        Recompute the iterations (DP sweeps, L-BP local steps) in the backward
        pass instead of storing their activations (``torch.utils.checkpoint``,
        non-reentrant): training memory grows with ``T`` by one code-sized state
        per segment instead of all of a sweep's activations, for about one more
        forward pass of the iterations. ``True`` recomputes segments of
        ``round(sqrt(T / 3))`` iterations (at least 1), an int ``k >= 1`` segments
        of ``k``.
        Gradients equal the stored path's; inference (no autograd) is unaffected.
    channels_last : bool
        Keep convolution weights and activations in ``torch.channels_last``
        memory format (the input is converted inside the model); usually faster
        with cuDNN on a GPU, same results.
    torch_compile : bool or mapping
        Run the pursuit through ``torch.compile(..., fullgraph=True)`` (built on
        the first call); a mapping passes its options (``backend``, ``mode``,
        ...) to ``torch.compile``. ``encode(x, trace=True)`` stays eager.
    weights : mapping, optional
        Initial weights instead of random ones: every edge weight under the keys
        of :func:`deepframe.dictionary.parameter_shapes`, and optionally
        ``"lambda:j"``, batch-norm statistics and the head (the mapping
        :func:`deepframe.from_torch` returns; see
        :func:`deepframe.dictionary.split_weights`). A solver that never
        iterates (``"feedforward"``, or ``iterations=0``) keeps the lambdas
        exactly, of any sign (``lambda_j = -bias_j`` of the imported network),
        as free parameters: it is the imported network, in float64 to rounding.
        A pursuit keeps them through ``lambda = softplus(rho)`` (at least 1e-4).
    negative_bias : {"error", "clip"}
        What a pursuit (``"layered"`` / ``"deep"`` with ``iterations > 0``) does
        with ``lambda_j < 0`` in ``weights`` (a trained network's positive
        biases; they make F unbounded below): ``"error"`` refuses them
        (ValueError naming the nodes); ``"clip"`` projects every lambda onto
        ``[0, inf)``, ``lambda_j <- max(lambda_j, 0)`` per channel (for a
        batch-norm node ``lambda_j`` is minus the batch norm's shift ``beta``).
        The projection changes the feed-forward initialisation wherever a
        lambda was negative.
    """
    if method not in METHODS:
        raise ValueError(f"compile: unknown method {method!r}; expected one of {METHODS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"compile: unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if threshold not in THRESHOLDS:
        raise ValueError(f"compile: unknown threshold {threshold!r}; expected one of {THRESHOLDS}")
    if layered_init not in LAYERED_INITS:
        raise ValueError(
            f"compile: unknown layered_init {layered_init!r}; expected one of {LAYERED_INITS}"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"compile: iterations must be an integer >= 0, got {iterations!r}")
    if alpha != "fista" and not (isinstance(alpha, (int, float)) and 0.0 <= alpha < 1.0):
        raise ValueError(f"compile: alpha must be in [0, 1) or 'fista', got {alpha!r}")
    if beta != "learned" and not (isinstance(beta, (int, float)) and 0.0 < beta <= 1.0):
        raise ValueError(f"compile: beta must be in (0, 1] or 'learned', got {beta!r}")
    if not isinstance(checkpoint_sweeps, (bool, int)) or checkpoint_sweeps < 0:
        raise ValueError(
            "compile: checkpoint_sweeps must be True, False or an integer >= 1 "
            f"(iterations per recomputed segment), got {checkpoint_sweeps!r}"
        )
    if not isinstance(torch_compile, (bool, Mapping)):
        raise ValueError(
            "compile: torch_compile must be a bool or a mapping of torch.compile options, "
            f"got {torch_compile!r}"
        )
    if negative_bias not in NEGATIVE_BIAS:
        raise ValueError(
            f"compile: unknown negative_bias {negative_bias!r}; expected one of {NEGATIVE_BIAS}"
        )
    g = structure(validate(graph))  # built once, handed down to the solver
    from .dictionary import check_memory  # refuses before allocating (MemoryBudgetError)

    check_memory(g, "pursuit" if method != "feedforward" and iterations else "weights", dtype=dtype)
    if method == "feedforward":
        iterations = 0
    imported = None
    if weights is not None:
        imported = _imported_weights(g, weights, iterations, negative_bias)
        classes = imported[3]
        if classes is not None and num_classes is not None and num_classes != classes:
            raise ValueError(
                f"compile: num_classes={num_classes} but weights['head.weight'] has {classes} rows"
            )
        num_classes = classes if num_classes is None else num_classes
    if num_classes is None:
        num_classes = 10
    net = PursuitNet(
        g,
        method=method,
        iterations=iterations,
        alpha=alpha,
        beta=beta,
        learn_lambda=learn_lambda,
        threshold=threshold,
        schedule=schedule,
        layered_init=layered_init,
        num_classes=num_classes,
        mean=mean,
        std=std,
        seed=seed,
        checkpoint_sweeps=checkpoint_sweeps,
        channels_last=channels_last,
        torch_compile=torch_compile,
        free_lambda=imported is not None and iterations == 0,
    )
    net = net.to(dtype=dtype, device=device)
    if imported is not None:
        edges, lambdas, nodes, _, head = imported
        _load_weights(net, edges, lambdas, nodes, head)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _imported_weights(g, weights, iterations: int, negative_bias: str):
    """Split ``weights`` (:func:`split_weights`) and apply the ``negative_bias`` policy.

    Returns ``(edges, lambdas, nodes, classes, head)`` with ``lambdas`` projected onto
    ``[0, inf)`` for ``negative_bias="clip"`` and ``classes`` the head's rows (or None).
    """
    edges, nodes, head = split_weights(g, weights)
    lambdas = dict(nodes["lambda"])
    if negative_bias == "clip":
        lambdas = {j: lam.clamp_min(0) for j, lam in lambdas.items()}
    elif iterations > 0:
        negative = {j: lam for j, lam in lambdas.items() if bool((lam < 0).any())}
        if negative:
            listed = ", ".join(
                f"{j!r} ({int((lam < 0).sum())} of {lam.numel()}, min {float(lam.min()):.3g})"
                for j, lam in list(negative.items())[:3]
            )
            more = f" and {len(negative) - 3} more nodes" if len(negative) > 3 else ""
            raise ValueError(
                f"compile: lambda < 0 (a positive bias of the imported network) at nodes "
                f"{listed}{more}: the pursuit objective F is unbounded below then. "
                "Compile method='feedforward' (exact), or pass negative_bias='clip' to project "
                "lambda onto [0, inf) (docs/bring-your-own-model.md)"
            )
    classes = int(head["weight"].shape[0]) if head else None
    return edges, lambdas, nodes, classes, head


def _load_weights(net: PursuitNet, edges, lambdas, nodes, head) -> None:
    """Copy imported weights into a freshly built solver (after its dtype/device move)."""
    with torch.no_grad():
        for key, w in edges.items():
            net.weights[net._weight_names[key]].copy_(w)
        for j, lam in lambdas.items():
            name = net._names[j]
            if net.free_lambda:
                net.lambda_free[name].copy_(lam)
            else:  # the inverse of softplus, stable for large lambda
                lam = lam.double().clamp_min(_LAMBDA_FLOOR)
                net.lambda_rho[name].copy_(lam + torch.log(-torch.expm1(-lam)))
        for j, gamma in nodes["bn_scale"].items():
            name = net._names[j]
            eps = nodes["bn_eps"].get(j)
            var = nodes["bn_var"][j].double()
            if eps is not None:  # the solver's batch norm uses eps = _BN_EPS
                var = var + float(eps) - _BN_EPS
            if bool((var < 0).any()):
                raise ValueError(
                    f"compile: node {j!r}: running variance + eps is below the solver's "
                    f"batch-norm eps {_BN_EPS}; fold this batch norm into the weights instead"
                )
            net.bn_scale[name].copy_(gamma)
            getattr(net, f"bn_mean_{name}").copy_(nodes["bn_mean"][j])
            getattr(net, f"bn_var_{name}").copy_(var)
        if head:
            net.head.weight.copy_(head["weight"])
            net.head.bias.copy_(head["bias"])
