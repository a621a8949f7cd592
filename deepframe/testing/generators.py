"""Plain random generators of architecture graphs, valid and malformed.

These are the engines behind the hypothesis strategies of
:mod:`deepframe.testing.strategies`. They take a :class:`random.Random`
(or anything with its ``randint`` / ``random`` / ``choice`` / ``shuffle``
methods, such as the one ``hypothesis.strategies.randoms()`` draws) and
return plain, *unvalidated* :class:`networkx.DiGraph` objects, so that a
seeded loop (``random_architecture(random.Random(seed))``) reproduces a graph
exactly without hypothesis installed; ``analysis/stress_graphs.py`` does so.

Which operators exist and how each is drawn is the registry's
(:data:`deepframe.ops.EDGE_KINDS`: :meth:`~deepframe.ops.Operator.draw`,
:meth:`~deepframe.ops.Operator.between`, :attr:`~deepframe.ops.Operator.draw_weights`),
so a newly registered edge kind is drawn without a change here. The drawing
hooks compute every output shape with their own arithmetic (conv
``floor((H + 2p - k) / s) + 1``, 1x1 maps ``ceil(H / s)``), not with the shape
rules, and the generator only joins contributions whose shapes agree, so every
graph it returns must pass :func:`deepframe.validate`; a graph that does not is
a bug in one of the two. (:func:`deepframe.testing.assert_shapes_match_torch`
checks the inferred shapes against torch itself.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import networkx as nx

from ..graph import EDGE_OPS, validate
from ..graph import MERGES as GRAPH_MERGES
from ..ops import EDGE_KINDS

__all__ = [
    "OPS",
    "MERGES",
    "INPUTS",
    "MALFORMED_KINDS",
    "random_architecture",
    "random_malformed",
]

OPS = EDGE_OPS
"""Edge and node operator kinds (docs/concepts.md)."""
MERGES = GRAPH_MERGES
"""``"edge"``: edge-centric nodes (the default); ``"input"``: node-centric (Eq. 16)."""
INPUTS = ("conv", "dense")
"""Input kinds: an image ``(C, H, W)`` or a vector ``(d,)``."""

Shape = tuple[int, ...]


class _Config:
    """The generator's knobs, checked once."""

    def __init__(
        self,
        ops,
        merges,
        inputs,
        max_nodes,
        max_size,
        max_channels,
        max_features,
        max_atoms,
        kernel_sizes,
        strides,
        skip_probability,
        node_attributes,
        int_names,
    ):
        self.ops = tuple(ops)
        self.merges = tuple(merges)
        self.inputs = tuple(inputs)
        for value, allowed, what in (
            (self.ops, tuple(EDGE_KINDS), "ops"),
            (self.merges, MERGES, "merges"),
            (self.inputs, INPUTS, "inputs"),
        ):
            if not value or not set(value) <= set(allowed):
                raise ValueError(f"{what} must be a non-empty subset of {allowed}, got {value}")
        if not any(EDGE_KINDS[op].draw_weights[1] for op in self.ops):
            # no allowed kind follows a vector (dense, identity or dense project do)
            self.inputs = tuple(i for i in self.inputs if i != "dense")
            if not self.inputs:
                raise ValueError(f"ops {self.ops} cannot follow a dense input; allow 'conv' inputs")
        if max_nodes < 1 or max_size < 1 or max_channels < 1 or max_features < 1:
            raise ValueError("max_nodes, max_size, max_channels and max_features must be >= 1")
        self.max_nodes = int(max_nodes)
        self.max_size = int(max_size)
        self.max_channels = int(max_channels)
        self.max_features = int(max_features)
        self.max_atoms = int(max_atoms)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.strides = tuple(int(s) for s in strides)
        if not self.kernel_sizes or min(self.kernel_sizes) < 1:
            raise ValueError(f"kernel_sizes must be positive, got {kernel_sizes}")
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f"strides must be positive, got {strides}")
        self.skip_probability = float(skip_probability)
        self.node_attributes = bool(node_attributes)
        self.int_names = bool(int_names)


# --------------------------------------------------------------------------
# one operator from a source shape
# --------------------------------------------------------------------------
def _weighted_order(rng, weights: dict[str, float]) -> list[str]:
    """The keys of ``weights`` in a random order, heavier keys earlier on average."""
    left = dict(weights)
    order = []
    while left:
        keys = list(left)
        u = rng.random() * sum(left.values())
        chosen = keys[-1]
        for key in keys:
            u -= left[key]
            if u < 0:
                chosen = key
                break
        order.append(chosen)
        del left[chosen]
    return order


