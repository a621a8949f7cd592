"""The pursuit algorithms over one batch's problem (docs/solvers.md).

:class:`Problem` is the global non-negative LASSO of one batch (seed
Eq. 11, with skips Eq. 16),

    minimise_{w >= 0}  F(w) = 1/2 sum_t ||r_t(w)||^2 + sum_j <lambda_j, w_j>,
    r_t = sum_k P_tk w_k + P_t,x x - B_t w_synth(t),

with what a proximal-gradient step on block ``j`` needs: the residuals, the
block gradient (Eq. 8 for a node's own terms, Eq. 15 / 18 with the feedback
of the terms that reconstruct it), ``L_j`` and the proximal step (Eq. 10 /
Eq. 13). The solvers are small functions in the string-keyed registry
:data:`SOLVERS` (as torchdiffeq's), one per ``compile(method=...)``:

* ``"feedforward"`` (L-TP, Eq. 4): the feed-forward pass every method starts
  from (lines 1-3 of Algorithm 2) is already the answer;
* ``"layered"`` (L-BP, :func:`layered`): Algorithm 1;
* ``"deep"`` (DP, :func:`deep`): Algorithm 2, Gauss-Seidel or Jacobi sweeps.

Each is called as ``SOLVERS[method](problem, codes, options, history)`` with
the feed-forward codes and returns the final codes. :class:`PursuitNet
<deepframe.pursuit.PursuitNet>` owns the parameters, the normalisation (input
and batch norm, folded into the problem by the feed-forward pass) and the
classifier head; it builds the :class:`Problem` and calls these.

Inside the unrolled loops there is no ``.item()``, no data-dependent Python
branch and no detach: attacks differentiate through every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .dictionary import lasso_objective
from .terms import Term

__all__ = [
    "Problem",
    "SolverOptions",
    "SOLVERS",
    "Trace",
    "feedforward",
    "layered",
    "deep",
    "fista_alphas",
]


# --------------------------------------------------------------------------
# the problem
# --------------------------------------------------------------------------
class Problem:
    """The global non-negative LASSO of one batch, as the pursuit iterates on it.

    Built by :class:`deepframe.PursuitNet` from the current weights and the
    normalised input; its feed-forward pass completes it (batch norm folded
    by :meth:`scale_columns`, then ``lambdas``, ``lipschitz``, ...).

    Parameters
    ----------
    terms : list of Term
        The residual terms ``r_t`` with the current weights (this problem's own
        copies: :meth:`scale_columns` replaces their synthesis operators).
    x : torch.Tensor
        The input as the dictionary sees it (normalised), ``(B, *input_shape)``.
    nodes : list
        Activation nodes in topological order (the column blocks).
    synth_terms : dict
        ``{node j: [index of every term t with synth(t) = j]}``.
    target_terms : dict
        ``{node j: [(term index t, position n in t.targets) for every P_tj]}``.
    conv_groups : list of tuple of int
        Terms whose synthesis convolutions share shapes, stride and padding
        (one grouped call in a Jacobi sweep; empty: one call per term).
    threshold : {"step", "paper"}
        The proximal step's threshold (:meth:`prox`).

    Attributes
    ----------
    inputs : list
        ``P_t,x x`` per term (``None`` for a term without input): the input's
        part of every target, constant over the iterations.
    lambdas : dict
        Effective ``lambda_j >= 0`` per node (batch norm folded:
        ``max(lambda_j + s_j mu_j, 0)``), the penalty the iterations use.
    feedforward_thresholds : dict
        The feed-forward threshold per node (``lambda_j + s_j mu_j``, may be
        negative with batch norm): ``w_j = ReLU(a_j - threshold_j)``, with
        ``a_j`` from the scaled synthesis operators.
    lipschitz, local_lipschitz : dict
        ``L_j`` over all blocks of node j (DP) and over its own terms only
        (L-BP): detached upper bounds of the block Lipschitz constants.
    betas : dict
        ``beta_j in (0, 1]``: the step is ``s_j = 1 / (beta_j L_j)``.
    """

    def __init__(
        self,
        terms: list[Term],
        x: torch.Tensor,
        nodes: list,
        synth_terms: dict,
        target_terms: dict,
        *,
        conv_groups=(),
        threshold: str = "step",
    ):
        self.terms = terms
        self.inputs = [sum(p.forward(x) for p in t.inputs) if t.inputs else None for t in terms]
        self.nodes = nodes
        self.synth_terms = synth_terms
        self.target_terms = target_terms
        self.conv_groups = conv_groups
        self.threshold = threshold
        self.lambdas: dict = {}
        self.feedforward_thresholds: dict = {}
        self.lipschitz: dict = {}
        self.local_lipschitz: dict = {}
        self.betas: dict = {}

    def scale_columns(self, j, scale: torch.Tensor) -> None:
        """Fold batch norm of node ``j``: its synthesis blocks become ``B_t S_j``,
        ``S_j = diag(scale)`` (:class:`deepframe.ops.Scaled`); its target blocks stay."""
        for i in self.synth_terms[j]:
            self.terms[i].op = ops.Scaled(self.terms[i].op, scale)

    def target(self, i: int, codes, node=None, code=None) -> torch.Tensor | None:
        """``sum_k P_tk w_k + P_t,x x``: what term ``t = terms[i]`` reconstructs,
        with ``w_node = code`` if given."""
        out = self.inputs[i]
        for k, p in self.terms[i].targets:
            v = p.forward(code if k == node else codes[k])
            out = v if out is None else out + v
        return out

    def residual(self, i: int, codes, synthesis: torch.Tensor | None = None) -> torch.Tensor:
        """``r_t = target_t - B_t w_synth(t)`` of term ``t = terms[i]``; ``synthesis``
        is ``B_t w`` when the caller has it already (for an extrapolated ``w^``)."""
        if synthesis is None:
            term = self.terms[i]
            synthesis = term.op.adjoint(codes[term.synth])
        return self.target(i, codes) - synthesis

    def preactivation(self, j, codes) -> torch.Tensor:
        """``a_j = sum_{t: synth j} A_t (target_t)`` from the current codes (Eq. 4 / 17)."""
        a = None
        for i in self.synth_terms[j]:
            v = self.terms[i].op.forward(self.target(i, codes))
            a = v if a is None else a + v
        return a

    def gradient(self, j, codes, w_hat, synth_hat, synth=None) -> torch.Tensor:
        """``grad_j f`` at ``w_j = w_hat``, the other blocks from ``codes``.

            grad_j f = sum_{t: synth t = j} -A_t r_t  +  sum_{t: j in targets t} P_tj^T r_t

        The first sum is node j's own terms (Eq. 8, layered pursuit's local
        gradient); the second the feedback of the terms that reconstruct node j
        (Eq. 15 for a chain, Eq. 18 with skips). ``synth_hat[i] = B_i w_hat``
        for node j's own terms and ``synth[i] = B_i w_synth(i)`` of the current
        codes are passed in, so that a sweep keeps them from one update to the
        next instead of recomputing them; ``synth=None`` leaves the feedback out.
        """
        grad = None
        for i in self.synth_terms[j]:
            v = -self.terms[i].op.forward(self.residual(i, codes, synth_hat[i]))
            grad = v if grad is None else grad + v
        if synth is not None:
            for i, n in self.target_terms[j]:
                r = self.target(i, codes, j, w_hat) - synth[i]
                v = self.terms[i].targets[n][1].adjoint(r)
                grad = v if grad is None else grad + v
        return grad

    def prox(self, j, w_hat, grad, local: bool = False) -> torch.Tensor:
        """The proximal gradient step of block ``j`` (Eq. 10 / Eq. 13).

            w_j <- ReLU(w^_j - s_j (grad + lambda_j)),   s_j = 1 / (beta_j L_j)

        (``threshold="step"``: fixed points are the minimisers of ``F``), or
        ``ReLU(w^_j - s_j grad - lambda_j)`` (``"paper"``: Eq. 13 literally).
        ``local`` steps with node j's own-terms bound (layered pursuit).
        """
        lip = (self.local_lipschitz if local else self.lipschitz)[j]
        view = (-1,) + (1,) * (w_hat.dim() - 2)
        step = 1.0 / (self.betas[j] * lip)
        lam = self.lambdas[j].reshape(view)
        if self.threshold == "step":
            return F.relu(w_hat - step * (grad + lam))
        return F.relu(w_hat - step * grad - lam)


@dataclass(frozen=True)
class SolverOptions:
    """How a solver iterates (the ``compile`` options that are not the problem's).

    Attributes
    ----------
    iterations : int
        ``T``, unrolled iterations (sweeps, local steps).
    alphas : tuple of float
        Extrapolation weight ``alpha_t`` of iteration ``t`` (Eq. 14), ``T`` of them.
    schedule : {"gauss-seidel", "jacobi"}
        Deep pursuit's block order.
    layered_init : {"final", "feedforward"}
        Where layered pursuit starts a node (docs/solvers.md).
    segment : int
        Iterations per recomputed segment (``checkpoint_sweeps``; 0: none).
    """

    iterations: int
    alphas: tuple
    schedule: str = "gauss-seidel"
    layered_init: str = "final"
    segment: int = 0

    def alpha(self, t: int) -> float:
        """``alpha_t``, 0 past the last iteration."""
        return self.alphas[t] if t < self.iterations else 0.0


def fista_alphas(iterations: int) -> list[float]:
    """FISTA momentum ``alpha_t = (tau_{t-1} - 1) / tau_t`` (Beck & Teboulle 2009)."""
    out, tau = [], 1.0
    for _ in range(iterations):
        nxt = (1.0 + math.sqrt(1.0 + 4.0 * tau * tau)) / 2.0
        out.append((tau - 1.0) / nxt)
        tau = nxt
    return out


# --------------------------------------------------------------------------
# the solvers
# --------------------------------------------------------------------------
def feedforward(problem: Problem, codes: dict, options: SolverOptions, history=None) -> dict:
    """L-TP (Eq. 4 / Eq. 17): the feed-forward codes, no iterations.

    ``w_j = ReLU(a_j - lambda_j)`` in topological order is the pass every method
    starts from, so L-TP returns ``codes`` as they are.
    """
    return codes


def layered(problem: Problem, codes: dict, options: SolverOptions, history=None) -> dict:
    """L-BP (Algorithm 1): ``T`` local proximal steps per node, predecessors fixed.

    For each node ``j`` in topological order, with its predecessors at their
    final codes,

        w_j^[t] = ReLU(w^_j - s_j (g_j + lambda_j)),   g_j = sum_{t: synth j} -A_t r_t

    (Eq. 8, 10; ``s_j = 1 / (beta_j L_local_j)``, ``w^_j`` extrapolated as in
    Eq. 14). Node j starts from ``options.layered_init``: ``"feedforward"``, its
    own feed-forward code ``ReLU(B_j^T w_{j-1}^[0] - lambda_j)`` (Eq. 9 read
    literally), or ``"final"``, the same threshold applied to the predecessors'
    final codes, ``ReLU(B_j^T w_{j-1}^[T] - lambda_j)``.

    ``codes`` holds the feed-forward codes. With a ``history`` list (the
    trace), entry ``t`` appended is every node's ``t``-th local iterate.
    """
    start = codes
    codes = dict(codes)
    per_node = {}
    for j in problem.nodes:
        if options.layered_init == "feedforward":
            w = prev = start[j]
        else:
            a = problem.preactivation(j, codes)
            view = (-1,) + (1,) * (a.dim() - 2)
            w = prev = F.relu(a - problem.feedforward_thresholds[j].reshape(view))
        local = [w] if history is not None else None
        step = _local_step(problem, j, dict(codes), options)
        codes[j], _ = _unroll(step, (w, prev), options, local)
        per_node[j] = local
    if history is not None:  # index 0 stays the feed-forward state (the "final" start is not)
        history += [
            {j: per_node[j][t] for j in problem.nodes} for t in range(1, options.iterations + 1)
        ]
    return codes


def _local_step(problem: Problem, j, fixed: dict, options: SolverOptions):
    """Iteration ``t`` of node j's local problem as ``(w, w_prev) -> (w_new, w)``.

    ``fixed`` holds the predecessors' final codes; ``w_prev`` is ``None`` when no
    extrapolation needs it.
    """
    own = problem.synth_terms[j]

    def step(t, state):
        w, prev = state
        alpha = options.alphas[t]
        w_hat = w + alpha * (w - prev) if alpha else w
        synth_hat = {i: problem.terms[i].op.adjoint(w_hat) for i in own}
        grad = problem.gradient(j, fixed, w_hat, synth_hat)
        w_new = problem.prox(j, w_hat, grad, local=True)
        return w_new, (w if options.alpha(t + 1) else None)

    return step


def deep(problem: Problem, codes: dict, options: SolverOptions, history=None) -> dict:
    """DP (Algorithm 2): ``T`` sweeps of extrapolated proximal block coordinate descent.

    Sweep ``t`` updates every node ``j`` (Eq. 13, 14):

        w^_j = w_j^[t-1] + alpha_t (w_j^[t-1] - w_j^[t-2])
        w_j^[t] = ReLU(w^_j - s_j (grad_j f(w^_j, the other blocks) + lambda_j))

    with ``grad_j f`` of Eq. 15 / 18 (:meth:`Problem.gradient`), the other blocks
    the newest ones (``"gauss-seidel"``, Algorithm 2) or all from the previous
    sweep (``"jacobi"``). DP-res is this on a graph with skips.

    A sweep starts by applying ``B_i`` to every term's synthesis code and keeps
    those products while it updates the nodes (an update never changes a value
    the same sweep reads later: a term's targets precede its synthesis node).
    Extrapolation is linear, so ``B_i w^ = B_i w + alpha (B_i w - B_i w_prev)``
    costs no operator call, and a sweep applies two operators per term
    (``B_i w`` and ``A_i r_i``). With a ``history`` list, entry ``t`` appended
    is the codes after sweep ``t``.
    """
    if options.schedule == "jacobi":
        groups = _group_weights(problem.terms, problem.conv_groups)

        def sweep(problem, alpha, codes, prev, synth_prev):
            return _jacobi_sweep(problem, alpha, codes, prev, synth_prev, groups)
    else:
        sweep = _gauss_seidel_sweep

    def step(t, state):
        codes, prev, synth_prev = state
        new, synth = sweep(problem, options.alphas[t], codes, prev, synth_prev)
        keep = bool(options.alpha(t + 1))  # the next extrapolation needs w and B w
        return new, (codes if keep else None), (synth if keep else None)

    codes, _, _ = _unroll(step, (dict(codes), None, None), options, history)
    return codes


def _gauss_seidel_sweep(problem: Problem, alpha: float, codes, prev, synth_prev):
    """One sweep, nodes in topological order, each seeing the newest other blocks.

    Returns the new codes and ``[B_i w_synth(i)]`` of the old ones (the next
    sweep's ``B_i w_prev``); ``prev`` / ``synth_prev`` ``None`` mean "equal to
    ``codes`` / its products" (the first sweep).
    """
    synth = [term.op.adjoint(codes[term.synth]) for term in problem.terms]
    new = dict(codes)
    for j in problem.nodes:
        w = codes[j]
        if alpha:
            w_prev = w if prev is None else prev[j]
            before = synth if synth_prev is None else synth_prev
            w_hat = w + alpha * (w - w_prev)
            hat = {i: synth[i] + alpha * (synth[i] - before[i]) for i in problem.synth_terms[j]}
        else:
            w_hat, hat = w, synth
        grad = problem.gradient(j, new, w_hat, hat, synth)
        new[j] = problem.prox(j, w_hat, grad)
    return new, synth


def _jacobi_sweep(problem: Problem, alpha: float, codes, prev, synth_prev, groups):
    """One sweep with every block computed from ``codes`` (the previous sweep).

    The same arithmetic as a Gauss-Seidel sweep that reads only old values,
    arranged as one pass: all ``B_i w``, then all residuals, then all
    ``A_i r_i``, then the node updates, with same-shaped convolutions batched
    into one grouped call each (``groups``, from :func:`_group_weights`).
    """
    terms = problem.terms
    synth = _apply_grouped(terms, groups, [codes[term.synth] for term in terms], True)
    if alpha:
        prev = codes if prev is None else prev
        before = synth if synth_prev is None else synth_prev
        w_hat = {j: codes[j] + alpha * (codes[j] - prev[j]) for j in problem.nodes}
        hat = [s + alpha * (s - b) for s, b in zip(synth, before)]
    else:
        w_hat, hat = codes, synth
    # r_i = target_i - B_i w^_synth(i): the residual in the synthesis node's gradient
    res = [problem.residual(i, codes, hat[i]) for i in range(len(terms))]
    analysed = _apply_grouped(terms, groups, res, False)
    new = {}
    for j in problem.nodes:
        grad = None
        for i in problem.synth_terms[j]:
            v = -analysed[i]
            grad = v if grad is None else grad + v
        for i, n in problem.target_terms[j]:
            if alpha:  # node j's own extrapolation in the target, the others' plain B w
                r = problem.target(i, codes, j, w_hat[j]) - synth[i]
            else:
                r = res[i]
            v = terms[i].targets[n][1].adjoint(r)
            grad = v if grad is None else grad + v
        new[j] = problem.prox(j, w_hat[j], grad)
    return new, synth


SOLVERS: dict[str, Callable] = {"feedforward": feedforward, "layered": layered, "deep": deep}
"""``compile(method=...)`` -> ``solver(problem, codes, options, history) -> codes``."""


def _unroll(step, state, options: SolverOptions, history=None):
    """``state = step(t, state)`` for ``t = 0 .. T-1``, appending ``state[0]`` to
    ``history`` (when given) after each.

    With ``options.segment`` (and autograd recording, no history) the
    iterations run in segments under ``torch.utils.checkpoint`` (non-reentrant):
    only each segment's input state is kept, its activations are recomputed in
    the backward pass. The last segment is stored as usual: the backward pass
    starts with it, so recomputing it would cost time and save no memory. The
    segments hold iterations only, no in-place state update (running
    statistics), so recomputation changes nothing twice.
    """
    iterations = options.iterations
    length = 0
    if history is None and torch.is_grad_enabled():
        length = options.segment
    if not length:
        for t in range(iterations):
            state = step(t, state)
            if history is not None:
                history.append(state[0])
        return state
    from torch.utils.checkpoint import checkpoint

    def segment(start, stop, state):
        for t in range(start, stop):
            state = step(t, state)
        return state

    for start in range(0, iterations, length):
        stop = min(start + length, iterations)
        if stop == iterations:  # the backward pass starts here: keep, do not redo
            return segment(start, stop, state)
        state = checkpoint(
            segment, start, stop, state, use_reentrant=False, preserve_rng_state=False
        )
    return state


# --------------------------------------------------------------------------
# grouped convolutions of the Jacobi sweep
# --------------------------------------------------------------------------
def conv_groups(specs) -> list[tuple[int, ...]]:
    """Terms whose synthesis operators are convolutions of the same shapes, stride,
    padding, dilation and groups (two or more per group): one grouped convolution can
    apply them all (``groups`` times their number)."""
    groups: dict = {}
    for i, spec in enumerate(specs):
        op = spec.op
        if ops.edge_kind(op.kind).grouped_conv:
            key = (
                op.in_shape,
                op.out_shape,
                ops.pair(op.stride),
                ops.pair(op.kernel_size),
                ops.pair(op.padding),
                ops.pair(op.dilation),
                op.groups,
            )
            groups.setdefault(key, []).append(i)
    return [tuple(v) for v in groups.values() if len(v) > 1]


def _group_weights(terms, groups) -> list:
    """Per group: term indices, the concatenated weights, the concatenated batch-norm
    column scales (``None`` without batch norm) and the convolution's geometry."""
    out = []
    for indices in groups:
        inner = [
            terms[i].op.inner if isinstance(terms[i].op, ops.Scaled) else terms[i].op
            for i in indices
        ]
        weight = torch.cat([op.weight for op in inner])
        scale = None
        if any(isinstance(terms[i].op, ops.Scaled) for i in indices):
            parts = [
                terms[i].op.scale.reshape(-1)
                if isinstance(terms[i].op, ops.Scaled)
                else torch.ones(op.weight.shape[0], dtype=op.weight.dtype, device=op.weight.device)
                for i, op in zip(indices, inner)
            ]
            scale = torch.cat(parts).reshape(-1, 1, 1)
        first = inner[0]
        geometry = {
            "stride": first.stride,
            "padding": first.padding,
            "dilation": first.dilation,
            "groups": first.groups * len(indices),
        }
        out.append(
            (
                indices,
                weight,
                scale,
                geometry,
                first.output_padding,
                first.in_shape[0],
                first.out_shape[0],
            )
        )
    return out


def _apply_grouped(terms, groups, values, adjoint: bool) -> list:
    """``[A_i v_i]`` (``adjoint=False``) or ``[A_i^T v_i]`` for every term ``i``.

    The terms of a group run as one grouped ``conv2d`` / ``conv_transpose2d``
    (inputs concatenated along channels, weights along output channels, each term's
    own ``groups`` blocks of channels one more block of the whole, with the
    batch-norm column scale ``S A`` applied as :class:`deepframe.ops.Scaled` does); all
    other terms run one by one.
    """
    out = [None] * len(terms)
    for indices, weight, scale, geometry, output_padding, c_in, c_out in groups:
        v = torch.cat([values[i] for i in indices], 1)
        if adjoint:
            if scale is not None:
                v = v * scale
            v = F.conv_transpose2d(v, weight, output_padding=output_padding, **geometry)
            parts = v.split(c_in, 1)
        else:
            v = F.conv2d(v, weight, **geometry)
            if scale is not None:
                v = v * scale
            parts = v.split(c_out, 1)
        for i, part in zip(indices, parts):
            out[i] = part
    for i, term in enumerate(terms):
        if out[i] is None:
            out[i] = term.op.adjoint(values[i]) if adjoint else term.op.forward(values[i])
    return out


# --------------------------------------------------------------------------
# the trace (the seed's Fig. 8)
# --------------------------------------------------------------------------
@dataclass
class Trace:
    """What happened at each iteration of a pursuit (the seed's Fig. 8).

    Index 0 is the feed-forward state (the codes of ``method="feedforward"``)
    for every method, index ``t`` the state after iteration (sweep) ``t``; for
    L-BP, every node's ``t``-th local iterate. The seed paper counts the
    feed-forward pass as its first iteration: its ``T`` is this ``T + 1``.

    Attributes
    ----------
    objective : torch.Tensor
        ``(T + 1, B)``: ``F(w^[t])`` per sample (with the effective, batch-norm
        folded dictionary and lambdas the solver used: in eval mode
        ``net.dictionary().objective(net.normalize(x), codes)``).
    term_errors : dict
        ``{term name: (T + 1, B)}``: ``||r_t||^2 / ||target_t||^2`` where
        ``target_t = sum_k P_tk w_k + P x`` is what the term reconstructs.
    node_errors : dict
        ``{node: (T + 1, B)}``: the same ratio summed over the terms that
        synthesise from the node (its layer's reconstruction error).
    """

    objective: torch.Tensor
    term_errors: dict
    node_errors: dict

    @classmethod
    def from_history(cls, problem: Problem, history: list) -> Trace:
        """The :class:`Trace` of the codes in ``history`` (one ``{node: code}`` per state).

        ``F`` is :func:`deepframe.dictionary.lasso_objective` of the problem's
        residuals and effective lambdas, the formula of
        :meth:`deepframe.GlobalDictionary.objective`.
        """
        objective, term_errors = [], {t.name: [] for t in problem.terms}
        node_num = {j: [] for j in problem.nodes}
        node_den = {j: [] for j in problem.nodes}
        for codes in history:
            residuals = []
            nums = {j: 0.0 for j in problem.nodes}
            dens = {j: 0.0 for j in problem.nodes}
            for i, t in enumerate(problem.terms):
                target = problem.target(i, codes)
                r = target - t.op.adjoint(codes[t.synth])
                residuals.append(r)
                num = r.flatten(1).pow(2).sum(1)
                den = target.flatten(1).pow(2).sum(1)
                term_errors[t.name].append(num / den.clamp_min(1e-30))
                nums[t.synth] = nums[t.synth] + num
                dens[t.synth] = dens[t.synth] + den
            for j in problem.nodes:
                node_num[j].append(nums[j])
                node_den[j].append(dens[j])
            objective.append(lasso_objective(residuals, codes, problem.lambdas, problem.nodes))
        return cls(
            objective=torch.stack(objective).detach(),
            term_errors={k: torch.stack(v).detach() for k, v in term_errors.items()},
            node_errors={
                j: (torch.stack(node_num[j]) / torch.stack(node_den[j]).clamp_min(1e-30)).detach()
                for j in problem.nodes
            },
        )
