"""``PursuitNet``: the module that owns a compiled solver's parameters and runs it.

Each forward pass builds the batch's :class:`deepframe.solvers.Problem`, runs
the feed-forward pass (L-TP, Eq. 4 / 17: every method's start, which folds
batch norm into the problem) and hands it to the method's solver in
:data:`deepframe.solvers.SOLVERS`. The step sizes are
:class:`~.lipschitz.LipschitzBounds`'.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from .._inputs import check_images
from ..dictionary import GlobalDictionary
from ..memory import segment_length
from ..solvers import SOLVERS, Problem, SolverOptions, Trace, fista_alphas
from ..solvers import conv_groups as _conv_groups
from ..terms import Term, structure
from .lipschitz import LipschitzBounds
from .options import CompileOptions
from .parameters import _BN_EPS, _BN_MOMENTUM, _drop_power_buffers, register_parameters

__all__ = ["PursuitNet"]


def _forget_lipschitz_references(module, incompatible_keys) -> None:
    """``load_state_dict``'s post hook: loaded weights recompute their training bounds."""
    module._forget_references()


class PursuitNet(LipschitzBounds, nn.Module):
    """A pursuit solver over an architecture graph followed by a linear classifier.

    Built by :func:`compile`; see its documentation for the options.

    Learned parameters: the graph's weights (``weights``), ``lambda_j >= 0``
    per channel as ``softplus(rho)`` (``lambda_rho``; with ``free_lambda``, a
    solver that never iterates holds ``lambda_j`` of any sign as is in
    ``lambda_free``), ``beta_j in (0, 1)`` as
    ``exp(-softplus(rho))`` (``beta_rho``, only with ``beta="learned"``), the
    batch-norm scales (``bn_scale``) and the classifier ``head``.

    Its settings are ``options`` (a :class:`~.options.CompileOptions`); the
    ones the solver reads at every call are also attributes (``method``,
    ``iterations``, ``threshold``, ``schedule``, ``layered_init``, ...).
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        options: CompileOptions,
        *,
        free_lambda: bool = False,
    ):
        super().__init__()
        o = self.options = options
        st = structure(graph)  # a graph or its Structure (compile hands down the latter)
        self.structure = st
        self.graph = graph = st.graph
        self.method = o.method
        self.iterations = int(o.iterations)
        self.threshold = o.threshold
        self.schedule = o.schedule
        self.layered_init = o.layered_init
        self.checkpoint_sweeps = o.checkpoint_sweeps
        self.channels_last = bool(o.channels_last)
        self.torch_compile = (
            dict(o.torch_compile) if isinstance(o.torch_compile, Mapping) else bool(o.torch_compile)
        )
        self.nodes = list(st.nodes)
        self.input = st.input
        self.output = st.output
        self.input_shape = st.input_shape
        if o.alpha == "fista":
            self.alphas = fista_alphas(self.iterations)
        else:
            self.alphas = [float(o.alpha)] * self.iterations

        register_parameters(self, st, o, free_lambda)

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
        # loaded weights: the training bounds' references are recomputed (LipschitzBounds)
        self.register_load_state_dict_post_hook(_forget_lipschitz_references)
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

        ``x`` follows the input rule of :mod:`deepframe._inputs`: floating point
        (cast to the module's dtype) of shape ``(B, *input_shape)``; its values are
        not read (no host synchronisation).
        """
        x = check_images(x, where="PursuitNet", dtype=self.input_mean.dtype, values=False)
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
        # the training bounds' references and pending flags: a copy recomputes its own
        state.pop("_lipschitz_references", None)
        state.pop("_lipschitz_pending", None)
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
        in eval mode until a weight or running statistic changes; in training
        from reference bounds plus a perturbation bound, recomputed exactly
        when their slack passes ``lipschitz_tolerance`` or every
        ``lipschitz_every`` forwards, see :class:`~.lipschitz.LipschitzBounds`).

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
        bounds = complete and cached is None and self.iterations > 0
        if bounds:
            self._begin_bounds()
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
        if bounds:
            self._end_bounds()
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
        x = check_images(x, where="PursuitNet.gradient", dtype=self.input_mean.dtype, values=False)
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
        return segment_length(self.iterations, self.checkpoint_sweeps)

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, iterations={self.iterations}, "
            f"schedule={self.schedule!r}, threshold={self.threshold!r}, "
            f"layered_init={self.layered_init!r}, "
            f"nodes={len(self.nodes)}"
        )