def _draw_op(rng, cfg: _Config, src: Shape, allowed: Sequence[str]):
    """Draw an operator applicable to ``src``: ``(op, attrs, out_shape)`` or ``None``.

    Kinds are tried in a random order weighted by their
    :attr:`~deepframe.ops.Operator.draw_weights` (conv maps dominate real
    networks, and a dense edge from a conv source ends the conv part of the
    graph); the first whose :meth:`~deepframe.ops.Operator.draw` succeeds wins.
    ``attrs`` are the operator's own attributes (``kernel_size``, ``stride``,
    ``padding``); the output size (``channels``/``features``) is in ``out_shape``.
    """
    column = 0 if len(src) == 3 else 1
    weights = {op: EDGE_KINDS[op].draw_weights[column] for op in allowed}
    for op in _weighted_order(rng, {op: w for op, w in weights.items() if w}):
        drawn = EDGE_KINDS[op].draw(rng, src, cfg)
        if drawn is not None:
            attrs, shape = drawn
            return op, attrs, shape
    return None


def _ops_between(rng, cfg: _Config, src: Shape, dst: Shape, allowed: Sequence[str]) -> list:
    """Every way (within ``allowed``) to map ``src`` onto exactly ``dst``: ``[(op, attrs)]``."""
    return [
        (op, attrs)
        for op in EDGE_KINDS
        if op in allowed
        for attrs in EDGE_KINDS[op].between(rng, src, dst, cfg)
    ]


def _size_attrs(shape: Shape) -> dict[str, int]:
    return {"channels": shape[0]} if len(shape) == 3 else {"features": shape[0]}


# --------------------------------------------------------------------------
# valid architectures
# --------------------------------------------------------------------------
def _names(rng, cfg: _Config, count: int) -> list:
    """Distinct node names; string order need not follow creation order."""
    pool: set = set()
    names: list = []
    while len(names) < count:
        if cfg.int_names and rng.random() < 0.3:
            name: Any = rng.randint(0, 99)
        else:
            name = rng.choice("abcdfghjkmnpqrstuvwyz") + str(rng.randint(0, 12))
        if str(name) not in pool and str(name) != "x":
            pool.add(str(name))
            names.append(name)
    return names


