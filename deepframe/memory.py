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
``"weights"``, ``"pursuit"``, ``"metrics"``, ``"training"`` and ``"attack"``.
The last two are a compiled solver run with autograd at a batch size (a
training step, an FGSM/PGD gradient): how it runs (method, ``T``, batch,
``checkpoint_sweeps``, ...) is an :class:`Unroll`, and what autograd keeps of
every unrolled iteration for the backward pass is counted from the tensors
the solvers of :mod:`deepframe.solvers` save (docs/performance.md, "Memory").
:func:`check_model_memory` checks a model (what :func:`deepframe.train.train`
and the attacks call before their first step). A new operation whose memory
grows with the architecture adds its sizes to :class:`MemoryEstimate`, its
formula to :meth:`MemoryEstimate.bytes` and its wording to the refusal, here.

Layering: this module needs the terms of a graph (:mod:`deepframe.terms`),
never its weights; :mod:`deepframe.dictionary` and everything above it call it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import networkx as nx
import torch

from . import ops
from ._io import format_bytes, parse_size
from .terms import Structure, structure

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MEMORY_BUDGET_ENV",
    "MemoryBudgetError",
    "MemoryEstimate",
    "Unroll",
    "check_memory",
    "check_model_memory",
    "estimate_memory",
    "resolve_memory_budget",
    "segment_length",
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


def segment_length(iterations: int, checkpoint_sweeps: bool | int) -> int:
    """Iterations per recomputed segment of ``checkpoint_sweeps`` (0: every iteration stored).

    ``True`` picks ``round(sqrt(T / 3))``, at least 1 (the rule of
    :meth:`deepframe.PursuitNet._segment_length`); an int ``k`` is ``k``.
    """
    if checkpoint_sweeps is True:
        return max(1, round(math.sqrt(iterations / 3)))
    return int(checkpoint_sweeps)


