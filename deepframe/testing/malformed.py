"""Plain random generators of malformed architecture graphs, with the error each must raise.

The engine behind :func:`deepframe.testing.malformed_architectures`.
:func:`random_malformed` takes a valid graph from
:func:`~deepframe.testing.graphs.random_architecture` (string node
names) and breaks it in one of the ways :data:`MALFORMED_KINDS` names (or,
for the structural cases, builds a small broken graph directly), and returns
it with the fragment that the :class:`deepframe.ArchitectureError` raised by
:func:`deepframe.validate` must contain: usually the culprit, ``repr(node)``
or ``"'u' -> 'v'"`` for an edge. Seeded like the valid generator, without
hypothesis.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from typing import Any

import networkx as nx

from ..graph import validate
from ..ops import EDGE_KINDS
from .graphs import DEFAULT_EDGE_KIND, OPS, _Config, _ops_between, _size_attrs, random_architecture

__all__ = ["MALFORMED_KINDS", "random_malformed"]

#: The default edge kind: maps every shape onto itself (structural corruptions use it).
_SAME = DEFAULT_EDGE_KIND

#: ``{attribute: kinds}``: the kinds that read an integer attribute, and require it, in
#: registration order (each kind's :attr:`~deepframe.ops.Operator.attributes`).
_READS = {
    key: tuple(k for k, c in EDGE_KINDS.items() if key in c.attributes)
    for key in ("kernel_size", "padding", "stride", "groups")
}
_REQUIRES = {"kernel_size": tuple(k for k, c in EDGE_KINDS.items() if c.required_attributes)}
#: A kind with a kernel (``kernel_size``, ``stride``, ``padding``): conv arithmetic applies.
_KERNEL = _READS["kernel_size"][0]
#: The kinds that take an output size but whose shape rule refuses fewer output channels
#: than input channels (:attr:`~deepframe.ops.Operator.reduces_channels`; the default,
#: same-shape kind changes no size at all).
_NEVER_REDUCES = tuple(
    k for k, c in EDGE_KINDS.items() if not c.reduces_channels and k != DEFAULT_EDGE_KIND
)


# --------------------------------------------------------------------------
# malformed architectures
# --------------------------------------------------------------------------
def _base(rng, **kwargs) -> nx.DiGraph:
    """A valid string-named architecture to corrupt."""
    kwargs.setdefault("int_names", False)
    kwargs.setdefault("max_nodes", 4)
    kwargs.setdefault("max_size", 6)
    return random_architecture(rng, **kwargs)


def _activations(g: nx.DiGraph) -> list:
    return [n for n, a in g.nodes(data=True) if a.get("kind") != "input"]


def _conv_nodes(g: nx.DiGraph) -> list:
    return [n for n in _activations(g) if "channels" in g.nodes[n]]


def _q(name) -> str:
    return repr(name)


def _edge(u, v) -> str:
    return f"{u!r} -> {v!r}"


def _unregistered(names: list) -> list:
    """The names that are not registered edge kinds (a kind registered later drops out)."""
    return [name for name in names if name not in EDGE_KINDS]


def _map_onto(rng, src: tuple, dst: tuple) -> tuple[str, dict]:
    """The first registered kind, and its attributes, that maps ``src`` onto exactly
    ``dst`` (:meth:`~deepframe.ops.Operator.between`, the valid generator's limits)."""
    defaults = inspect.signature(random_architecture).parameters
    limits = _Config(**{name: p.default for name, p in defaults.items() if name != "rng"})
    return _ops_between(rng, limits, src, dst, OPS)[0]


def _after_vectors() -> tuple:
    """The kinds the generator draws after a ``(d,)`` activation (``draw_weights``)."""
    return tuple(op for op, kind in EDGE_KINDS.items() if kind.draw_weights[1])


def _maps_only() -> list:
    """The kinds never drawn after a ``(d,)`` activation: they need a ``(C, H, W)`` source."""
    return [op for op, kind in EDGE_KINDS.items() if not kind.draw_weights[1]]


def _sized_kinds(src: tuple) -> list:
    """The kinds an edge into a node-centric node must give a size (``channels`` /
    ``features``): no :meth:`~deepframe.ops.Operator.default_size` from ``src``, and not the
    default edge (which keeps the source's size)."""
    return [
        op
        for op, kind in EDGE_KINDS.items()
        if op != DEFAULT_EDGE_KIND and kind.default_size(src) is None
    ]


def _m_cycle(rng):
    g = _base(rng, max_nodes=4)
    acts = _activations(g)
    pairs = [(b, a) for b in acts for a in nx.ancestors(g, b) if a != "x"]
    if not pairs:  # a chain of two activation nodes always has one
        a, b = acts[0], "cyc"
        g.add_node(b, **{k: v for k, v in g.nodes[a].items() if k in ("channels", "features")})
        g.add_edge(a, b, op=_SAME)
        pairs = [(b, a)]
    b, a = rng.choice(pairs)
    g.add_edge(b, a, op=_SAME)
    return g, _q(a)


def _m_self_loop(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.add_edge(n, n, op=_SAME)
    return g, _q(n)


def _m_no_input(rng):
    g = _base(rng)
    del g.nodes["x"]["kind"]
    return g, "no input node"


def _m_two_inputs(rng):
    g = _base(rng)
    g.add_node("x2", kind="input", shape=g.nodes["x"]["shape"])
    if rng.random() < 0.5:
        g.add_edge("x2", rng.choice(_activations(g)), op=_SAME)
    return g, _q("x2")


def _m_unknown_edge_op(rng):
    g = _base(rng)
    u, v = rng.choice(list(g.edges))
    g.edges[u, v]["op"] = rng.choice(_unregistered(["conv3d", "Conv", "relu", "linear", ""]))
    return g, _edge(u, v)


def _node_centric(rng, g: nx.DiGraph):
    """A node-centric node of ``g``, added (default edge, default kind as its op, from the
    input) if none."""
    found = [m for m in _activations(g) if g.nodes[m].get("merge") == "input"]
    if found:
        return rng.choice(found)
    shape = g.nodes["x"]["shape"]
    g.add_node("nc", **_size_attrs(shape), merge="input", op=_SAME)
    g.add_edge("x", "nc")
    g.graph["output"] = "nc"
    return "nc"


def _m_unknown_node_op(rng):
    g = _base(rng, merges=("input",))
    n = _node_centric(rng, g)
    g.nodes[n]["op"] = rng.choice(_unregistered(["pool", "Conv", "linear"]))
    return g, _q(n)


def _m_op_not_string(rng):
    g = _base(rng)
    u, v = rng.choice(list(g.edges))
    g.edges[u, v]["op"] = rng.choice([3, None, [OPS[0]]])  # a list holding a kind's name
    return g, _edge(u, v)


def _m_unknown_kind(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n]["kind"] = rng.choice(["hidden", "Input", "output", OPS[0]])  # an op's name
    return g, _q(n)


def _m_missing_size(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n].pop("channels", None)
    g.nodes[n].pop("features", None)
    return g, _q(n)


def _m_both_sizes(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    a = g.nodes[n]
    a["features" if "channels" in a else "channels"] = 3
    return g, _q(n)


def _m_bad_size_type(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    a = g.nodes[n]
    key = "channels" if "channels" in a else "features"
    a[key] = rng.choice([True, float(a[key]), str(a[key]), 0, -2, None])
    return g, _q(n)


def _conv_size(size: int, k: int, s: int, p: int) -> int:
    """``floor((size + 2p - k) / s) + 1`` (kept independent of deepframe.ops on purpose)."""
    return (size + 2 * p - k) // s + 1


def _m_merge_mismatch(rng):
    """A conv edge whose output has the right channels but the wrong map size."""
    g = _base(rng, inputs=("conv",), merges=("edge",), max_size=7)
    shapes = _infer_shapes(g)
    targets = _conv_nodes(g)
    rng.shuffle(targets)
    for j in targets:
        below = nx.descendants(g, j)
        for q in shapes:
            src = shapes[q]
            if q == j or q in below or g.has_edge(q, j) or len(src) != 3:
                continue
            for k, s, p in ((3, 1, 2), (3, 1, 0), (1, 2, 0), (1, 1, 1), (5, 1, 0)):
                h, w = _conv_size(src[1], k, s, p), _conv_size(src[2], k, s, p)
                if h >= 1 and w >= 1 and (h, w) != shapes[j][1:]:
                    g.add_edge(q, j, op=_KERNEL, kernel_size=k, stride=s, padding=p)
                    return g, _q(j)
    # no candidate: a new node fed a (C, H, W) and a (C, H + 2, W + 2) map
    g.add_node("m1", channels=1)
    g.add_edge("x", "m1", op=_KERNEL, kernel_size=1)
    g.add_node("m2", channels=2)
    g.add_edge("x", "m2", op=_KERNEL, kernel_size=1)
    g.add_edge("m1", "m2", op=_KERNEL, kernel_size=3, padding=2)
    g.graph["output"] = "m2"
    return g, _q("m2")


def _m_shrunk(rng):
    g = _base(rng, inputs=("conv",))
    shapes = _infer_shapes(g)
    src = rng.choice([n for n in shapes if len(shapes[n]) == 3])
    h = min(shapes[src][1:])
    g.add_node("tiny", channels=2)
    if rng.random() < 0.5:
        g.add_edge(src, "tiny", op=_KERNEL, kernel_size=h + 3, padding=0)
    else:
        g.add_edge(src, "tiny", op=_KERNEL, kernel_size=h + 2, padding=0, stride=2)
    g.graph["output"] = "tiny"
    return g, _edge(src, "tiny")


def _m_negative_bias(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n]["bias"] = rng.choice([-0.1, -1, -1e-9])
    return g, _q(n)


def _m_bad_bias(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    size = g.nodes[n].get("channels", g.nodes[n].get("features"))
    g.nodes[n]["bias"] = rng.choice(
        [
            float("nan"),
            float("inf"),
            "0.1",
            None,
            True,
            [0.1] * (size + 1),
            [0.1, float("nan")],
        ]
    )
    return g, _q(n)


def _m_identity_mismatch(rng):
    g = _base(rng, merges=("edge",))
    shapes = _infer_shapes(g)
    pairs = [
        (q, j)
        for j in _activations(g)
        for q in shapes
        if q != j
        and q not in nx.descendants(g, j)
        and not g.has_edge(q, j)
        and shapes[q] != shapes[j]
    ]
    if pairs:
        q, j = rng.choice(pairs)
    else:  # every node has the input's shape: feed one from a new, wider vector node
        j = rng.choice(_activations(g))
        q = "wide"
        g.add_node(q, features=shapes[j][0] + 1)
        op, attrs = _map_onto(rng, shapes["x"], (shapes[j][0] + 1,))
        g.add_edge("x", q, op=op, **attrs)
    g.add_edge(q, j, op=_SAME)
    return g, _edge(q, j)


def _m_unreachable(rng):
    g = _base(rng)
    j = rng.choice(_activations(g))
    g.add_node("orphan", channels=1)
    if rng.random() < 0.5:
        g.add_edge("orphan", j, op=_SAME)
    return g, _q("orphan")


def _conv_edge(rng, g: nx.DiGraph, ops: Sequence[str]) -> tuple:
    """An edge of ``g`` with an op in ``ops`` and a ``(C, H, W)`` source (where ``stride``
    and ``kernel_size`` are read), added from the conv input if there is none."""
    shapes = _infer_shapes(g)
    edges = [(u, v) for u, v, a in g.edges(data=True) if a.get("op") in ops and len(shapes[u]) == 3]
    if edges:
        return rng.choice(edges)
    g.add_node("e", channels=2)
    g.add_edge("x", "e", op=ops[0], kernel_size=3, stride=1)
    g.graph["output"] = "e"
    return "x", "e"


def _m_bad_edge_attr(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    u, v = _conv_edge(rng, g, _READS["stride"])
    a = g.edges[u, v]
    if a["op"] in _READS["kernel_size"] and rng.random() < 0.5:
        key, value = rng.choice(
            [
                ("kernel_size", "3"),
                ("kernel_size", 3.0),
                ("kernel_size", 0),
                ("padding", -1),
                ("padding", "same"),
            ]
        )
    elif a["op"] in _READS["kernel_size"] and rng.random() < 0.5:  # the per-axis forms
        key, value = rng.choice(
            [
                ("kernel_size", [3, 0]),
                ("stride", [1, 2, 1]),
                ("padding", [1, "1"]),
                ("dilation", 0),
                ("dilation", [1, 1.5]),
                ("groups", 0),
                ("groups", [1, 1]),
            ]
        )
    else:
        key, value = rng.choice([("stride", 1.5), ("stride", 0), ("stride", "2"), ("stride", True)])
    a[key] = value
    return g, _edge(u, v)


def _m_groups_not_dividing(rng):
    """A conv edge with ``groups`` that does not divide its source's channels."""
    g = _base(rng, inputs=("conv",), merges=("edge",))
    u, v = _conv_edge(rng, g, _READS["groups"])
    g.edges[u, v]["groups"] = _infer_shapes(g)[u][0] + 1
    return g, _edge(u, v)


def _m_missing_kernel(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    u, v = _conv_edge(rng, g, _REQUIRES["kernel_size"])
    del g.edges[u, v]["kernel_size"]
    return g, _edge(u, v)


def _m_missing_op(rng):
    g = _base(rng, merges=("edge",))
    u, v = rng.choice(list(g.edges))
    del g.edges[u, v]["op"]
    return g, _edge(u, v)


def _m_missing_input_shape(rng):
    g = _base(rng)
    del g.nodes["x"]["shape"]
    return g, _q("x")


def _m_bad_input_shape(rng):
    g = _base(rng)
    g.nodes["x"]["shape"] = rng.choice(
        [(3, 8), (0, 4, 4), ("3", 4, 4), (2, -1, 4), "3x8x8", (1, 2, 3, 4), (), 5, (2.0, 4, 4)]
    )
    return g, _q("x")


def _m_input_with_incoming(rng):
    g = _base(rng)
    g.add_node("feeder", channels=1)
    g.add_edge("feeder", "x", op=_SAME)
    return g, _q("x")


def _m_several_sinks(rng):
    g = _base(rng, merges=("edge",))
    shapes = _infer_shapes(g)
    g.graph.pop("output", None)
    sinks = [n for n in _activations(g) if g.out_degree(n) == 0]
    if len(sinks) == 1:
        src = rng.choice([n for n in shapes if n not in sinks])
        g.add_node("extra", **_size_attrs(shapes[src]))
        g.add_edge(src, "extra", op=_SAME)
        sinks.append("extra")
    return g, _q(rng.choice(sinks))


def _m_output_unknown(rng):
    g = _base(rng)
    g.graph["output"] = rng.choice(["nowhere", "x"])
    return g, _q(g.graph["output"])


def _m_dense_into_channels(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    shapes = _infer_shapes(g)
    src = rng.choice(list(shapes))
    g.add_node("flat", channels=4)
    op, attrs = _map_onto(rng, shapes[src], (4,))  # a map onto 4 features, into channels
    g.add_edge(src, "flat", op=op, **attrs)
    g.graph["output"] = "flat"
    return g, _edge(src, "flat")


def _m_conv_from_dense(rng):
    g = _base(rng, inputs=("dense",), ops=_after_vectors())
    src = rng.choice(list(g.nodes))
    g.add_node("img", channels=2)
    g.add_edge(src, "img", op=rng.choice(_maps_only()), kernel_size=3)
    g.graph["output"] = "img"
    return g, _edge(src, "img")


def _m_conv_into_features(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    shapes = _infer_shapes(g)
    src = rng.choice([n for n in shapes if len(shapes[n]) == 3])
    g.add_node("vec", features=5)
    g.add_edge(src, "vec", op=rng.choice(_READS["stride"]), kernel_size=1)
    g.graph["output"] = "vec"
    return g, _edge(src, "vec")


def _m_shortcut_reduces(rng):
    g = _base(rng, inputs=("conv",))
    shapes = _infer_shapes(g)
    wide = [n for n in shapes if len(shapes[n]) == 3 and shapes[n][0] >= 2]
    if wide:
        src = rng.choice(wide)
    else:
        src = "wide"
        g.add_node(src, channels=3)
        g.add_edge(
            rng.choice([n for n in shapes if len(shapes[n]) == 3]), src, op=_KERNEL, kernel_size=1
        )
    g.add_node("narrow", channels=1)
    g.add_edge(src, "narrow", op=_NEVER_REDUCES[0], stride=rng.choice([1, 2]))
    g.graph["output"] = "narrow"
    return g, _edge(src, "narrow")


def _m_not_digraph(rng):
    g = _base(rng)
    kind = rng.choice(["MultiDiGraph", "Graph", "dict"])
    if kind == "MultiDiGraph":
        return nx.MultiDiGraph(g), "MultiDiGraph"
    if kind == "Graph":
        return nx.Graph(g), "Graph"
    return nx.to_dict_of_dicts(g), "dict"


def _m_empty(rng):
    return nx.DiGraph(), "empty"


def _m_only_input(rng):
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, rng.randint(1, 5), rng.randint(1, 5)))
    return g, _q("x")


def _m_node_op_on_edge_node(rng):
    g = _base(rng, merges=("edge",))
    n = rng.choice(_activations(g))
    g.nodes[n][rng.choice(["kernel_size", "op", "stride", "padding", "dilation", "groups"])] = 3
    return g, _q(n)


def _m_merge_input_without_op(rng):
    g = _base(rng, merges=("input",))
    n = _node_centric(rng, g)
    for key in ("op", "kernel_size", "stride", "padding", "dilation", "groups"):
        g.nodes[n].pop(key, None)
    return g, _q(n)


def _m_unknown_merge(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n]["merge"] = rng.choice(["node", "sum", "concat", True])
    return g, _q(n)


def _m_size_on_edge_centric_edge(rng):
    g = _base(rng, merges=("edge",))
    u, v = rng.choice(list(g.edges))
    g.edges[u, v][rng.choice(["channels", "features"])] = 2
    return g, _edge(u, v)


def _m_unknown_node_attribute(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n][rng.choice(["chanels", "width", "activation", "Bias"])] = 1
    return g, _q(n)


def _m_unknown_edge_attribute(rng):
    g = _base(rng)
    u, v = rng.choice(list(g.edges))
    g.edges[u, v][rng.choice(["kernal_size", "weight", "group", "dilations"])] = 1
    return g, _edge(u, v)


def _m_node_centric_needs_size(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    shapes = _infer_shapes(g)
    src = rng.choice([n for n in shapes if len(shapes[n]) == 3])
    g.add_node("nc", channels=2, merge="input", op=_KERNEL, kernel_size=1)
    g.add_edge(src, "nc", op=rng.choice(_sized_kinds(shapes[src])), kernel_size=1)
    g.graph["output"] = "nc"
    return g, _edge(src, "nc")


def _m_bad_batchnorm(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n]["batchnorm"] = rng.choice(["yes", 1, None, "False"])
    return g, _q(n)


def _m_name_collision(rng):
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(3,))
    g.add_node(1, features=3)
    g.add_node("1", features=3)
    g.add_edge("x", 1, op=_SAME)
    g.add_edge(1, "1", op=_SAME)
    return g, "distinct"


MALFORMED: dict[str, Callable[[random.Random], tuple[Any, str]]] = {
    "cycle": _m_cycle,
    "self_loop": _m_self_loop,
    "no_input": _m_no_input,
    "two_inputs": _m_two_inputs,
    "unknown_edge_op": _m_unknown_edge_op,
    "unknown_node_op": _m_unknown_node_op,
    "op_not_a_string": _m_op_not_string,
    "unknown_node_kind": _m_unknown_kind,
    "missing_channels_or_features": _m_missing_size,
    "both_channels_and_features": _m_both_sizes,
    "bad_channels_or_features": _m_bad_size_type,
    "shape_mismatch_at_merge": _m_merge_mismatch,
    "map_shrunk_to_nothing": _m_shrunk,
    "negative_bias": _m_negative_bias,
    "bad_bias": _m_bad_bias,
    "identity_between_different_shapes": _m_identity_mismatch,
    "unreachable_node": _m_unreachable,
    "bad_edge_attribute": _m_bad_edge_attr,
    "groups_not_dividing_channels": _m_groups_not_dividing,
    "missing_kernel_size": _m_missing_kernel,
    "missing_op": _m_missing_op,
    "missing_input_shape": _m_missing_input_shape,
    "bad_input_shape": _m_bad_input_shape,
    "input_with_incoming_edge": _m_input_with_incoming,
    "several_sinks": _m_several_sinks,
    "output_not_an_activation": _m_output_unknown,
    "dense_into_channels": _m_dense_into_channels,
    "conv_from_dense_source": _m_conv_from_dense,
    "conv_into_features": _m_conv_into_features,
    "shortcut_reduces_channels": _m_shortcut_reduces,
    "not_a_digraph": _m_not_digraph,
    "empty_graph": _m_empty,
    "only_the_input": _m_only_input,
    "node_op_on_edge_centric_node": _m_node_op_on_edge_node,
    "merge_input_without_op": _m_merge_input_without_op,
    "unknown_merge": _m_unknown_merge,
    "size_on_edge_centric_edge": _m_size_on_edge_centric_edge,
    "unknown_node_attribute": _m_unknown_node_attribute,
    "unknown_edge_attribute": _m_unknown_edge_attribute,
    "node_centric_edge_without_size": _m_node_centric_needs_size,
    "bad_batchnorm": _m_bad_batchnorm,
    "names_collide_as_strings": _m_name_collision,
}
MALFORMED_KINDS = tuple(MALFORMED)
"""Names of the corruptions :func:`random_malformed` draws from."""


def random_malformed(rng: random.Random | None = None, kind: str | None = None) -> tuple[Any, str]:
    """Draw one malformed architecture and the fragment its error message must contain.

    A valid graph from :func:`random_architecture` (string node names) is
    broken in one way (or, for the structural cases, a small broken graph is
    built directly). Validation must raise :class:`deepframe.ArchitectureError`
    whose message contains the fragment, in most cases the culprit's name as
    ``repr(node)`` or ``"'u' -> 'v'"`` for an edge.

    Parameters
    ----------
    rng : random.Random, optional
    kind : str, optional
        One of :data:`MALFORMED_KINDS`; drawn at random when omitted.

    Returns
    -------
    (graph, fragment)
        ``graph`` is usually a ``networkx.DiGraph``; the ``not_a_digraph`` kind
        also yields other graph types and a plain dict.
    """
    rng = random.Random(0) if rng is None else rng
    if kind is None:
        kind = rng.choice(MALFORMED_KINDS)
    if kind not in MALFORMED:
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
    return MALFORMED[kind](rng)


# --------------------------------------------------------------------------
# shapes of a (valid) generated graph, for the corruptions
# --------------------------------------------------------------------------
def _infer_shapes(g: nx.DiGraph) -> dict:
    """Shapes of a graph that :func:`random_architecture` drew (validated copy)."""
    h = validate(g)
    return {n: tuple(a["shape"]) for n, a in h.nodes(data=True)}
