"""The residual terms of an architecture graph and its weight-independent structure.

The global non-negative LASSO of a network (docs/concepts.md, Eq. 11) has one
residual *term* ``r_t`` per edge (edge-centric nodes) or per node
(node-centric nodes, ``merge="input"``). Every term has one synthesis block
(node ``j``, operator ``B_t = A_t^T`` with ``A_t`` the analysis operator) and
target blocks (nodes ``k``, operators ``P_tk``):

    r_t = sum_k P_tk w_k + sum_inputs P_t,x x - B_t w_j

Edge ``k -> j`` (edge-centric): ``A_t`` is the edge operator, ``P_tk = I``
(Eq. 12 for a chain). Node-centric node ``j``: ``A_t`` is the node's own
operator and ``P_tk = E_jk`` the edge operators (Eq. 16-18).

This module holds what a validated graph fixes before any weight exists:
:class:`TermSpec` (a term without weights), the learned weights' shapes
(:func:`parameter_shapes`) and :class:`Structure`, all of it built once by
:func:`structure` and handed down (graph -> terms -> memory estimates ->
dictionary -> pursuit); and :class:`Term`, a term with its weights. Stacking
the terms into the global dictionary ``D`` is :mod:`deepframe.dictionary`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx
import torch

from . import ops
from .graph import ArchitectureError, activation_nodes, input_node, output_node
from .ops import OpSpec

__all__ = [
    "Term",
    "TermSpec",
    "Structure",
    "structure",
    "term_specs",
    "build_terms",
    "parameter_shapes",
    "edge_key",
]


def edge_key(k, j) -> str:
    """Name of the weight (and the term) of edge ``k -> j``: ``"k->j"``.

    Built from ``str(k)`` and ``str(j)``. It names one edge only: a validated
    graph's names are distinct as strings and hold no ``"->"``
    (:data:`deepframe.graph.KEY_SEPARATORS`), so the key splits back into its
    two ends at its one ``"->"``. A node-centric node's operator is keyed
    ``str(j)``, which holds no ``"->"`` either (docs/concepts.md, section 8).
    """
    return f"{k}->{j}"


def _distinct_key(seen: dict, key: str, owner: str) -> None:
    """Record that ``owner`` (an edge or a node, in words) uses ``key``; two owners of
    one key would share one weight, which :func:`deepframe.graph.validate` prevents."""
    if key in seen:
        raise ArchitectureError(
            f"{seen[key]} and {owner} would share the weight key {key!r}: validate the graph "
            "(deepframe.validate) after changing its node names"
        )
    seen[key] = owner


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
    shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    owners: dict[str, str] = {}
    for j in nodes:
        for k in sorted(g.predecessors(j), key=str):
            a = g.edges[k, j]
            spec = _weight_shape(
                a.get("op", ops.DEFAULT_EDGE_KIND), a, a["in_shape"], a["out_shape"]
            )
            if spec is not None:
                _distinct_key(owners, edge_key(k, j), f"edge {k!r} -> {j!r}")
                shapes[edge_key(k, j)] = spec
        na = g.nodes[j]
        if na.get("merge", "edge") == "input":
            spec = _weight_shape(na["op"], na, na["input_shape"], na["shape"])
            if spec is not None:
                _distinct_key(owners, str(j), f"node {j!r}")
                shapes[str(j)] = spec
    return shapes


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
                ident = _op_spec(
                    ops.Identity.kind, {}, a["in_shape"], a["in_shape"], edge_key(k, j)
                )
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
                    a.get("op", ops.DEFAULT_EDGE_KIND),
                    a,
                    a["in_shape"],
                    a["out_shape"],
                    edge_key(k, j),
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
    once by :func:`structure` and handed down (graph -> memory estimates ->
    dictionary -> pursuit).

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
    term specifications and the weight shapes once; every function of
    deepframe that takes a validated graph (here, in :mod:`deepframe.memory`
    and :mod:`deepframe.dictionary`) accepts the structure instead and reuses it.
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
