"""Compilation of an architecture graph into its global dictionary (docs/concepts.md).

The global non-negative LASSO of a network is

    minimise_{w >= 0}  F(w) = 1/2 sum_t ||r_t(w)||^2 + sum_j <lambda_j, w_j>

with one residual *term* ``r_t`` per edge (edge-centric nodes) or per node
(node-centric nodes, ``merge="input"``). Every term has one synthesis block
(node ``j``, operator ``B_t = A_t^T`` with ``A_t`` the analysis operator) and
target blocks (nodes ``k``, operators ``P_tk``):

    r_t = sum_k P_tk w_k + sum_inputs P_t,x x - B_t w_j

Edge ``k -> j`` (edge-centric): ``A_t`` is the edge operator, ``P_tk = I``
(Eq. 12 for a chain). Node-centric node ``j``: ``A_t`` is the node's own
operator and ``P_tk = E_jk`` the edge operators (Eq. 16-18).

Stacking all terms gives ``r = y - D w``: row block ``t`` of ``D`` holds
``B_t`` at column block ``j`` and ``-P_tk`` at column blocks ``k``; the target
``y`` holds the input's contributions. Column blocks follow
:func:`deepframe.graph.activation_nodes`; row blocks follow the terms in the
order of their synthesis node, then their target's name.

Memory. Everything that allocates by the size of an architecture (weight
initialisation, :func:`deepframe.compile`, the geometry) first estimates the
bytes it needs (:func:`estimate_memory`) and refuses with
:class:`MemoryBudgetError`, stating the estimate, when that exceeds the
memory budget: the ``memory_budget`` argument, else the environment variable
``DEEPFRAME_MEMORY_BUDGET`` (``"16G"``, ``"512M"``, bytes), else
:data:`DEFAULT_MEMORY_BUDGET` (2 GiB).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx
import torch

from . import ops
from ._io import format_bytes, parse_size
from .graph import activation_nodes, input_node, output_node, validate
from .ops import OpSpec

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MEMORY_BUDGET_ENV",
    "MemoryBudgetError",
    "MemoryEstimate",
    "check_memory",
    "estimate_memory",
    "format_bytes",
    "parse_size",
    "resolve_memory_budget",
    "Term",
    "Structure",
    "structure",
    "GlobalDictionary",
    "dictionary",
    "parameter_shapes",
    "build_terms",
    "term_specs",
    "TermSpec",
    "OpSpec",
    "edge_key",
    "random_weights",
    "node_lambdas",
    "node_key",
    "split_weights",
    "lasso_objective",
    "NODE_TENSORS",
    "HEAD_KEYS",
]

#: Per-node tensors a weights mapping may hold besides the edge weights, under
#: :func:`node_key`: the sparsity weight ``lambda_j`` (minus the bias of the
#: network the weights come from; any sign) and, for nodes with
#: ``batchnorm=True``, the batch norm's scale ``gamma``, running mean, running
#: variance and ``eps``.
NODE_TENSORS = ("lambda", "bn_scale", "bn_mean", "bn_var", "bn_eps")
_BN_EPS = 1e-5  # a weights mapping's batch norm without "bn_eps:j": the solvers' eps
#: Keys of the classifier head (global average pooling + linear) in a weights mapping.
HEAD_KEYS = ("head.weight", "head.bias")


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


def edge_key(k, j) -> str:
    """Name of the weight of edge ``k -> j``: ``"k->j"``."""
    return f"{k}->{j}"


def node_key(j, what: str) -> str:
    """Name of a per-node tensor (one of :data:`NODE_TENSORS`) in a weights mapping:
    ``"what:j"``, e.g. ``"lambda:relu_1"``."""
    if what not in NODE_TENSORS:
        raise ValueError(f"node_key: unknown per-node tensor {what!r}; expected {NODE_TENSORS}")
    return f"{what}:{j}"


@dataclass
class Term:
    """One residual term ``r_t = sum_k P_tk w_k + sum P x - A_t^T w_synth``.

    Attributes
    ----------
    name : str
        ``"k->j"`` for an edge term, ``"j"`` for a node-centric term.
    synth : node
        The node whose code is synthesised (column block of ``B_t``).
    op : deepframe.ops.Operator
        The analysis operator ``A_t`` (``B_t = A_t^T``); ``op.in_shape`` is the
        residual's shape, ``op.out_shape`` the synthesis node's shape.
    targets : list of (node, Operator)
        Activation nodes ``k`` and operators ``P_tk`` (``forward`` applies ``P``).
    inputs : list of Operator
        Operators applied to the network input ``x``.
    """

    name: str
    synth: object
    op: ops.Operator
    targets: list = field(default_factory=list)
    inputs: list = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.op.in_shape

    @property
    def size(self) -> int:
        return self.op.in_size

    def residual(self, codes: Mapping, x: torch.Tensor | None) -> torch.Tensor:
        """``r_t`` for a batch of codes ``{node: (B, *shape)}`` and input ``x``."""
        r = -self.op.adjoint(codes[self.synth])
        for k, p in self.targets:
            r = r + p.forward(codes[k])
        if x is not None:
            for p in self.inputs:
                r = r + p.forward(x)
        return r


def lasso_objective(residuals, codes: Mapping, lambdas: Mapping, nodes=None) -> torch.Tensor:
    """``F(w) = 1/2 sum_t ||r_t||^2 + sum_j <lambda_j, w_j>`` per sample: ``(B,)``.

    The global non-negative LASSO objective (Eq. 11; Eq. 12 / 16 as one
    matrix) from its residuals: :meth:`GlobalDictionary.objective` and the
    pursuit's :class:`deepframe.Trace` both evaluate ``F`` here.

    Parameters
    ----------
    residuals : iterable of torch.Tensor
        ``r_t`` per term, each ``(B, *term shape)``.
    codes : mapping
        ``{node: (B, *shape)}``.
    lambdas : mapping
        ``{node: (C,) or (features,)}``, broadcast over a node's positions.
    nodes : sequence, optional
        The nodes of the penalty, in order (default: the keys of ``lambdas``).
    """
    smooth = sum(0.5 * r.flatten(1).pow(2).sum(1) for r in residuals)
    return smooth + _penalty(codes, lambdas, lambdas if nodes is None else nodes)


def _penalty(codes: Mapping, lambdas: Mapping, nodes) -> torch.Tensor:
    """``sum_j <lambda_j, w_j>`` per sample, lambda broadcast over positions."""
    total = 0.0
    for j in nodes:
        w = codes[j]
        lam = lambdas[j].to(w.dtype).reshape(-1, *([1] * (w.dim() - 2)))
        total = total + (w * lam).flatten(1).sum(1)
    return total


# --------------------------------------------------------------------------
# parameters of a graph
# --------------------------------------------------------------------------
def _weight_shape(op: str, attrs: Mapping, in_shape, out_shape):
    """``(shape, fan_in)`` of an operator's learned weight (the edge kind's
    :meth:`deepframe.ops.Operator.weight_shape`), ``None`` if parameter-free."""
    return ops.edge_kind(op).weight_shape(attrs, tuple(in_shape), tuple(out_shape))


def parameter_shapes(g: nx.DiGraph | Structure) -> dict[str, tuple[tuple[int, ...], int]]:
    """Learned weights of a validated graph: ``{key: (shape, fan_in)}`` in a fixed order.

    Keys are ``"k->j"`` for parametrised edges and ``"j"`` for the operators of
    node-centric nodes. Order: by activation node, edges before the node's own
    operator, edges sorted by source name. ``g`` may be the graph's
    :class:`Structure`.
    """
    return dict(structure(g).parameters)


def _parameter_shapes(g: nx.DiGraph, nodes) -> dict[str, tuple[tuple[int, ...], int]]:
    shapes = {}
    for j in nodes:
        for k in sorted(g.predecessors(j), key=str):
            a = g.edges[k, j]
            spec = _weight_shape(a.get("op", "identity"), a, a["in_shape"], a["out_shape"])
            if spec is not None:
                shapes[edge_key(k, j)] = spec
        na = g.nodes[j]
        if na.get("merge", "edge") == "input":
            spec = _weight_shape(na["op"], na, na["input_shape"], na["shape"])
            if spec is not None:
                shapes[str(j)] = spec
    return shapes


def random_weights(
    g: nx.DiGraph | Structure,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    memory_budget: int | str | None = None,
) -> dict[str, torch.Tensor]:
    """He-style random weights, ``N(0, 2 / fan_in)``, from a private seeded generator.

    Raises
    ------
    MemoryBudgetError
        The weights would need more than the memory budget (see
        :func:`check_memory`); nothing is allocated.
    """
    s = structure(g)
    check_memory(s, "weights", dtype=dtype, memory_budget=memory_budget)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights = {}
    for key, (shape, fan_in) in s.parameters.items():
        w = torch.randn(shape, generator=generator, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
        weights[key] = w.to(dtype=dtype, device=device)
    return weights


def node_lambdas(g: nx.DiGraph | Structure, *, dtype=torch.float64, device="cpu") -> dict:
    """``lambda_j`` per node from the ``bias`` attribute: a tensor of shape ``(C,)`` / ``(d,)``."""
    s = structure(g)
    out = {}
    for j in s.nodes:
        a = s.graph.nodes[j]
        bias = a.get("bias", 0.0)
        n = a["shape"][0]
        value = torch.as_tensor(bias, dtype=dtype, device=device)
        out[j] = value.expand(n).clone() if value.dim() == 0 else value.clone()
    return out


def split_weights(
    g: nx.DiGraph | Structure, weights: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict[str, torch.Tensor]]:
    """Split a weights mapping into edge weights, per-node tensors and the head.

    A weights mapping (what :func:`deepframe.from_torch` returns, what
    :func:`dictionary` and :func:`deepframe.compile` accept) holds

    * every key of :func:`parameter_shapes` (``"k->j"``, and ``"j"`` for
      node-centric operators) with a tensor of that shape;
    * optionally, per node ``j``, ``"lambda:j"`` (shape ``(C,)``/``(d,)``) and,
      for ``batchnorm=True`` nodes, ``"bn_scale:j"``, ``"bn_mean:j"``,
      ``"bn_var:j"`` (each ``(C,)``) and ``"bn_eps:j"`` (a scalar);
    * optionally the head, ``"head.weight"`` (``(classes, C_out)``) and
      ``"head.bias"`` (``(classes,)``).

    Parameters
    ----------
    g : networkx.DiGraph or Structure
        A validated graph (or its :class:`Structure`).
    weights : mapping of str to torch.Tensor

    Returns
    -------
    edges : dict
        ``{key: tensor}`` for the keys of :func:`parameter_shapes`.
    nodes : dict
        ``{what: {node: tensor}}`` for ``what`` in :data:`NODE_TENSORS`.
    head : dict
        ``{"weight": ..., "bias": ...}`` (empty when the mapping has no head).

    Raises
    ------
    ValueError
        A missing edge weight, a tensor of the wrong shape, an unknown key, a
        batch-norm tensor for a node without ``batchnorm=True``, an incomplete
        set of batch-norm tensors or an incomplete head; the message names the key.
    """
    st = structure(g)
    g = st.graph
    expected = st.parameters
    nodes_by_name = {str(j): j for j in st.nodes}
    edges: dict[str, torch.Tensor] = {}
    nodes: dict[str, dict] = {what: {} for what in NODE_TENSORS}
    head: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"weights[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if key in expected:
            shape = tuple(expected[key][0])
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"weights[{key!r}] has shape {tuple(value.shape)}, the graph needs {shape}"
                )
            edges[key] = value
            continue
        if key in HEAD_KEYS:
            head[key.removeprefix("head.")] = value
            continue
        what, sep, name = key.partition(":")
        if not sep or what not in NODE_TENSORS or name not in nodes_by_name:
            raise ValueError(
                f"weights: unknown key {key!r}; expected the edge weights "
                f"{sorted(expected)[:4]}{'...' if len(expected) > 4 else ''}, "
                f"'lambda:<node>', 'bn_scale|bn_mean|bn_var|bn_eps:<node>' or {HEAD_KEYS}"
            )
        j = nodes_by_name[name]
        size = g.nodes[j]["shape"][0]
        shape = () if what == "bn_eps" else (size,)
        if tuple(value.shape) != shape:
            raise ValueError(f"weights[{key!r}] has shape {tuple(value.shape)}, expected {shape}")
        if what.startswith("bn_") and not g.nodes[j].get("batchnorm", False):
            raise ValueError(f"weights[{key!r}]: node {j!r} has no batchnorm=True")
        nodes[what][j] = value
    missing = sorted(set(expected) - set(edges))
    if missing:
        raise ValueError(f"weights: missing edge weights {missing}")
    for j in set().union(*(nodes[w] for w in ("bn_scale", "bn_mean", "bn_var"))):
        absent = [w for w in ("bn_scale", "bn_mean", "bn_var") if j not in nodes[w]]
        if absent:
            raise ValueError(
                f"weights: node {j!r} has batch-norm tensors but lacks "
                f"{[node_key(j, w) for w in absent]}"
            )
    if head:
        if set(head) != {"weight", "bias"}:
            raise ValueError(f"weights: the head needs both {HEAD_KEYS}, got {sorted(head)}")
        c_out = st.node_shapes[st.output][0]
        w, b = head["weight"], head["bias"]
        if w.dim() != 2 or w.shape[1] != c_out or tuple(b.shape) != (w.shape[0],):
            raise ValueError(
                f"weights: head.weight {tuple(w.shape)} and head.bias {tuple(b.shape)} do not "
                f"make a linear head of the output node's {c_out} channels/features"
            )
    return edges, nodes, head


@dataclass(frozen=True)
class TermSpec:
    """A weight-independent description of one term (see :class:`Term`)."""

    name: str
    synth: object
    op: OpSpec
    targets: tuple = ()
    inputs: tuple = ()

    def build(self, weights: Mapping[str, torch.Tensor]) -> Term:
        return Term(
            self.name,
            self.synth,
            self.op.build(weights),
            [(k, p.build(weights)) for k, p in self.targets],
            [p.build(weights) for p in self.inputs],
        )


def _op_spec(op: str, attrs: Mapping, in_shape, out_shape, key: str) -> OpSpec:
    """The :class:`deepframe.ops.OpSpec` the edge kind ``op`` makes of ``attrs``."""
    return ops.edge_kind(op).spec(attrs, tuple(in_shape), tuple(out_shape), key)


def term_specs(g: nx.DiGraph | Structure) -> list[TermSpec]:
    """The residual terms of a validated graph, without weights (docs/concepts.md).

    Edge-centric node ``j``: one term per incoming edge ``k -> j`` (synthesis by the
    edge operator, target ``w_k`` or ``x`` through the identity). Node-centric node
    ``j``: one term (synthesis by the node's operator, targets through the edges).
    ``g`` may be the graph's :class:`Structure` (which holds them).
    """
    return list(structure(g).terms)


def _term_specs(g: nx.DiGraph, src, nodes) -> list[TermSpec]:
    specs = []
    for j in nodes:
        na = g.nodes[j]
        preds = sorted(g.predecessors(j), key=str)
        if na.get("merge", "edge") == "edge":
            for k in preds:
                a = g.edges[k, j]
                op = _op_spec(a["op"], a, a["in_shape"], a["out_shape"], edge_key(k, j))
                ident = _op_spec("identity", {}, a["in_shape"], a["in_shape"], edge_key(k, j))
                if k == src:
                    specs.append(TermSpec(edge_key(k, j), j, op, inputs=(ident,)))
                else:
                    specs.append(TermSpec(edge_key(k, j), j, op, targets=((k, ident),)))
        else:
            op = _op_spec(na["op"], na, na["input_shape"], na["shape"], str(j))
            targets, inputs = [], []
            for k in preds:
                a = g.edges[k, j]
                e = _op_spec(
                    a.get("op", "identity"), a, a["in_shape"], a["out_shape"], edge_key(k, j)
                )
                (inputs.append(e) if k == src else targets.append((k, e)))
            specs.append(TermSpec(str(j), j, op, tuple(targets), tuple(inputs)))
    return specs


def build_terms(g: nx.DiGraph | Structure, weights: Mapping[str, torch.Tensor]) -> list[Term]:
    """The residual terms of a validated graph with the given weights (docs/concepts.md)."""
    return [spec.build(weights) for spec in structure(g).terms]


# --------------------------------------------------------------------------
# the compiled structure
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Structure:
    """Everything about a validated graph that does not depend on its weights, built
    once by :func:`structure` and handed down (graph -> dictionary -> pursuit).

    Attributes
    ----------
    graph : networkx.DiGraph
        The validated graph (shapes annotated). Not copied: do not modify it.
    input, output : node
        The input node and the node feeding the classifier head
        (:func:`deepframe.graph.input_node`, :func:`deepframe.graph.output_node`).
    input_shape : tuple of int
    nodes : tuple
        Activation nodes in column order (:func:`deepframe.graph.activation_nodes`).
    node_shapes : dict
        ``{node: shape}`` of every activation node (shared: do not modify).
    terms : tuple of TermSpec
        The residual terms, without weights (row order of ``D``).
    parameters : dict
        ``{key: (shape, fan_in)}`` of the learned weights (shared: do not
        modify; :func:`parameter_shapes` returns a copy).
    """

    graph: nx.DiGraph
    input: object
    output: object
    input_shape: tuple
    nodes: tuple
    node_shapes: Mapping
    terms: tuple
    parameters: Mapping


def structure(g: nx.DiGraph | Structure) -> Structure:
    """The :class:`Structure` of a validated graph (a structure is returned as is).

    Computes the topological order, the roles (input, output), the shapes, the
    term specifications and the weight shapes once; every function of this
    module that takes a graph accepts the structure instead and reuses it.
    """
    if isinstance(g, Structure):
        return g
    src = input_node(g)
    nodes = tuple(activation_nodes(g))
    return Structure(
        graph=g,
        input=src,
        output=output_node(g),
        input_shape=tuple(g.nodes[src]["shape"]),
        nodes=nodes,
        node_shapes={j: tuple(g.nodes[j]["shape"]) for j in nodes},
        terms=tuple(_term_specs(g, src, nodes)),
        parameters=_parameter_shapes(g, nodes),
    )


# --------------------------------------------------------------------------
# memory estimates
# --------------------------------------------------------------------------
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
        Largest ``kernel_size ** 2`` of an operator between ``(C, H, W)`` maps.
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
        operator at a time): for a convolution (``C_out x C_in`` kernel,
        stride ``s``) on a periodic grid of ``G_h x G_w`` (about the input
        map over ``s``), the complex128 kernel DFT and its Gram over ``G_h x
        (G_w // 2 + 1)`` frequencies, ``C_out C_in s^2 + 2 m^2`` entries each
        (``m = min(C_out, C_in s^2)``), counted at 40 bytes per entry for the
        16-byte entries and eigvalsh's workspace; for a dense operator, three
        float64 copies of its matrix (the SVD).
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

    def bytes(self, what: str, itemsize: int = 8, memory_budget: int | None = None) -> int:
        """Estimated peak bytes of an operation, ``itemsize`` bytes per entry.

        ``"weights"`` (:func:`random_weights`: every weight at ``itemsize``
        plus two float64 temporaries of the largest; also
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
        """
        largest = math.prod(self.largest_weight[1]) if self.largest_weight[0] else 0
        draw = 2 * 8 * largest
        if what == "weights":
            return self.weights * itemsize + draw
        if what == "pursuit":
            return self.weights * itemsize + draw + self.bound
        if what == "metrics":
            rows = 9 * 8 * self.full_block
            if memory_budget is not None:
                rows = min(rows, memory_budget // 4)
            return int(8 * (self.conv_atoms * (6 + self.max_taps / 2) + self.explicit) + rows)
        raise ValueError(f"unknown memory estimate {what!r}; expected weights, pursuit or metrics")


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
                max_taps = max(max_taps, op.kernel_size**2)
            else:
                small, big = min(n_in, n_out), max(n_in, n_out)
                explicit = max(explicit, small * small + small * big)
            bound = max(bound, (op.bound_bytes(), op.weight_key), key=lambda b: b[0])
        if any(len(op.in_shape) != 3 or len(op.out_shape) != 3 for op in ops_):
            sizes = [node_sizes[spec.synth], *(node_sizes[k] for k, _ in spec.targets)]
            full_block = max(full_block, max(sizes) ** 2)
    return MemoryEstimate(
        weights=weights,
        largest_weight=(largest[0], tuple(largest[1][0])),
        atoms=sum(node_sizes.values()),
        rows=sum(math.prod(spec.op.in_shape) for spec in specs),
        conv_atoms=conv_atoms,
        max_taps=max_taps,
        explicit=explicit,
        full_block=full_block,
        bound=bound[0],
    )


_WHAT = {
    "weights": "initialising the weights",
    "pursuit": "the pursuit solver (weights and the Lipschitz bounds of a forward pass)",
    "metrics": "the structured geometry",
}


def check_memory(
    g: nx.DiGraph | Structure,
    what: str,
    *,
    dtype: torch.dtype = torch.float64,
    memory_budget: int | str | None = None,
) -> int:
    """Refuse an operation whose estimated memory exceeds the budget; return the estimate.

    Parameters
    ----------
    g : networkx.DiGraph or Structure
        Validated architecture (or its :class:`Structure`).
    what : {"weights", "pursuit", "metrics"}
        The operation (see :meth:`MemoryEstimate.bytes`).
    dtype : torch.dtype
        Of the tensors the operation makes.
    memory_budget : int or str, optional
        Bytes (or ``"16G"``); default ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB.

    Raises
    ------
    MemoryBudgetError
        With the estimate, what dominates it, the budget and what to do.
    """
    budget = resolve_memory_budget(memory_budget)
    estimate = estimate_memory(g)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = estimate.bytes(what, itemsize, budget)
    if need <= budget:
        return need
    key, shape = estimate.largest_weight
    if what == "metrics":
        detail = f"{estimate.atoms:,} atoms, {estimate.conv_atoms:,} of them in conv maps"
        advice = "use a smaller input shape or narrower layers"
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


# --------------------------------------------------------------------------
# the global dictionary
# --------------------------------------------------------------------------
class GlobalDictionary:
    """The structured global dictionary ``D`` of an architecture (docs/concepts.md, Eq. 12/16).

    A real linear operator from codes ``w`` (``N`` entries, column blocks =
    activation nodes) to residual space (``n`` entries, row blocks = terms),
    with ``r = y - D w``. Vectors are torch tensors of shape ``(N,)`` or
    ``(B, N)`` (``D @ w``) and ``(n,)`` or ``(B, n)`` (``D.T @ r``).

    Parameters
    ----------
    graph : networkx.DiGraph or Structure
        Validated architecture, or its :class:`Structure` (then nothing about
        the graph is recomputed); :attr:`graph` is the graph, :attr:`structure`
        the structure.
    weights : mapping
        ``{key: tensor}`` as :func:`parameter_shapes` lists.
    lambdas : mapping, optional
        ``{node: (C,) tensor}`` sparsity weights; default from node ``bias``.
    column_scales : mapping, optional
        ``{node: (C,) tensor}``: scale node j's atoms channel by channel in its
        *synthesis* blocks, ``B_t -> B_t S_j`` with ``S_j = diag(s_j)`` (operator
        ``A_t -> S_j A_t``, :class:`deepframe.ops.Scaled`); the target blocks
        ``-P_tj`` at column block j stay unscaled. This is batch norm folded
        into the problem (docs/solvers.md, "Batch norm"): :meth:`deepframe.PursuitNet.dictionary`
        passes ``s_j = gamma_j / sqrt(running_var_j + eps)``. Since only some
        blocks of a column scale, normalised columns change direction: the
        geometry of the folded dictionary differs from the unscaled one.
    dtype, device : optional
        Of the vectors the operator makes (``todense``, ``dottest``); default
        those of the weights (float64 on the CPU for a parameter-free graph).
    """

    def __init__(
        self,
        graph: nx.DiGraph | Structure,
        weights: Mapping[str, torch.Tensor],
        lambdas: Mapping | None = None,
        *,
        column_scales: Mapping | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        self.structure = st = structure(graph)
        self.graph = st.graph
        self.weights = dict(weights)
        expected = st.parameters
        missing = set(expected) - set(self.weights)
        if missing:
            raise ValueError(f"GlobalDictionary: missing weights {sorted(missing)}")
        for key, (shape, _) in expected.items():
            got = tuple(self.weights[key].shape)
            if got != tuple(shape):
                raise ValueError(
                    f"GlobalDictionary: weight {key!r} has shape {got}, the graph "
                    f"needs {tuple(shape)}"
                )
        sample = next(iter(self.weights.values()), None)
        if dtype is None:
            dtype = sample.dtype if sample is not None else torch.float64
        if device is None:
            device = sample.device if sample is not None else "cpu"
        self.dtype, self.device = dtype, torch.device(device)
        self.lambdas = (
            dict(lambdas)
            if lambdas is not None
            else node_lambdas(st, dtype=self.dtype, device=self.device)
        )
        self.input = st.input
        self.input_shape = st.input_shape
        self.nodes = list(st.nodes)
        self.node_shapes = dict(st.node_shapes)
        self.column_scales = _check_scales(column_scales, self.nodes, self.node_shapes)
        self.terms = build_terms(st, self.weights)
        for t in self.terms:
            if t.synth in self.column_scales:
                t.op = ops.Scaled(t.op, self.column_scales[t.synth])
        self.col_sizes = [math.prod(self.node_shapes[j]) for j in self.nodes]
        self.row_sizes = [t.size for t in self.terms]
        self.col_offsets = _offsets(self.col_sizes)
        self.row_offsets = _offsets(self.row_sizes)

    def to(self, dtype: torch.dtype | None = None, device=None) -> GlobalDictionary:
        """A copy with weights and lambdas converted (e.g. to float64 for exact metrics)."""
        return GlobalDictionary(
            self.structure,
            {k: w.to(dtype=dtype, device=device) for k, w in self.weights.items()},
            {j: lam.to(dtype=dtype, device=device) for j, lam in self.lambdas.items()},
            column_scales={
                j: s.to(dtype=dtype, device=device) for j, s in self.column_scales.items()
            },
            dtype=dtype if dtype is not None else self.dtype,
            device=device if device is not None else self.device,
        )

    # -- structure ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(n, N)``: rows (residual entries) by atoms."""
        return (sum(self.row_sizes), sum(self.col_sizes))

    @property
    def col_blocks(self) -> list[tuple[object, int]]:
        """Column blocks ``(node, size)`` in order."""
        return list(zip(self.nodes, self.col_sizes))

    @property
    def row_blocks(self) -> list[tuple[str, int]]:
        """Row blocks ``(term name, size)`` in order."""
        return [(t.name, t.size) for t in self.terms]

    @property
    def blocks(self) -> dict[tuple[str, object], str]:
        """Structurally nonzero blocks ``{(term name, node): label}``.

        Labels: ``"B"`` (synthesis block), ``"-I"`` (identity target),
        ``"-E"`` (other target operator).
        """
        out = {}
        for t in self.terms:
            out[(t.name, t.synth)] = "B"
            for k, p in t.targets:
                out[(t.name, k)] = "-I" if isinstance(p, ops.Identity) else "-E"
        return out

    def block_map(self) -> str:
        """A printable map of the blocks: ``B``, ``-I``, ``-E`` or ``0``."""
        blocks = self.blocks
        names = [str(j) for j in self.nodes]
        row_w = max(len(t.name) for t in self.terms)
        col_w = max(max(len(n) for n in names), 2)
        lines = [" " * row_w + " | " + " ".join(n.rjust(col_w) for n in names)]
        lines.append("-" * len(lines[0]))
        for t in self.terms:
            cells = [blocks.get((t.name, j), "0").rjust(col_w) for j in self.nodes]
            lines.append(t.name.rjust(row_w) + " | " + " ".join(cells))
        return "\n".join(lines)

    # -- conversions between flat vectors and codes -------------------------
    def codes(self, w: torch.Tensor) -> dict:
        """Split ``(B, N)`` (or ``(N,)``) into ``{node: (B, *shape)}``."""
        w2 = w.unsqueeze(0) if w.dim() == 1 else w
        if w2.dim() != 2 or w2.shape[1] != self.shape[1]:
            raise ValueError(
                f"expected codes of shape (N,) or (B, N) with N={self.shape[1]}, "
                f"got {tuple(w.shape)}"
            )
        return {
            j: w2[:, o : o + s].reshape(-1, *self.node_shapes[j])
            for j, o, s in zip(self.nodes, self.col_offsets, self.col_sizes)
        }

    def flat(self, codes: Mapping) -> torch.Tensor:
        """Concatenate ``{node: (B, *shape)}`` into ``(B, N)`` in column order."""
        return torch.cat([codes[j].flatten(1) for j in self.nodes], dim=1)

    def _rows(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.flatten(1) for p in parts], dim=1)

    def _split_rows(self, r: torch.Tensor) -> list[torch.Tensor]:
        r2 = r.unsqueeze(0) if r.dim() == 1 else r
        if r2.dim() != 2 or r2.shape[1] != self.shape[0]:
            raise ValueError(
                f"expected residuals of shape (n,) or (B, n) with "
                f"n={self.shape[0]}, got {tuple(r.shape)}"
            )
        return [
            r2[:, o : o + s].reshape(-1, *t.shape)
            for t, o, s in zip(self.terms, self.row_offsets, self.row_sizes)
        ]

    # -- the operator ---------------------------------------------------------
    def matvec(self, w: torch.Tensor) -> torch.Tensor:
        """``D w``: row block ``t`` is ``B_t w_j - sum_k P_tk w_k``."""
        codes = self.codes(w)
        out = self._rows([-t.residual(codes, None) for t in self.terms])
        return out.squeeze(0) if w.dim() == 1 else out

    def rmatvec(self, r: torch.Tensor) -> torch.Tensor:
        """``D^T r``: column block ``j`` is ``sum_t A_t r_t - sum_t P_tj^T r_t``."""
        parts = self._split_rows(r)
        batch = parts[0].shape[0]
        cols = {j: parts[0].new_zeros((batch, *self.node_shapes[j])) for j in self.nodes}
        for t, rt in zip(self.terms, parts):
            cols[t.synth] = cols[t.synth] + t.op.forward(rt)
            for k, p in t.targets:
                cols[k] = cols[k] - p.adjoint(rt)
        out = self.flat(cols)
        return out.squeeze(0) if r.dim() == 1 else out

    def __matmul__(self, w: torch.Tensor) -> torch.Tensor:
        return self.matvec(w)

    @property
    def T(self) -> _Transposed:
        """The adjoint: ``D.T @ r`` is :meth:`rmatvec`."""
        return _Transposed(self)

    # -- the problem ----------------------------------------------------------
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """``y`` for a batch of inputs ``x`` of shape ``(B, *input_shape)``: ``(B, n)``.

        ``x`` as the dictionary sees it (for a compiled model: ``net.normalize(x)``).
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected inputs of shape (B, {self.input_shape}), got {tuple(x.shape)}"
            )
        parts = []
        for t in self.terms:
            y = x.new_zeros((x.shape[0], *t.shape))
            for p in t.inputs:
                y = y + p.forward(x)
            parts.append(y)
        return self._rows(parts)

    def residuals(self, x: torch.Tensor, codes: Mapping) -> list[torch.Tensor]:
        """``[r_t]`` per term, each ``(B, *term.shape)``."""
        return [t.residual(codes, x) for t in self.terms]

    def penalty(self, codes: Mapping) -> torch.Tensor:
        """``sum_j <lambda_j, w_j>`` per sample, lambda broadcast over positions."""
        return _penalty(codes, self.lambdas, self.nodes)

    def objective(self, x: torch.Tensor, w) -> torch.Tensor:
        """``F(w) = 1/2 ||y - D w||^2 + sum_j <lambda_j, w_j>`` per sample: ``(B,)``.

        ``w`` is ``(B, N)`` or a codes mapping ``{node: (B, *shape)}``. ``x`` is
        the signal the dictionary reconstructs, ``y = target(x)``, exactly as
        given: no normalisation happens here. For a compiled model with input
        normalisation (``compile(..., mean=, std=)``), whose pursuit runs on
        ``(x - mean) / std``, pass ``net.normalize(x)``:
        ``net.dictionary().objective(net.normalize(x), codes)`` is the
        objective the solver decreases (its trace's ``objective``).
        """
        codes = w if isinstance(w, Mapping) else self.codes(w)
        return lasso_objective(self.residuals(x, codes), codes, self.lambdas, self.nodes)

    def lipschitz(self, *, exact: bool = False, estimate: bool = False, seed: int = 0) -> dict:
        """``L_j = sum_{t: synth j} ||B_t S_j||^2 + sum_{t: j target} ||P_tj||^2`` per node.

        By the triangle inequality ``L_j >= ||D_j||_2^2 = lambda_max(D_j^T D_j)``,
        the Lipschitz constant of the block gradient, whenever every
        ``||.||^2`` is at least the operator's squared norm. How each is taken:

        * default: :meth:`deepframe.ops.Operator.sqnorm_bound`, a provable upper
          bound (exact for dense, identity and shortcut blocks, the periodic
          extension for convolutions): what the pursuit solvers use;
        * ``exact=True``: the spectral norm of each block's dense matrix (small
          dictionaries);
        * ``estimate=True``: power iteration (seeded by ``seed``), which
          approaches each norm *from below*: an estimate, not a bound.

        Returns ``{node: float}``.
        """
        if exact and estimate:
            raise ValueError("lipschitz: choose exact=True or estimate=True, not both")

        def sq(op) -> float:
            if exact or estimate:
                return op.sqnorm(exact=exact, seed=seed)
            return float(op.sqnorm_bound())

        out = {j: 0.0 for j in self.nodes}
        for t in self.terms:
            out[t.synth] += sq(t.op)
            for k, p in t.targets:
                out[k] += sq(p)
        return out

    # -- exports --------------------------------------------------------------
    def todense(self, chunk: int = 1024) -> torch.Tensor:
        """``D`` as a dense ``(n, N)`` tensor, by applying :meth:`matvec` to unit vectors."""
        n, big_n = self.shape
        out = torch.empty((n, big_n), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for start in range(0, big_n, chunk):
                stop = min(start + chunk, big_n)
                eye = torch.zeros((stop - start, big_n), dtype=self.dtype, device=self.device)
                eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
                out[:, start:stop] = self.matvec(eye).T
        return out

    def tosparse(self):
        """``D`` as a ``scipy.sparse.csr_array``, assembled block by block with ``bmat``."""
        import scipy.sparse as sp

        col = {j: i for i, j in enumerate(self.nodes)}
        grid = [[None] * len(self.nodes) for _ in self.terms]
        for i, t in enumerate(self.terms):
            grid[i][col[t.synth]] = t.op.tosparse().T
            for k, p in t.targets:
                grid[i][col[k]] = -p.tosparse()
        for i, t in enumerate(self.terms):  # bmat needs a size for every block row/column
            if all(b is None for b in grid[i]):
                grid[i][0] = sp.csr_array((t.size, self.col_sizes[0]))
        return sp.csr_array(sp.bmat(grid, format="csr"))

    def as_linear_operator(self):
        """``D`` as a ``scipy.sparse.linalg.LinearOperator`` (float64, on the CPU)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def mv(v):
            w = torch.as_tensor(np.asarray(v).reshape(-1), dtype=self.dtype, device=self.device)
            with torch.no_grad():
                return self.matvec(w).double().cpu().numpy()

        def rmv(v):
            r = torch.as_tensor(np.asarray(v).reshape(-1), dtype=self.dtype, device=self.device)
            with torch.no_grad():
                return self.rmatvec(r).double().cpu().numpy()

        return LinearOperator(self.shape, matvec=mv, rmatvec=rmv, dtype=np.float64)

    def dottest(self, *, seed: int = 0, batch: int = 2) -> float:
        """Relative error of ``<D u, v> = <u, D^T v>`` for random ``u``, ``v``
        (:func:`deepframe.ops.dot_test`)."""
        n, big_n = self.shape
        return ops.dot_test(
            self.matvec,
            self.rmatvec,
            (big_n,),
            (n,),
            dtype=self.dtype,
            device=self.device,
            seed=seed,
            batch=batch,
        ).error

    def __repr__(self) -> str:
        n, big_n = self.shape
        scaled = f", {len(self.column_scales)} scaled nodes" if self.column_scales else ""
        return (
            f"GlobalDictionary({n} rows x {big_n} atoms, {len(self.terms)} terms, "
            f"{len(self.nodes)} nodes{scaled})"
        )


class _Transposed:
    def __init__(self, d: GlobalDictionary):
        self._d = d

    @property
    def shape(self) -> tuple[int, int]:
        n, big_n = self._d.shape
        return (big_n, n)

    def __matmul__(self, r: torch.Tensor) -> torch.Tensor:
        return self._d.rmatvec(r)


def _check_scales(scales: Mapping | None, nodes: list, shapes: Mapping) -> dict:
    """Validate ``{node: (C,) tensor}`` column scales (see :class:`GlobalDictionary`)."""
    out = {}
    for j, s in (scales or {}).items():
        if j not in shapes:
            raise ValueError(
                f"GlobalDictionary: column_scales for {j!r}, which is not an activation "
                f"node; nodes are {nodes}"
            )
        c = shapes[j][0]
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (c,):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(
                f"GlobalDictionary: column_scales[{j!r}] must be a tensor of shape ({c},) "
                f"(one factor per channel of node {j!r}), got {got}"
            )
        out[j] = s
    return out


def _offsets(sizes: list[int]) -> list[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


def dictionary(
    graph: nx.DiGraph,
    *,
    seed: int = 0,
    weights: Mapping | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    memory_budget: int | str | None = None,
) -> GlobalDictionary:
    """The global dictionary of ``graph`` (validated first).

    Parameters
    ----------
    graph : networkx.DiGraph
    seed : int
        Seed of the He-style random weights ``N(0, 2 / fan_in)`` (ignored when
        ``weights`` is given).
    weights : mapping, optional
        ``{key: tensor}`` as :func:`parameter_shapes` lists, optionally with the
        per-node ``"lambda:j"`` (the sparsity weights, default from the nodes'
        ``bias``) and the other entries :func:`split_weights` describes (the
        mapping :func:`deepframe.from_torch` returns). Batch-norm statistics of
        a ``batchnorm=True`` node are folded as in eval mode: the column scales
        ``s_j = gamma_j / sqrt(var_j + eps_j)`` of its synthesis blocks and
        ``lambda_j + s_j mean_j`` (not clipped: minus the eval-mode network's
        bias), the dictionary of the network as it runs in eval mode.
    dtype, device :
        Of the random weights.
    memory_budget : int or str, optional
        Cap on the random weights' memory (see :func:`check_memory`).

    Raises
    ------
    ArchitectureError
        The graph is invalid.
    MemoryBudgetError
        The random weights would exceed the memory budget.
    """
    g = structure(validate(graph))
    if weights is None:
        weights = random_weights(
            g, seed=seed, dtype=dtype, device=device, memory_budget=memory_budget
        )
        return GlobalDictionary(g, weights, dtype=dtype, device=device)
    edges, nodes, _ = split_weights(g, weights)
    lambdas, scales = None, {}
    if nodes["lambda"] or nodes["bn_scale"]:
        sample = next(iter({**nodes["lambda"], **nodes["bn_scale"]}.values()))
        lambdas = node_lambdas(g, dtype=sample.dtype, device=sample.device)
        lambdas.update(nodes["lambda"])
    for j, gamma in nodes["bn_scale"].items():  # batch norm in eval mode, folded
        eps = nodes["bn_eps"].get(j)
        eps = _BN_EPS if eps is None else float(eps)
        scales[j] = gamma / torch.sqrt(nodes["bn_var"][j] + eps)
        lambdas[j] = lambdas[j] + scales[j] * nodes["bn_mean"][j]
    return GlobalDictionary(
        g,
        edges,
        lambdas,
        column_scales=scales or None,
        dtype=dtype if not edges else None,
        device=device if not edges else None,
    )