def random_architecture(
    rng: random.Random | None = None,
    *,
    ops: Sequence[str] = OPS,
    merges: Sequence[str] = MERGES,
    inputs: Sequence[str] = INPUTS,
    max_nodes: int = 5,
    max_size: int = 8,
    max_channels: int = 4,
    max_features: int = 12,
    max_atoms: int = 2000,
    kernel_sizes: Sequence[int] = (1, 3, 5),
    strides: Sequence[int] = (1, 2),
    skip_probability: float = 0.5,
    node_attributes: bool = True,
    int_names: bool = True,
) -> nx.DiGraph:
    """Draw one valid architecture graph (unvalidated, shapes not annotated).

    Every activation node gets one *main* incoming edge (an operator drawn from
    ``ops`` that fixes its shape) from a random earlier node, then skip edges
    from other earlier nodes whose shapes some allowed operator maps onto the
    node's exactly (identity, option-A shortcut, 1x1 projection, conv with a
    matching kernel/stride/padding, dense). A node is edge-centric or, with
    ``merge="input"``, node-centric: the edges then map onto the node's merged
    input ``z_j`` (parametrised edges carry ``channels``/``features``) and the
    node's own ``op`` analyses it.

    Parameters
    ----------
    rng : random.Random, optional
        Source of randomness; ``random.Random(0)`` when omitted. A
        ``hypothesis.strategies.randoms()`` object makes hypothesis shrink
        failing graphs.
    ops : subset of :data:`OPS`
        Operator kinds on edges and node-centric nodes.
    merges : subset of :data:`MERGES`
        Node forms to draw.
    inputs : subset of :data:`INPUTS`
        Input kinds (``"dense"`` is dropped when ``ops`` cannot follow it).
    max_nodes : int
        Activation nodes, drawn from ``1 .. max_nodes``.
    max_size, max_channels, max_features : int
        Bounds on spatial size (height and width drawn independently, odd and
        even), channels and features.
    max_atoms : int
        Stop adding nodes once ``D`` would have more atoms (columns) than this.
    kernel_sizes, strides : sequences of int
        Conv kernels (padding drawn from ``0 .. k`` or the default ``k // 2``)
        and strides.
    skip_probability : float
        Chance of trying a skip edge from each earlier node.
    node_attributes : bool
        Also draw optional ``bias`` (scalar or per channel) and ``batchnorm``.
    int_names : bool
        Also use integer node names (column order is by ``str(name)``).

    Returns
    -------
    networkx.DiGraph
        Plain, unvalidated; pass it to :func:`deepframe.validate` or
        :func:`deepframe.dictionary`. When it has several sinks the graph
        attribute ``output`` names one.
    """
    rng = random.Random(0) if rng is None else rng
    cfg = _Config(
        ops,
        merges,
        inputs,
        max_nodes,
        max_size,
        max_channels,
        max_features,
        max_atoms,
        kernel_sizes,
        strides,
        skip_probability,
        node_attributes,
        int_names,
    )
    g = nx.DiGraph()
    if "dense" not in cfg.inputs or ("conv" in cfg.inputs and rng.random() < 0.65):
        in_shape: Shape = (
            rng.randint(1, min(3, cfg.max_channels)),
            rng.randint(1, cfg.max_size),
            rng.randint(1, cfg.max_size),
        )
    else:
        in_shape = (rng.randint(1, cfg.max_features),)
    g.add_node("x", kind="input", shape=in_shape)
    shapes: dict[Any, Shape] = {"x": in_shape}
    order: list = ["x"]
    atoms = 0
    count = rng.randint(1, cfg.max_nodes)
    for name in _names(rng, cfg, count):
        merge = rng.choice(cfg.merges)
        added = _add_node(rng, cfg, g, shapes, order, name, merge)
        if added is None and merge == "input":
            added = _add_node(rng, cfg, g, shapes, order, name, "edge")
        if added is None:
            continue
        size = math.prod(shapes[name])
        if order[1:] and atoms + size > cfg.max_atoms:
            g.remove_node(name)
            del shapes[name]
            break
        atoms += size
        order.append(name)
    if len(order) == 1:  # nothing could follow the input: fall back to an identity node
        g.add_node("a0", **_size_attrs(in_shape))
        g.add_edge("x", "a0", op="identity")
        order.append("a0")
    sinks = [n for n in order[1:] if g.out_degree(n) == 0]
    if len(sinks) > 1 or rng.random() < 0.1:
        g.graph["output"] = rng.choice(sinks)
    return g


def _pick_main(rng, order: list):
    """The main predecessor: usually the newest node, sometimes any earlier one."""
    return order[-1] if rng.random() < 0.6 else rng.choice(order)


def _add_node(
    rng, cfg: _Config, g: nx.DiGraph, shapes: dict, order: list, name, merge: str
) -> Shape | None:
    main = _pick_main(rng, order)
    others = [q for q in order if q != main]
    if merge == "edge":
        drawn = _draw_op(rng, cfg, shapes[main], cfg.ops)
        if drawn is None:
            return None
        op, attrs, shape = drawn
        g.add_node(name, **_size_attrs(shape))
        g.add_edge(main, name, op=op, **attrs)
        for q in others:
            if rng.random() < cfg.skip_probability / max(1, len(others) ** 0.5):
                options = _ops_between(rng, cfg, shapes[q], shape, cfg.ops)
                if options:
                    e_op, e_attrs = rng.choice(options)
                    g.add_edge(q, name, op=e_op, **e_attrs)
    else:
        edge_ops = tuple(set(cfg.ops) | {"identity"})  # identity is the default edge
        drawn = _draw_op(rng, cfg, shapes[main], edge_ops if rng.random() < 0.4 else ("identity",))
        if drawn is None:
            return None
        e_op, e_attrs, z = drawn
        node_drawn = _draw_op(rng, cfg, z, cfg.ops)
        if node_drawn is None:
            return None
        op, attrs, shape = node_drawn
        g.add_node(name, **_size_attrs(shape), merge="input", op=op, **attrs)
        g.add_edge(main, name, **_node_centric_edge(rng, e_op, e_attrs, z, shapes[main]))
        for q in others:
            if rng.random() < cfg.skip_probability / max(1, len(others) ** 0.5):
                options = _ops_between(rng, cfg, shapes[q], z, edge_ops)
                if options:
                    q_op, q_attrs = rng.choice(options)
                    g.add_edge(q, name, **_node_centric_edge(rng, q_op, q_attrs, z, shapes[q]))
    if cfg.node_attributes:
        _draw_node_attributes(rng, g.nodes[name], shape)
    shapes[name] = shape
    return shape


