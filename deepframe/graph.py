"""Architecture graphs: validation, shape inference, builders and node-link I/O.

An architecture is a plain :class:`networkx.DiGraph` (docs/concepts.md):

* one **input** node: ``kind="input"``, ``shape=(C, H, W)`` or ``(d,)``;
* **activation** nodes: ``channels`` (conv activation) or ``features`` (dense
  activation), optional ``bias`` (initial lambda >= 0, a number or one per
  channel/feature), ``batchnorm`` (bool) and ``merge`` (``"edge"``, the
  default, or ``"input"`` for the seed paper's node-centric form);
* **edges** ``k -> j`` with ``op`` in ``conv`` (``kernel_size``, ``stride=1``,
  ``padding=dilation * (kernel_size // 2)``, ``dilation=1``, each one integer or
  a per-axis pair ``[height, width]``; ``groups=1``), ``dense``, ``identity``, ``project``
  (learned 1x1 conv with ``stride`` and ``groups``; dense between dense activations) and
  ``shortcut`` (parameter-free subsample + zero channels, ``stride``,
  ``pad_before`` zero channels in front, default half of the added ones).

Edge-centric node ``j``: every incoming edge maps its source to ``j``'s shape
and the contributions are summed. Node-centric node ``j`` (``merge="input"``):
incoming edges (default ``op="identity"``; a parametrised edge names its
output size with ``channels``/``features`` on the edge) are summed into
``z_j`` and the node's own operator (``op``, ``kernel_size``, ``stride``,
``padding``, ``dilation``, ``groups`` as node attributes) analyses it.

:func:`validate` returns an annotated copy: every node gets ``shape``;
every edge gets ``in_shape`` and ``out_shape``; node-centric nodes get
``input_shape`` (the shape of ``z_j``). Errors are
:class:`ArchitectureError` naming the node or edge.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import networkx as nx

from . import ops
from ._io import atomic_write

__all__ = [
    "ArchitectureError",
    "validate",
    "chain",
    "resnet",
    "densenet",
    "load",
    "loads",
    "dumps",
    "save",
    "from_spec",
    "activation_nodes",
    "input_node",
    "output_node",
    "EDGE_OPS",
    "KEY_SEPARATORS",
    "RESERVED_NAMES",
]

#: The op names an edge may carry: the registered edge kinds (:data:`deepframe.ops.EDGE_KINDS`).
EDGE_OPS = tuple(ops.EDGE_KINDS)
NODE_KINDS = ("input", "activation")
MERGES = ("edge", "input")
_NODE_KEYS = {
    "kind",
    "shape",
    "channels",
    "features",
    "bias",
    "batchnorm",
    "merge",
    "op",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "input_shape",
    "label",
}
_EDGE_KEYS = {
    "op",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "pad_before",
    "channels",
    "features",
    "in_shape",
    "out_shape",
    "label",
}


class ArchitectureError(ValueError):
    """An architecture graph is malformed; the message names the node or edge."""


# --------------------------------------------------------------------------
# node names: what the weight keys need of them
# --------------------------------------------------------------------------
#: The separators of a weights mapping's keys and the keys they build: an edge's
#: weight is ``"k->j"`` (:func:`deepframe.terms.edge_key`), a node's tensor
#: ``"lambda:j"`` (:func:`deepframe.dictionary.node_key`). A node whose name (as a
#: string) holds one would give two weights one key, so :func:`validate` refuses it.
KEY_SEPARATORS = {
    "->": "an edge's weight is keyed 'k->j'",
    ":": "a node's lambda and batch-norm tensors are keyed 'lambda:j', 'bn_scale:j', ...",
}
#: Keys of the classifier head in a weights mapping (:data:`deepframe.dictionary.HEAD_KEYS`);
#: the weight of a node-centric node is keyed by its name, so these names are reserved.
RESERVED_NAMES = ("head.weight", "head.bias")


def _check_names(g: nx.DiGraph) -> None:
    """Refuse node names that would make two weight keys equal (docs/concepts.md, section 8).

    Keys are built from ``str(name)``: names must stay distinct as strings
    (``1`` and ``"1"`` may not both be nodes), hold none of
    :data:`KEY_SEPARATORS` and not be one of :data:`RESERVED_NAMES`.
    """
    seen: dict[str, Any] = {}
    for node in g.nodes:
        text = str(node)
        if text in seen:
            raise ArchitectureError(
                f"nodes {seen[text]!r} and {node!r} are not distinct as strings (both "
                f"{text!r}); weights are keyed by that string, so rename one of them"
            )
        seen[text] = node
        for sep, why in KEY_SEPARATORS.items():
            if sep in text:
                raise ArchitectureError(
                    f"node {node!r}: a node name may not contain {sep!r} ({why}, so such a "
                    "name can give two weights one key); rename the node"
                )
        if text in RESERVED_NAMES:
            raise ArchitectureError(
                f"node {node!r}: the name is reserved, it is the key of the classifier head's "
                f"{text.removeprefix('head.')} in a weights mapping; rename the node"
            )


# --------------------------------------------------------------------------
# small typed readers: each names the culprit
# --------------------------------------------------------------------------
def _where(node=None, edge=None) -> str:
    if edge is not None:
        return f"edge {edge[0]!r} -> {edge[1]!r}"
    return f"node {node!r}"


def _int_attr(attrs: dict, key: str, where: str, *, default=None, minimum: int = 1) -> int:
    value = attrs.get(key, default)
    if value is None:
        raise ArchitectureError(f"{where}: missing attribute {key!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArchitectureError(
            f"{where}: attribute {key!r} must be an integer, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ArchitectureError(f"{where}: attribute {key!r} must be >= {minimum}, got {value}")
    return int(value)


#: The integer attributes of operators and their least values.
_INT_ATTRS = (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
_INT_ATTRS += (("pad_before", 0),)
#: The attributes an operator on a node (merge="input") reads; elsewhere they belong on edges.
_NODE_OP_KEYS = {"op", "kernel_size", "stride", "padding", "dilation", "groups"}


def _check_int_attrs(attrs: dict, where: str) -> None:
    """Type-check the integer attributes present, also where the op ignores them.

    Those the op's kind reads per axis (:attr:`deepframe.ops.Operator.pair_attributes`)
    may be a pair ``[height, width]`` of such integers.
    """
    op = attrs.get("op")
    kind = ops.EDGE_KINDS.get(op) if isinstance(op, str) else None
    per_axis = kind.pair_attributes if kind is not None else ()
    for key, minimum in _INT_ATTRS:
        if key not in attrs:
            continue
        value = attrs[key]
        if key in per_axis and isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            if len(value) != 2:
                raise ArchitectureError(
                    f"{where}: attribute {key!r} must be an integer or a pair [height, width], "
                    f"got {value!r}"
                )
            for axis, entry in zip(("height", "width"), value):
                _int_attr({key: entry}, key, f"{where} ({axis})", minimum=minimum)
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            raise ArchitectureError(
                f"{where}: attribute {key!r} must be an integer, got {value!r}"
                + (f" (op {op!r} takes one value for both axes)" if kind is not None else "")
            )
        else:
            _int_attr(attrs, key, where, minimum=minimum)


def _shape_attr(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArchitectureError(f"{where}: shape must be (C, H, W) or (d,), got {value!r}")
    if len(value) not in (1, 3):
        raise ArchitectureError(
            f"{where}: shape must have 1 (dense) or 3 (C, H, W) entries, got {tuple(value)!r}"
        )
    for s in value:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ArchitectureError(
                f"{where}: shape entries must be positive integers, got {tuple(value)!r}"
            )
    return tuple(int(s) for s in value)


def _size_attr(attrs: dict, where: str) -> tuple[str, int]:
    """Which of ``channels``/``features`` a node declares, and its value."""
    has_c, has_f = "channels" in attrs, "features" in attrs
    if has_c and has_f:
        raise ArchitectureError(f"{where}: give either 'channels' or 'features', not both")
    if not (has_c or has_f):
        raise ArchitectureError(
            f"{where}: missing attribute 'channels' (conv activation) or 'features' "
            "(dense activation)"
        )
    key = "channels" if has_c else "features"
    return key, _int_attr(attrs, key, where)


# --------------------------------------------------------------------------
# shape inference of one operator
# --------------------------------------------------------------------------
def _op_out_shape(
    op: Any, attrs: dict, src: tuple[int, ...], size: tuple[str, int] | None, where: str
) -> tuple[int, ...]:
    """Output shape of operator ``op`` (attributes ``attrs``) applied to ``src``: the
    shape rule of the registered edge kind (:meth:`deepframe.ops.Operator.shape_rule`).

    ``size`` is the destination's declared ``("channels", C)`` or
    ``("features", d)``; ``None`` means "not declared" (identity only).
    """
    try:
        return ops.edge_kind(op).shape_rule(attrs, src, size)
    except ValueError as exc:
        raise ArchitectureError(f"{where}: {exc}") from None


def _check_bias(attrs: dict, size: int, where: str) -> None:
    bias = attrs.get("bias", 0.0)
    if hasattr(bias, "tolist"):  # numpy array or torch tensor
        bias = bias.tolist()
    values = bias if isinstance(bias, (list, tuple)) else [bias]
    if isinstance(bias, (list, tuple)) and len(bias) != size:
        raise ArchitectureError(
            f"{where}: bias has {len(bias)} entries, the node has {size} channels/features"
        )
    for b in values:
        if isinstance(b, bool) or not isinstance(b, numbers.Real):
            raise ArchitectureError(
                f"{where}: bias must be a number or a list of numbers, got {bias!r}"
            )
        if not math.isfinite(b) or b < 0:
            raise ArchitectureError(
                f"{where}: bias (lambda) must be finite and >= 0 so the problem stays convex, "
                f"got {b!r}"
            )


# --------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------
def validate(g: nx.DiGraph) -> nx.DiGraph:
    """Check an architecture graph and infer every shape.

    Parameters
    ----------
    g : networkx.DiGraph
        The architecture (docs/concepts.md). Not modified.

    Returns
    -------
    networkx.DiGraph
        A copy with node attribute ``shape`` on every node, ``in_shape`` /
        ``out_shape`` on every edge and ``input_shape`` (the shape of the
        merged input ``z_j``) on node-centric nodes. The input's ``shape`` is
        normalised to a tuple (JSON gives lists).

    Raises
    ------
    ArchitectureError
        With a message naming the node or edge: not a DiGraph, empty graph,
        self-loop, cycle, a node name that would make two weight keys equal
        (two names equal as strings, a name holding ``"->"`` or ``":"``, a
        reserved name: see :data:`KEY_SEPARATORS`), no or several input
        nodes, unknown node kind or op,
        missing or ill-typed attribute, negative bias, an op that shrinks a map
        to nothing, shape mismatch at a merge (both shapes listed), a node
        unreachable from the input, no unique output.
    """
    if not isinstance(g, nx.DiGraph) or isinstance(g, nx.MultiDiGraph):
        raise ArchitectureError(
            f"an architecture must be a networkx.DiGraph, got {type(g).__name__}"
        )
    if g.number_of_nodes() == 0:
        raise ArchitectureError("the graph is empty")
    loops = list(nx.selfloop_edges(g))
    if loops:
        raise ArchitectureError(f"self-loop on node {loops[0][0]!r}")
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join(repr(e[0]) for e in cycle) + f" -> {cycle[0][0]!r}"
        raise ArchitectureError(f"the graph has a cycle: {path}")
    _check_names(g)

    for node, attrs in g.nodes(data=True):
        kind = attrs.get("kind", "activation")
        if kind not in NODE_KINDS:
            raise ArchitectureError(
                f"node {node!r}: unknown kind {kind!r}; expected 'input' or an activation "
                "node (no kind)"
            )
        for key in attrs:
            if key not in _NODE_KEYS:
                raise ArchitectureError(f"node {node!r}: unknown attribute {key!r}")
    for u, v, attrs in g.edges(data=True):
        for key in attrs:
            if key not in _EDGE_KEYS:
                raise ArchitectureError(f"edge {u!r} -> {v!r}: unknown attribute {key!r}")

    inputs = [n for n, a in g.nodes(data=True) if a.get("kind") == "input"]
    if not inputs:
        raise ArchitectureError("no input node (a node with kind='input')")
    if len(inputs) > 1:
        raise ArchitectureError(f"several input nodes {inputs!r}; exactly one is supported")
    source = inputs[0]
    if g.in_degree(source):
        raise ArchitectureError(
            f"input node {source!r} has incoming edges from {list(g.predecessors(source))!r}"
        )
    if g.number_of_nodes() == 1:
        raise ArchitectureError(f"the graph has only the input node {source!r}")
    reachable = nx.descendants(g, source) | {source}
    unreachable = [n for n in g.nodes if n not in reachable]
    if unreachable:
        raise ArchitectureError(f"node {unreachable[0]!r} is unreachable from the input {source!r}")

    out = g.copy()
    in_attrs = out.nodes[source]
    if "shape" not in in_attrs:
        raise ArchitectureError(f"input node {source!r}: missing attribute 'shape'")
    in_attrs["shape"] = _shape_attr(in_attrs["shape"], f"input node {source!r}")

    for j in nx.lexicographical_topological_sort(out, key=str):
        if j == source:
            continue
        attrs = out.nodes[j]
        where = _where(node=j)
        size = _size_attr(attrs, where)
        merge = attrs.get("merge", "edge")
        if merge not in MERGES:
            raise ArchitectureError(f"{where}: unknown merge {merge!r}; expected one of {MERGES}")
        if "batchnorm" in attrs and not isinstance(attrs["batchnorm"], bool):
            raise ArchitectureError(
                f"{where}: attribute 'batchnorm' must be True or False, got {attrs['batchnorm']!r}"
            )
        _check_int_attrs(attrs, where)
        node_op_keys = _NODE_OP_KEYS & set(attrs)
        if merge == "edge" and node_op_keys:
            raise ArchitectureError(
                f"{where}: attributes {sorted(node_op_keys)} belong on edges unless the node has "
                "merge='input'"
            )
        shapes = []
        for k in sorted(out.predecessors(j), key=str):
            e_attrs = out.edges[k, j]
            e_where = _where(edge=(k, j))
            _check_int_attrs(e_attrs, e_where)
            src = out.nodes[k]["shape"]
            if merge == "edge":
                if "op" not in e_attrs:
                    raise ArchitectureError(f"{e_where}: missing attribute 'op'")
                for key in ("channels", "features"):
                    if key in e_attrs:
                        raise ArchitectureError(
                            f"{e_where}: attribute {key!r} is only meaningful on edges into a "
                            "node with merge='input'; put it on the node"
                        )
                shape = _op_out_shape(e_attrs["op"], e_attrs, src, size, e_where)
            else:
                e_op = e_attrs.get("op", ops.DEFAULT_EDGE_KIND)
                e_size = None
                if "channels" in e_attrs or "features" in e_attrs:
                    e_size = _size_attr(e_attrs, e_where)
                elif isinstance(e_op, str) and e_op in ops.EDGE_KINDS:
                    e_size = ops.EDGE_KINDS[e_op].default_size(src)
                shape = _op_out_shape(e_op, e_attrs, src, e_size, e_where)
            e_attrs["in_shape"] = src
            e_attrs["out_shape"] = shape
            shapes.append(((k, j), shape))
        first_edge, first = shapes[0]
        for edge, shape in shapes[1:]:
            if shape != first:
                raise ArchitectureError(
                    f"{where}: shape mismatch at the merge: edge {first_edge[0]!r} -> {j!r} "
                    f"gives {first} but edge {edge[0]!r} -> {j!r} gives {shape}"
                )
        if merge == "edge":
            shape = first
        else:
            if "op" not in attrs:
                raise ArchitectureError(f"{where}: merge='input' needs the node's own 'op'")
            attrs["input_shape"] = first
            shape = _op_out_shape(attrs["op"], attrs, first, size, where)
        attrs["shape"] = shape
        _check_bias(attrs, shape[0], where)

    output_node(out)  # raises when there is no unique output
    return out


# --------------------------------------------------------------------------
# queries on validated graphs
# --------------------------------------------------------------------------
def input_node(g: nx.DiGraph):
    """The unique node with ``kind="input"``."""
    nodes = [n for n, a in g.nodes(data=True) if a.get("kind") == "input"]
    if len(nodes) != 1:
        raise ArchitectureError(f"expected exactly one input node, found {nodes!r}")
    return nodes[0]


def activation_nodes(g: nx.DiGraph) -> list:
    """Activation nodes in the canonical column order.

    ``networkx.lexicographical_topological_sort`` keyed by the node name as a
    string (deterministic), input excluded.
    """
    src = input_node(g)
    return [n for n in nx.lexicographical_topological_sort(g, key=str) if n != src]


def output_node(g: nx.DiGraph):
    """The node feeding the classifier head: graph attribute ``output``, else the unique sink."""
    if "output" in g.graph:
        name = g.graph["output"]
        if name not in g or g.nodes[name].get("kind") == "input":
            raise ArchitectureError(
                f"graph attribute 'output' names {name!r}, which is not an "
                "activation node of the graph"
            )
        return name
    sinks = [n for n in g.nodes if g.out_degree(n) == 0 and g.nodes[n].get("kind") != "input"]
    if len(sinks) != 1:
        raise ArchitectureError(
            f"the graph has {len(sinks)} sinks {sorted(sinks, key=str)!r}; name the one that "
            "feeds the classifier with the graph attribute 'output'"
        )
    return sinks[0]


# --------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------
def _input_graph(input_shape: Sequence[int]) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=tuple(input_shape))
    return g


def _check_int(builder: str, name: str, value: Any, minimum: int = 1) -> int:
    """A builder argument that must be an integer ``>= minimum`` (no bools, no floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArchitectureError(
            f"{builder}: {name} must be an integer, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ArchitectureError(f"{builder}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_ints(builder: str, name: str, values: Any, *, lengths: tuple = ()) -> tuple[int, ...]:
    """A builder argument that must be a non-empty sequence of positive integers."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ArchitectureError(
            f"{builder}: {name} must be a sequence of positive integers, got {values!r}"
        )
    if len(values) == 0:
        raise ArchitectureError(f"{builder}: {name} is empty; give at least one entry")
    if lengths and len(values) not in lengths:
        raise ArchitectureError(
            f"{builder}: {name} must have {' or '.join(map(str, lengths))} entries, "
            f"got {tuple(values)!r}"
        )
    return tuple(_check_int(builder, f"{name} entry", v) for v in values)


def _check_flag(builder: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArchitectureError(f"{builder}: {name} must be True or False, got {value!r}")
    return value


def _check_choice(builder: str, name: str, value: Any, choices: tuple) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise ArchitectureError(
            f"{builder}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    return value


def chain(
    input_shape: Sequence[int],
    widths: Sequence[int] = (8, 16),
    *,
    kernel_size: int = 3,
    strides: Sequence[int] | None = None,
    dense: bool | None = None,
    bias: float = 0.0,
    batchnorm: bool = False,
    merge: str = "edge",
) -> nx.DiGraph:
    """A chain network (plain CNN or MLP) ``x -> l1 -> l2 -> ...`` (Eq. 4, Eq. 12).

    Parameters
    ----------
    input_shape : (C, H, W) or (d,)
    widths : sequence of int
        Channels (conv) or features (dense) of each layer (default ``(8, 16)``,
        as ``deepframe describe chain``).
    kernel_size : int
        Conv kernel size (padding ``kernel_size // 2``).
    strides : sequence of int, optional
        Per-layer conv strides (default all 1).
    dense : bool, optional
        Dense layers; default: dense exactly when the input is a vector.
    bias, batchnorm :
        Node attributes of every layer.
    merge : ``"edge"`` or ``"input"``
        ``"input"`` builds the node-centric form (Eq. 16): identity edges and the
        layer operators on the nodes. Same dictionary for a chain.
    """
    input_shape = _check_ints("chain", "input_shape", input_shape, lengths=(1, 3))
    widths = _check_ints("chain", "widths", widths)
    kernel_size = _check_int("chain", "kernel_size", kernel_size)
    merge = _check_choice("chain", "merge", merge, MERGES)
    _check_flag("chain", "batchnorm", batchnorm)
    if dense is None:
        dense = len(input_shape) == 1
    _check_flag("chain", "dense", dense)
    strides = list(strides) if strides is not None else [1] * len(widths)
    if len(strides) != len(widths):
        raise ArchitectureError(f"chain: {len(widths)} widths but {len(strides)} strides")
    strides = _check_ints("chain", "strides", strides)
    g = _input_graph(input_shape)
    prev = "x"
    for i, (width, stride) in enumerate(zip(widths, strides), start=1):
        name = f"l{i}"
        size = {"features": int(width)} if dense else {"channels": int(width)}
        op = (
            {"op": "dense"}
            if dense
            else {"op": "conv", "kernel_size": kernel_size, "stride": int(stride)}
        )
        if merge == "input":
            g.add_node(name, **size, bias=bias, batchnorm=batchnorm, merge="input", **op)
            g.add_edge(prev, name, op="identity")
        else:
            g.add_node(name, **size, bias=bias, batchnorm=batchnorm)
            g.add_edge(prev, name, **op)
        prev = name
    return validate(g)


def resnet(
    input_shape: Sequence[int] = (3, 32, 32),
    blocks_per_stage: int = 1,
    *,
    widths: Sequence[int] = (16, 32, 64),
    shortcut: str = "A",
    kernel_size: int = 3,
    bias: float = 0.0,
    batchnorm: bool = False,
    skips: bool = True,
) -> nx.DiGraph:
    """CIFAR ResNet of the 6n+2 family (He et al. 2016, §4.2) in edge-centric form.

    A 3x3 stem conv to ``widths[0]`` channels, then one stage per width with
    ``blocks_per_stage`` basic blocks (two 3x3 convs); the first block of every
    later stage halves the map with stride 2. A block computes
    ``a = conv(h) + skip(x)`` at its second node, so the skip is one more
    incoming edge of that node (identity, or ``shortcut`` = option A / ``project``
    = option B where the shape changes). Depth ``6 n + 2`` counts the classifier.

    Parameters
    ----------
    skips : bool
        ``False`` drops all skip edges: the chain twin with the same learned
        convolutions (up to projection weights), as in the seed paper's Fig. 5.
    shortcut : ``"A"`` or ``"B"``
        Option A (zero-padding ``shortcut`` edge) or B (``project`` edge).
    """
    input_shape = _check_ints("resnet", "input_shape", input_shape, lengths=(1, 3))
    blocks_per_stage = _check_int("resnet", "blocks_per_stage", blocks_per_stage)
    widths = _check_ints("resnet", "widths", widths)
    shortcut = _check_choice("resnet", "shortcut", shortcut, ("A", "B"))
    kernel_size = _check_int("resnet", "kernel_size", kernel_size)
    _check_flag("resnet", "batchnorm", batchnorm)
    _check_flag("resnet", "skips", skips)
    node = {"bias": bias, "batchnorm": batchnorm}
    conv = {"op": "conv", "kernel_size": kernel_size}
    g = _input_graph(input_shape)
    g.add_node("stem", channels=int(widths[0]), **node)
    g.add_edge("x", "stem", **conv)
    prev = "stem"
    for s, width in enumerate(widths, start=1):
        for b in range(1, blocks_per_stage + 1):
            stride = 2 if (s > 1 and b == 1) else 1
            mid, end = f"s{s}b{b}a", f"s{s}b{b}b"
            g.add_node(mid, channels=int(width), **node)
            g.add_node(end, channels=int(width), **node)
            g.add_edge(prev, mid, **conv, stride=stride)
            g.add_edge(mid, end, **conv)
            if skips:
                if g.nodes[prev]["channels"] == width and stride == 1:
                    g.add_edge(prev, end, op="identity")
                elif shortcut == "A":
                    g.add_edge(prev, end, op="shortcut", stride=stride)
                else:
                    g.add_edge(prev, end, op="project", stride=stride)
            prev = end
    return validate(g)


def densenet(
    input_shape: Sequence[int] = (3, 32, 32),
    layers_per_stage: int = 3,
    *,
    widths: Sequence[int] = (16, 32, 64),
    kernel_size: int = 3,
    bias: float = 0.0,
    batchnorm: bool = False,
) -> nx.DiGraph:
    """A DenseNet-style graph: within a stage, every node receives a learned conv from
    every earlier node of that stage (Huang et al. 2017, in summation form).

    A stem conv, then per stage ``layers_per_stage`` nodes of ``widths[s]``
    channels. Node ``i`` of a stage gets a ``kernel_size`` conv from every earlier
    node of the stage (and from the stage's entry node); the first node of a
    later stage downsamples the previous stage's last node with stride 2. These
    learned skips make the global dictionary denser than a ResNet's identity
    skips (Murdock & Lucey 2020).
    """
    input_shape = _check_ints("densenet", "input_shape", input_shape, lengths=(1, 3))
    layers_per_stage = _check_int("densenet", "layers_per_stage", layers_per_stage)
    widths = _check_ints("densenet", "widths", widths)
    kernel_size = _check_int("densenet", "kernel_size", kernel_size)
    _check_flag("densenet", "batchnorm", batchnorm)
    node = {"bias": bias, "batchnorm": batchnorm}
    g = _input_graph(input_shape)
    g.add_node("stem", channels=int(widths[0]), **node)
    g.add_edge("x", "stem", op="conv", kernel_size=kernel_size)
    entry = "stem"
    for s, width in enumerate(widths, start=1):
        stride = 1 if s == 1 else 2
        members = []
        for i in range(1, layers_per_stage + 1):
            name = f"d{s}l{i}"
            g.add_node(name, channels=int(width), **node)
            g.add_edge(entry, name, op="conv", kernel_size=kernel_size, stride=stride)
            for m in members:
                g.add_edge(m, name, op="conv", kernel_size=kernel_size)
            members.append(name)
        entry = members[-1]
    return validate(g)


# --------------------------------------------------------------------------
# node-link JSON
# --------------------------------------------------------------------------
_DERIVED = ("in_shape", "out_shape", "input_shape")


def save(g: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write ``g`` as networkx node-link JSON (atomically: temp file + rename).

    Derived attributes (inferred shapes) are dropped; the input's ``shape`` stays.
    """
    text = dumps(g)
    atomic_write(path, lambda f: f.write(text.encode()))


#: Largest architecture file :func:`load` reads (bytes). A node-link graph of
#: a few thousand nodes takes well under a megabyte.
MAX_ARCHITECTURE_BYTES = 64 * 1024**2


def load(path: str | os.PathLike) -> nx.DiGraph:
    """Read a node-link JSON architecture and :func:`validate` it.

    The file must be UTF-8 JSON (a byte-order mark is accepted) in networkx's
    node-link layout, with the edges under ``"edges"`` or ``"links"``.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ArchitectureError
        ``path`` is a folder, unreadable, larger than
        :data:`MAX_ARCHITECTURE_BYTES`, not UTF-8, not JSON, nested too
        deeply, not node-link data, or an invalid graph. The message names
        the path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ArchitectureError(
            f"{path} is a folder, not an architecture file: give a node-link .json file"
        )
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_ARCHITECTURE_BYTES + 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"no architecture file at {path}") from None
    except OSError as exc:
        raise ArchitectureError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if len(raw) > MAX_ARCHITECTURE_BYTES:
        raise ArchitectureError(
            f"{path} is larger than {MAX_ARCHITECTURE_BYTES // 1024**2} MiB, far more than a "
            "node-link architecture needs: is it the right file?"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArchitectureError(
            f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
            "save the architecture as UTF-8 JSON"
        ) from None
    return loads(text, where=path)


def loads(text: str, *, where: str = "architecture") -> nx.DiGraph:
    """:func:`load` for node-link JSON text; ``where`` names its source in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchitectureError(
            f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise ArchitectureError(
            f"{where}: JSON nested too deeply to be a node-link architecture"
        ) from None
    if not isinstance(data, dict) or "nodes" not in data:
        raise ArchitectureError(f"{where}: not a networkx node-link graph (no 'nodes')")
    key = "edges" if "edges" in data else "links"
    if key not in data:
        raise ArchitectureError(f"{where}: not a networkx node-link graph (no 'edges' or 'links')")
    try:
        g = nx.node_link_graph(data, directed=True, multigraph=False, edges=key)
    except (KeyError, TypeError, AttributeError, ValueError, nx.NetworkXError) as exc:
        raise ArchitectureError(f"{where}: malformed node-link data ({exc!s:.200})") from None
    try:
        return validate(g)
    except ArchitectureError as exc:
        raise ArchitectureError(f"{where}: {exc}") from None


def _json_value(value):
    """``json.dumps``'s fallback: numpy and torch numbers and arrays as Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json_name_problem(node) -> str | None:
    """Why ``node`` would not come back from node-link JSON as itself (None: it would)."""
    if isinstance(node, str | numbers.Integral):
        return None
    if isinstance(node, numbers.Real):
        if math.isfinite(node):
            return None
        return "a non-finite number comes back from JSON as another node"
    kind = type(node).__name__
    if isinstance(node, tuple | list):
        return f"a {kind} name comes back from JSON as a list, which cannot name a node"
    return f"a {kind} name cannot be written as JSON"


def _json_problem(h: nx.DiGraph) -> str:
    """The first node or attribute of ``h`` that JSON cannot hold, in words."""

    def fails(value) -> bool:
        try:
            json.dumps(value, default=_json_value)
        except (TypeError, ValueError):
            return True
        return False

    for node, attrs in h.nodes(data=True):
        problem = _json_name_problem(node)
        if problem:
            return f"node {node!r}: {problem}; name nodes with strings or integers"
        for key, value in attrs.items():
            if fails(value):
                return f"node {node!r}: attribute {key!r} = {value!r} is not JSON"
    for u, v, attrs in h.edges(data=True):
        for key, value in attrs.items():
            if fails(value):
                return f"edge {u!r} -> {v!r}: attribute {key!r} = {value!r} is not JSON"
    return "a graph attribute is not JSON"


def dumps(g: nx.DiGraph) -> str:
    """:func:`save` as text: node-link JSON without the inferred shapes.

    Raises
    ------
    ArchitectureError
        A node name that would not be read back as itself (a tuple comes back
        as a list), or an attribute JSON cannot hold; the message names it.
    """
    h = g.copy()
    for _, a in h.nodes(data=True):
        if a.get("kind") != "input":
            a.pop("shape", None)
        for key in _DERIVED:
            a.pop(key, None)
    for _, _, a in h.edges(data=True):
        for key in _DERIVED:
            a.pop(key, None)
    bad = next((n for n in h.nodes if _json_name_problem(n)), None)
    try:
        if bad is not None:
            raise ValueError(bad)
        return json.dumps(nx.node_link_data(h, edges="edges"), indent=1, default=_json_value)
    except (TypeError, ValueError):
        raise ArchitectureError(
            f"cannot write the graph as node-link JSON: {_json_problem(h)}"
        ) from None


_BUILDERS = {"chain": chain, "resnet": resnet, "densenet": densenet}


def from_spec(spec: str) -> nx.DiGraph:
    """An architecture from a command-line spec or a JSON file.

    A spec is a builder name, optionally followed by ``:`` and
    comma-separated ``key=value`` options: ``"resnet"``,
    ``"resnet:blocks_per_stage=2,shortcut=B"``,
    ``"chain:input_shape=1x8x8,widths=8x16"``. Values are integers,
    floats, ``true``/``false``, tuples written with ``x`` (``8x16``, a
    single entry for a one-entry tuple) or words (``B``). Anything else is
    the path of a node-link JSON file; a file whose name is also a builder's
    is ambiguous: write ``./resnet`` for the file or ``resnet:`` for the
    builder.

    Raises
    ------
    ArchitectureError
        An unknown builder or option, an option given twice or without a
        value, an option of the wrong type or out of range, an ambiguous
        name, or a bad file (see :func:`load`).
    FileNotFoundError
        A ``.json`` path that does not exist.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ArchitectureError(
            f"empty architecture {spec!r}: give a builder ({', '.join(sorted(_BUILDERS))}) "
            "or a node-link .json file"
        )
    name, colon, rest = spec.partition(":")
    if name in _BUILDERS:
        if not colon and os.path.exists(spec):
            raise ArchitectureError(
                f"{spec!r} is both a builder and a file in this folder: write "
                f"'{spec}:' for the builder or './{spec}' for the file"
            )
        return _from_builder(spec, name, rest)
    if os.path.exists(spec) or spec.endswith(".json"):
        return load(spec)
    raise ArchitectureError(
        f"unknown architecture {name!r}: expected one of {sorted(_BUILDERS)} (a builder spec "
        "such as resnet:blocks_per_stage=2) or an existing node-link .json file"
    )


def _from_builder(spec: str, name: str, rest: str) -> nx.DiGraph:
    import inspect

    builder = _BUILDERS[name]
    options = list(inspect.signature(builder).parameters)
    kwargs: dict[str, Any] = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise ArchitectureError(f"architecture spec {spec!r}: expected key=value, got {item!r}")
        if key not in options:
            raise ArchitectureError(
                f"architecture spec {spec!r}: {name} has no option {key!r}; its options are "
                f"{', '.join(options)}"
            )
        if key in kwargs:
            raise ArchitectureError(f"architecture spec {spec!r}: option {key!r} is given twice")
        if not value:
            raise ArchitectureError(f"architecture spec {spec!r}: option {key!r} has no value")
        kwargs[key] = _parse_value(value)
    if name == "chain":
        kwargs.setdefault("input_shape", (1, 8, 8))  # widths: chain's own default
    for key in ("input_shape", "widths", "strides"):
        if key in kwargs and not isinstance(kwargs[key], tuple):
            kwargs[key] = (kwargs[key],)
    try:
        return builder(**kwargs)
    except ArchitectureError as exc:
        raise ArchitectureError(f"architecture spec {spec!r}: {exc}") from None


def _parse_value(text: str) -> Any:
    if "x" in text and all(p.isdigit() for p in text.split("x")):
        return tuple(int(p) for p in text.split("x"))
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text