@dataclass(frozen=True)
class Unroll:
    """How a compiled solver runs: what sets the memory of its unrolled iterations.

    Attributes
    ----------
    method : {"feedforward", "layered", "deep"}
        The solver (``"feedforward"`` iterates nothing).
    iterations : int
        ``T``.
    batch_size : int
        Images per forward pass (0: the model is built, not run).
    segment : int
        Iterations per recomputed segment (``checkpoint_sweeps``,
        :func:`segment_length`; 0: every iteration stored).
    extrapolated : bool
        ``alpha != 0``: an iteration also keeps the previous codes.
    fista : bool
        ``alpha="fista"``: one Python float per iteration on the host.
    learned_beta : bool
        ``beta="learned"``: the step ``1 / (beta_j L_j)`` carries a gradient, so
        autograd also keeps the gradient it multiplies.
    schedule : {"gauss-seidel", "jacobi"}
        Deep pursuit's block order (a Jacobi sweep keeps its grouped inputs).
    num_classes : int
        Outputs of the classifier head.
    optimizer_states : int
        Tensors the optimizer keeps per weight (training: 2 for Adam, 1 for SGD
        with momentum, else 0).
    """

    method: str = "deep"
    iterations: int = 0
    batch_size: int = 0
    segment: int = 0
    extrapolated: bool = False
    fista: bool = False
    learned_beta: bool = True
    schedule: str = "gauss-seidel"
    num_classes: int = 10
    optimizer_states: int = 0

    @property
    def unrolled(self) -> int:
        """``T`` of the iterations that run (0 for the feed-forward solver)."""
        return 0 if self.method == "feedforward" else self.iterations

    @classmethod
    def from_options(cls, options, batch_size: int = 0, optimizer_states: int = 0) -> Unroll:
        """The unroll of :func:`deepframe.compile`'s options (a
        :class:`~deepframe.pursuit.CompileOptions`, validated)."""
        iterations = 0 if options.method == "feedforward" else int(options.iterations)
        return cls(
            method=options.method,
            iterations=iterations,
            batch_size=batch_size,
            segment=segment_length(iterations, options.checkpoint_sweeps),
            extrapolated=options.alpha == "fista" or options.alpha != 0,
            fista=options.alpha == "fista",
            learned_beta=options.beta == "learned",
            schedule=options.schedule,
            num_classes=10 if options.num_classes is None else int(options.num_classes),
            optimizer_states=optimizer_states,
        )

    @classmethod
    def of(cls, model, batch_size: int = 0, optimizer_states: int = 0) -> Unroll:
        """The unroll of a compiled solver (:class:`deepframe.PursuitNet`) as it is now
        (its ``iterations``, ``alphas``, ``schedule`` and ``checkpoint_sweeps``)."""
        iterations = 0 if model.method == "feedforward" else int(model.iterations)
        head = getattr(model, "head", None)
        return cls(
            method=model.method,
            iterations=iterations,
            batch_size=batch_size,
            segment=segment_length(iterations, model.checkpoint_sweeps),
            extrapolated=any(model.alphas),
            fista=model.options.alpha == "fista",
            learned_beta=model.options.beta == "learned",
            schedule=model.schedule,
            num_classes=int(getattr(head, "out_features", 10)),
            optimizer_states=optimizer_states,
        )


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
        Largest ``k_h k_w`` (taps) of an operator between ``(C, H, W)`` maps.
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
        operator at a time): for a convolution (``C_out x C_in`` kernel per
        group, stride ``s``) on a periodic grid of ``G_h x G_w`` (about the input
        map over ``s``), the complex128 kernel DFT and its Gram over ``G_h x
        (G_w // 2 + 1)`` frequencies, ``C_out C_in s_h s_w + 2 m^2`` entries each
        and group (``m = min(C_out, C_in s_h s_w)``), counted at 40 bytes per entry for the
        16-byte entries and eigvalsh's workspace; for a dense operator, three
        float64 copies of its matrix (the SVD).
    inputs : int
        Entries of one input image.
    learned_rows : int
        Residual entries of the terms whose analysis operator ``A_t`` is learned
        (a convolution or dense map saves the residual it is applied to; an
        identity or a shortcut saves nothing).
    feedback : int
        Residual entries of the (term, target) pairs whose target operator
        ``P_tk`` is learned (a convolution or dense map saves the residual it
        is applied to in the feedback of Eq. 15 / 18; an identity saves nothing).
    scaled : int
        What the scaled operators ``S_j A_t`` of the nodes with batch norm
        save, per term: ``S_j w`` and ``S_j A_t r`` for a learned ``A_t`` (twice
        the node's atoms), ``A_t r`` alone for an identity or a shortcut (once).
    batchnorm : int
        Atoms of the nodes with batch norm (the feed-forward pass saves their
        pre-activation).
    grouped : int
        Atoms of the synthesis nodes of the terms a Jacobi sweep applies as one
        grouped convolution (two or more of the same shapes, stride, padding,
        dilation and groups: :func:`deepframe.solvers.conv_groups`), whose inputs it
        concatenates.
    head_features : int
        Channels or features of the output node (inputs of the head).
    graph_ops : int
        Autograd nodes an iteration records (about 5 per term, 2 per target, 6
        per node): their bookkeeping does not scale with the batch.
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
    inputs: int = 0
    learned_rows: int = 0
    feedback: int = 0
    scaled: int = 0
    batchnorm: int = 0
    grouped: int = 0
    head_features: int = 0
    graph_ops: int = 0

    def bytes(
        self,
        what: str,
        itemsize: int = 8,
        memory_budget: int | None = None,
        unroll: Unroll | None = None,
    ) -> int:
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

        With ``unroll`` (:class:`Unroll`), ``"weights"`` and ``"pursuit"``
        also count the classifier head and the host's per-iteration state (the
        ``T`` extrapolation weights, :meth:`host_bytes`); ``"training"`` (one
        step: the weights, their gradients and ``optimizer_states`` copies,
        then the larger of the Lipschitz bound and the activations,
        :meth:`activation_bytes`) and ``"attack"`` (one FGSM/PGD gradient: the
        weights, then the larger of the bound and the activations plus six
        image-sized tensors per image) need it.
        """
        largest = math.prod(self.largest_weight[1]) if self.largest_weight[0] else 0
        draw = 2 * 8 * largest
        host = 0 if unroll is None else self.host_bytes(unroll)
        weights = self.weights
        if unroll is not None:
            weights += unroll.num_classes * (self.head_features + 1)
        if what == "weights":
            return weights * itemsize + draw + host
        if what == "pursuit":
            return weights * itemsize + draw + self.bound + host
        if what == "metrics":
            rows = 9 * 8 * self.full_block
            if memory_budget is not None:
                rows = min(rows, memory_budget // 4)
            return int(8 * (self.conv_atoms * (6 + self.max_taps / 2) + self.explicit) + rows)
        if what in ("training", "attack"):
            if unroll is None:
                raise ValueError(f"the {what} estimate needs an Unroll (method, T, batch size)")
            params = weights * itemsize
            bound = self.bound if unroll.unrolled else 0
            activations = self.activation_bytes(unroll, itemsize)
            if what == "training":
                return params * (2 + unroll.optimizer_states) + max(bound, activations) + host
            images = _ATTACK_IMAGES * self.inputs * unroll.batch_size * itemsize
            return params + max(bound, activations + images) + host
        raise ValueError(
            f"unknown memory estimate {what!r}; expected weights, pursuit, metrics, training "
            "or attack"
        )

    # -- the unrolled iterations (what autograd keeps of them for the backward pass)

    def iteration_entries(self, unroll: Unroll) -> int:
        """Entries per image that autograd keeps of one unrolled iteration (all nodes).

        From the tensors :mod:`deepframe.solvers` saves for the backward pass:
        the residual ``r_t`` of every term with a learned ``A_t`` (the input
        of ``A_t r_t``, :attr:`learned_rows`), every node's new code (the
        ReLU's output) and, with a learned ``beta``, the gradient plus
        ``lambda_j`` that the step multiplies; DP adds the feedback residuals
        of learned target operators (:attr:`feedback`) and, in a Jacobi
        sweep, the grouped inputs (:attr:`grouped`); batch norm the scaled
        copies of its operators (:attr:`scaled`); extrapolated layered
        pursuit its extrapolated codes (DP extrapolates by scalar weights,
        which autograd does not save). Measured with saved-tensor hooks
        (``analysis/bench_memory_estimate.py``): exact on chains.
        """
        learned = self.learned_rows + self.atoms * (1 + bool(unroll.learned_beta))
        entries = learned + self.scaled
        if unroll.extrapolated and unroll.method == "layered":
            entries += self.atoms
        if unroll.method == "deep":
            entries += self.feedback
            if unroll.schedule == "jacobi":
                entries += self.grouped
        return entries

    def boundary_entries(self, unroll: Unroll) -> int:
        """Entries per image of the state kept at a segment boundary of ``checkpoint_sweeps``:
        the codes and, extrapolated, DP's ``B_t w`` and the previous codes (which, with
        segments of one iteration, are the previous boundary's own)."""
        if not unroll.extrapolated:
            return self.atoms
        previous = self.atoms if unroll.segment > 1 else 0
        return self.atoms + previous + (self.rows if unroll.method == "deep" else 0)

    def kept_entries(self, unroll: Unroll) -> int:
        """Entries per image the ``T`` iterations hold at the peak of the backward pass.

        Stored: ``T s`` (``s`` = :meth:`iteration_entries`). With segments of
        ``k < T`` iterations: ``(ceil(T / k) - 1) b + k s``, one state ``b``
        (:meth:`boundary_entries`) per segment boundary and one segment's
        recomputed activations (layered pursuit keeps every node's last segment
        besides: ``2 k s``).
        """
        t, k = unroll.unrolled, unroll.segment
        if not t:
            return 0
        per_iteration = self.iteration_entries(unroll)
        if not k or k >= t:
            return t * per_iteration
        segments = (1 + (unroll.method == "layered")) * k * per_iteration
        return (math.ceil(t / k) - 1) * self.boundary_entries(unroll) + segments

    def base_entries(self) -> int:
        """Entries per image of the feed-forward pass and of the working set of an iteration
        and its backward (two code and residual sized tensors each, the input, the
        pre-activations of batch norm), whatever ``T``."""
        return 2 * (self.atoms + self.rows) + self.inputs + self.batchnorm

    def activation_bytes(self, unroll: Unroll, itemsize: int) -> int:
        """Bytes of a forward and backward pass at ``unroll.batch_size`` beyond the weights.

        ``itemsize * batch * (base + kept)`` (:meth:`base_entries`,
        :meth:`kept_entries`) plus the autograd bookkeeping of every iteration,
        ``graph_ops`` nodes of about 1 KiB each (kept also with
        ``checkpoint_sweeps``, which drops saved tensors, not nodes), and 1/8
        for the allocator: the measured peaks of a training step or an FGSM
        gradient, from before ``compile`` (CPU, the peak resident set), were
        1.01-1.10 times this sum without it
        (``analysis/bench_memory_estimate.py --section unroll``).
        """
        per_image = self.base_entries() + self.kept_entries(unroll)
        graph = unroll.unrolled * self.graph_ops * _GRAPH_NODE_BYTES
        return _ALLOCATOR_MARGIN * (itemsize * unroll.batch_size * per_image + graph) // 8

    @staticmethod
    def host_bytes(unroll: Unroll) -> int:
        """Host bytes of the per-iteration state: the ``T`` extrapolation weights a solver
        holds (a list) and copies at every forward pass (a tuple), 8 bytes each, plus a
        Python float each for FISTA's."""
        return unroll.unrolled * (16 + 24 * bool(unroll.fista))


#: Bookkeeping bytes of one autograd node with its output tensor's own objects (the
#: node, its saved-variable slots and edges, the tensor and storage structs, the
#: allocator's rounding), kept for every recorded operation until the backward pass:
#: measured 1.0-1.05 KiB per node of ``graph_ops`` at batch 1 (chain and ResNet, CPU).
_GRAPH_NODE_BYTES = 1024
#: Eighths of the tensors' bytes a step's peak takes with the allocator's rounding and
#: the interleaving of freed and kept tensors (measured up to 1.10, see activation_bytes).
_ALLOCATOR_MARGIN = 9
#: Image-sized tensors an attack step holds per image besides the model's
#: (the images, the adversarial ones, their gradient, the eps-ball's bounds, the noise).
_ATTACK_IMAGES = 6


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
                max_taps = max(max_taps, math.prod(ops.pair(op.kernel_size)))
            else:
                small, big = min(n_in, n_out), max(n_in, n_out)
                explicit = max(explicit, small * small + small * big)
            bound = max(bound, (op.bound_bytes(), op.weight_key), key=lambda b: b[0])
        if any(len(op.in_shape) != 3 or len(op.out_shape) != 3 for op in ops_):
            sizes = [node_sizes[spec.synth], *(node_sizes[k] for k, _ in spec.targets)]
            full_block = max(full_block, max(sizes) ** 2)
    batchnorm = {j for j in st.nodes if st.graph.nodes[j].get("batchnorm")}
    rows_of = [math.prod(spec.op.in_shape) for spec in specs]
    groups: dict = {}  # the key of deepframe.solvers.conv_groups (a lower layer cannot import it)
    for spec in specs:
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
            groups.setdefault(key, []).append(node_sizes[spec.synth])
    return MemoryEstimate(
        weights=weights,
        largest_weight=(largest[0], tuple(largest[1][0])),
        atoms=sum(node_sizes.values()),
        rows=sum(rows_of),
        conv_atoms=conv_atoms,
        max_taps=max_taps,
        explicit=explicit,
        full_block=full_block,
        bound=bound[0],
        inputs=math.prod(st.input_shape),
        learned_rows=sum(
            rows for spec, rows in zip(specs, rows_of) if spec.op.weight_key is not None
        ),
        feedback=sum(
            rows
            for spec, rows in zip(specs, rows_of)
            for _, p in spec.targets
            if p.weight_key is not None
        ),
        scaled=sum(
            node_sizes[spec.synth] * (1 + (spec.op.weight_key is not None))
            for spec in specs
            if spec.synth in batchnorm
        ),
        batchnorm=sum(node_sizes[j] for j in batchnorm),
        grouped=sum(sum(sizes) for sizes in groups.values() if len(sizes) > 1),
        head_features=st.node_shapes[st.output][0],
        graph_ops=sum(5 + 2 * len(spec.targets) for spec in specs) + 6 * len(st.nodes),
    )


_WHAT = {
    "weights": "initialising the weights",
    "pursuit": "the pursuit solver (weights and the Lipschitz bounds of a forward pass)",
    "metrics": "the structured geometry",
    "training": "a training step",
    "attack": "an attack (FGSM/PGD backpropagates through the unrolled solver)",
}


def check_memory(
    g: nx.DiGraph | Structure,
    what: str,
    *,
    dtype: torch.dtype = torch.float64,
    memory_budget: int | str | None = None,
    unroll: Unroll | None = None,
) -> int:
    """Refuse an operation whose estimated memory exceeds the budget; return the estimate.

    Parameters
    ----------
    g : networkx.DiGraph or Structure
        Validated architecture (or its :class:`~deepframe.terms.Structure`).
    what : {"weights", "pursuit", "metrics", "training", "attack"}
        The operation (see :meth:`MemoryEstimate.bytes`).
    dtype : torch.dtype
        Of the tensors the operation makes.
    memory_budget : int or str, optional
        Bytes (or ``"16G"``); default ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB.
    unroll : Unroll, optional
        How the solver runs (required for ``"training"`` and ``"attack"``; with
        ``"weights"`` / ``"pursuit"`` it adds the head and the per-iteration
        host state of building the solver).

    Raises
    ------
    MemoryBudgetError
        With the estimate, what dominates it, the budget and what to do.
    """
    budget = resolve_memory_budget(memory_budget)
    estimate = estimate_memory(g)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = estimate.bytes(what, itemsize, budget, unroll)
    if need <= budget:
        return need
    key, shape = estimate.largest_weight
    if what == "metrics":
        detail = f"{estimate.atoms:,} atoms, {estimate.conv_atoms:,} of them in conv maps"
        advice = "use a smaller input shape or narrower layers"
    elif what in ("training", "attack"):
        detail, advice = _unroll_advice(estimate, what, itemsize, budget, unroll)
    elif unroll is not None and estimate.host_bytes(unroll) > budget // 2:
        detail = (
            f"{format_bytes(estimate.host_bytes(unroll))} for the state of "
            f"T={unroll.unrolled:,} iterations"
        )
        advice = "use fewer iterations"
    elif unroll is not None and unroll.num_classes * (estimate.head_features + 1) > budget // 8:
        detail = (
            f"a classifier head of {unroll.num_classes:,} classes x "
            f"{estimate.head_features + 1} weights"
        )
        advice = "use fewer classes"
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


def _unroll_advice(
    estimate: MemoryEstimate, what: str, itemsize: int, budget: int, unroll: Unroll
) -> tuple[str, str]:
    """What a refused training step or attack holds, and the ways out with their figures:
    the largest batch that fits, the most iterations that fit, ``checkpoint_sweeps``."""
    t, batch = unroll.unrolled, unroll.batch_size

    def need(**change) -> int:
        return estimate.bytes(what, itemsize, budget, replace(unroll, **change))

    per_iteration = itemsize * batch * estimate.iteration_entries(unroll)
    per_iteration += estimate.graph_ops * _GRAPH_NODE_BYTES
    solver = "the feed-forward network" if not t else f"{unroll.method} pursuit with T={t:,}"
    detail = f"{solver} at batch {batch:,}"
    if t:
        if unroll.segment and unroll.segment < t:
            detail += (
                f", recomputed in segments of {unroll.segment} (checkpoint_sweeps): "
                f"{format_bytes(per_iteration)} per recomputed iteration"
            )
        else:
            detail += (
                f": autograd keeps {format_bytes(per_iteration)} per iteration for the "
                "backward pass"
            )
    ways = []
    fixed, slope = need(batch_size=0), need(batch_size=1) - need(batch_size=0)
    largest = (budget - fixed) // slope if slope > 0 and budget > fixed else 0
    if 1 <= largest < batch:
        ways.append(f"a smaller batch (at most {largest:,} fit)")
    elif largest < 1:
        ways.append("a smaller batch (even 1 image does not fit)")
    if t:
        fits = _most_iterations(need, t, budget)
        ways.append(
            f"fewer iterations (at most {fits:,} fit at this batch)"
            if fits
            else "fewer iterations (none fit at this batch)"
        )
        if not unroll.segment or unroll.segment >= t:
            with_segments = need(segment=segment_length(t, True))
            ways.append(
                f"checkpoint_sweeps=True (about {format_bytes(with_segments)}; an option "
                "of deepframe.compile, not yet of the command line)"
            )
    return detail, "use " + ", ".join(ways)


def _most_iterations(need, iterations: int, budget: int) -> int:
    """The largest ``T <= iterations`` with ``need(iterations=T) <= budget`` (0: none),
    by bisection (the estimate grows with ``T``)."""
    low, high = 0, iterations
    if need(iterations=0) > budget:
        return 0
    while low < high:
        mid = (low + high + 1) // 2
        if need(iterations=mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def check_model_memory(
    model,
    what: str,
    batch_size: int,
    *,
    optimizer_states: int = 0,
    memory_budget: int | str | None = None,
) -> int | None:
    """:func:`check_memory` of a compiled solver run at ``batch_size``; None for other models.

    The check :func:`deepframe.train.train` (``what="training"``) and the
    attacks of :mod:`deepframe.attacks` (``"attack"``) make before their
    first step. A model is estimated when it is a
    :class:`deepframe.PursuitNet` (it has the ``structure`` of its graph);
    any other module passes unchecked.

    Raises
    ------
    MemoryBudgetError
        The step's estimate exceeds the budget (the message gives the ways out).
    """
    st = getattr(model, "structure", None)
    if not isinstance(st, Structure) or not hasattr(model, "options"):
        return None
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    unroll = Unroll.of(model, batch_size, optimizer_states)
    return check_memory(st, what, dtype=dtype, memory_budget=memory_budget, unroll=unroll)