def _node_centric_edge(rng, op: str, attrs: dict, z: Shape, src: Shape) -> dict:
    """Attributes of an edge into a node-centric node (default op: identity)."""
    out = dict(attrs)
    if op == "identity":
        if rng.random() < 0.5:
            out["op"] = "identity"
        if rng.random() < 0.3:
            out.update(_size_attrs(z))
        return out
    out["op"] = op
    if op != "shortcut" or z[0] != src[0] or rng.random() < 0.5:
        out.update(_size_attrs(z))
    return out


def _draw_node_attributes(rng, attrs: dict, shape: Shape) -> None:
    u = rng.random()
    if u < 0.3:
        attrs["bias"] = rng.choice([0, 0.0, 0.1, 0.5, 1])
    elif u < 0.45:
        attrs["bias"] = [rng.choice([0.0, 0.05, 0.2]) for _ in range(shape[0])]
    if rng.random() < 0.3:
        attrs["batchnorm"] = rng.random() < 0.5


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


def _m_cycle(rng):
    g = _base(rng, max_nodes=4)
    acts = _activations(g)
    pairs = [(b, a) for b in acts for a in nx.ancestors(g, b) if a != "x"]
    if not pairs:  # a chain of two activation nodes always has one
        a, b = acts[0], "cyc"
        g.add_node(b, **{k: v for k, v in g.nodes[a].items() if k in ("channels", "features")})
        g.add_edge(a, b, op="identity")
        pairs = [(b, a)]
    b, a = rng.choice(pairs)
    g.add_edge(b, a, op="identity")
    return g, _q(a)


def _m_self_loop(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.add_edge(n, n, op="identity")
    return g, _q(n)


def _m_no_input(rng):
    g = _base(rng)
    del g.nodes["x"]["kind"]
    return g, "no input node"


def _m_two_inputs(rng):
    g = _base(rng)
    g.add_node("x2", kind="input", shape=g.nodes["x"]["shape"])
    if rng.random() < 0.5:
        g.add_edge("x2", rng.choice(_activations(g)), op="identity")
    return g, _q("x2")


def _m_unknown_edge_op(rng):
    g = _base(rng)
    u, v = rng.choice(list(g.edges))
    g.edges[u, v]["op"] = rng.choice(["conv3d", "Conv", "relu", "linear", ""])
    return g, _edge(u, v)


def _node_centric(rng, g: nx.DiGraph):
    """A node-centric node of ``g``, added (identity edge and op from the input) if none."""
    found = [m for m in _activations(g) if g.nodes[m].get("merge") == "input"]
    if found:
        return rng.choice(found)
    shape = g.nodes["x"]["shape"]
    g.add_node("nc", **_size_attrs(shape), merge="input", op="identity")
    g.add_edge("x", "nc")
    g.graph["output"] = "nc"
    return "nc"


def _m_unknown_node_op(rng):
    g = _base(rng, merges=("input",))
    n = _node_centric(rng, g)
    g.nodes[n]["op"] = rng.choice(["pool", "Conv", "linear"])
    return g, _q(n)


def _m_op_not_string(rng):
    g = _base(rng)
    u, v = rng.choice(list(g.edges))
    g.edges[u, v]["op"] = rng.choice([3, None, ["conv"]])
    return g, _edge(u, v)


def _m_unknown_kind(rng):
    g = _base(rng)
    n = rng.choice(_activations(g))
    g.nodes[n]["kind"] = rng.choice(["hidden", "Input", "output", "conv"])
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
                    g.add_edge(q, j, op="conv", kernel_size=k, stride=s, padding=p)
                    return g, _q(j)
    # no candidate: a new node fed a (C, H, W) and a (C, H + 2, W + 2) map
    g.add_node("m1", channels=1)
    g.add_edge("x", "m1", op="conv", kernel_size=1)
    g.add_node("m2", channels=2)
    g.add_edge("x", "m2", op="conv", kernel_size=1)
    g.add_edge("m1", "m2", op="conv", kernel_size=3, padding=2)
    g.graph["output"] = "m2"
    return g, _q("m2")


def _m_shrunk(rng):
    g = _base(rng, inputs=("conv",))
    shapes = _infer_shapes(g)
    src = rng.choice([n for n in shapes if len(shapes[n]) == 3])
    h = min(shapes[src][1:])
    g.add_node("tiny", channels=2)
    if rng.random() < 0.5:
        g.add_edge(src, "tiny", op="conv", kernel_size=h + 3, padding=0)
    else:
        g.add_edge(src, "tiny", op="conv", kernel_size=h + 2, padding=0, stride=2)
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
    else:  # every node has the input's shape: feed one from a new, wider dense node
        j = rng.choice(_activations(g))
        q = "wide"
        g.add_node(q, features=shapes[j][0] + 1)
        g.add_edge("x", q, op="dense")
    g.add_edge(q, j, op="identity")
    return g, _edge(q, j)


def _m_unreachable(rng):
    g = _base(rng)
    j = rng.choice(_activations(g))
    g.add_node("orphan", channels=1)
    if rng.random() < 0.5:
        g.add_edge("orphan", j, op="identity")
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
    u, v = _conv_edge(rng, g, ("conv", "project", "shortcut"))
    a = g.edges[u, v]
    if a["op"] == "conv" and rng.random() < 0.5:
        key, value = rng.choice(
            [
                ("kernel_size", "3"),
                ("kernel_size", 3.0),
                ("kernel_size", 0),
                ("padding", -1),
                ("padding", "same"),
            ]
        )
    else:
        key, value = rng.choice([("stride", 1.5), ("stride", 0), ("stride", "2"), ("stride", True)])
    a[key] = value
    return g, _edge(u, v)


def _m_missing_kernel(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    u, v = _conv_edge(rng, g, ("conv",))
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
    g.add_edge("feeder", "x", op="identity")
    return g, _q("x")


def _m_several_sinks(rng):
    g = _base(rng, merges=("edge",))
    shapes = _infer_shapes(g)
    g.graph.pop("output", None)
    sinks = [n for n in _activations(g) if g.out_degree(n) == 0]
    if len(sinks) == 1:
        src = rng.choice([n for n in shapes if n not in sinks])
        g.add_node("extra", **_size_attrs(shapes[src]))
        g.add_edge(src, "extra", op="identity")
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
    g.add_edge(src, "flat", op="dense")
    g.graph["output"] = "flat"
    return g, _edge(src, "flat")


def _m_conv_from_dense(rng):
    g = _base(rng, inputs=("dense",), ops=("dense", "identity"))
    src = rng.choice(list(g.nodes))
    g.add_node("img", channels=2)
    g.add_edge(src, "img", op=rng.choice(["conv", "shortcut"]), kernel_size=3)
    g.graph["output"] = "img"
    return g, _edge(src, "img")


def _m_conv_into_features(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    shapes = _infer_shapes(g)
    src = rng.choice([n for n in shapes if len(shapes[n]) == 3])
    g.add_node("vec", features=5)
    g.add_edge(src, "vec", op=rng.choice(["conv", "project", "shortcut"]), kernel_size=1)
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
            rng.choice([n for n in shapes if len(shapes[n]) == 3]), src, op="conv", kernel_size=1
        )
    g.add_node("narrow", channels=1)
    g.add_edge(src, "narrow", op="shortcut", stride=rng.choice([1, 2]))
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
    g.nodes[n][rng.choice(["kernel_size", "op", "stride", "padding"])] = 3
    return g, _q(n)


def _m_merge_input_without_op(rng):
    g = _base(rng, merges=("input",))
    n = _node_centric(rng, g)
    for key in ("op", "kernel_size", "stride", "padding"):
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
    g.edges[u, v][rng.choice(["kernal_size", "weight", "groups", "dilation"])] = 1
    return g, _edge(u, v)


def _m_node_centric_needs_size(rng):
    g = _base(rng, inputs=("conv",), merges=("edge",))
    shapes = _infer_shapes(g)
    src = rng.choice([n for n in shapes if len(shapes[n]) == 3])
    g.add_node("nc", channels=2, merge="input", op="conv", kernel_size=1)
    g.add_edge(src, "nc", op=rng.choice(["conv", "project", "dense"]), kernel_size=1)
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
    g.add_edge("x", 1, op="identity")
    g.add_edge(1, "1", op="identity")
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
