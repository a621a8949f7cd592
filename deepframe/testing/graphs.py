"""Plain random generators of valid architecture graphs.

The engine behind :func:`deepframe.testing.architectures` (and the graphs
that :mod:`deepframe.testing.malformed` corrupts). It takes a
:class:`random.Random` (or anything with its ``randint`` / ``random`` /
``choice`` / ``shuffle`` methods, such as the one
``hypothesis.strategies.randoms()`` draws) and returns a plain,
*unvalidated* :class:`networkx.DiGraph`, so that a seeded loop
(``random_architecture(random.Random(seed))``) reproduces a graph exactly
without hypothesis installed; ``analysis/stress_graphs.py`` does so.

Which operators exist and how each is drawn is the registry's
(:data:`deepframe.ops.EDGE_KINDS`: :meth:`~deepframe.ops.Operator.draw`,
:meth:`~deepframe.ops.Operator.between`, :attr:`~deepframe.ops.Operator.draw_weights`,
:meth:`~deepframe.ops.Operator.default_size`), so a newly registered edge kind
is drawn without a change here. The drawing hooks compute every output shape
with their own arithmetic (conv ``floor((H + 2p - k) / s) + 1``, 1x1 maps
``ceil(H / s)``), not with the shape rules, and the generator only joins
contributions whose shapes agree, so every graph it returns must pass
:func:`deepframe.validate`; a graph that does not is a bug in one of the two.
(:func:`deepframe.testing.assert_shapes_match_torch` checks the inferred
shapes against torch itself.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import networkx as nx

from .. import ops
from ..graph import EDGE_OPS
from ..graph import MERGES as GRAPH_MERGES
from ..ops import EDGE_KINDS

__all__ = ["OPS", "MERGES", "INPUTS", "random_architecture"]

OPS = EDGE_OPS
"""Edge and node operator kinds (docs/concepts.md)."""
MERGES = GRAPH_MERGES
"""``"edge"``: edge-centric nodes (the default); ``"input"``: node-centric (Eq. 16)."""
INPUTS = ("conv", "dense")
"""Input kinds (not edge kinds): an image ``(C, H, W)`` or a vector ``(d,)``."""

#: The kind of an edge that names no "op" (an edge into a node-centric node), which maps
#: every shape onto itself unchanged: the registry's.
DEFAULT_EDGE_KIND = ops.DEFAULT_EDGE_KIND

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
            # no allowed kind is ever drawn after a vector (draw_weights[1] == 0 for all)
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
    if len(order) == 1:  # nothing could follow the input: a node the default edge keeps as is
        g.add_node("a0", **_size_attrs(in_shape))
        g.add_edge("x", "a0", op=DEFAULT_EDGE_KIND)
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
        edge_ops = tuple(dict.fromkeys((*cfg.ops, DEFAULT_EDGE_KIND)))  # in a fixed order
        default_only = (DEFAULT_EDGE_KIND,)
        drawn = _draw_op(rng, cfg, shapes[main], edge_ops if rng.random() < 0.4 else default_only)
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
    """Attributes of an edge of kind ``op`` from ``src`` onto a node-centric node's input ``z``.

    The default edge kind sometimes names its ``op``, sometimes its size; any other
    kind names its ``op``, and its size unless the kind's own default
    (:meth:`~deepframe.ops.Operator.default_size` of ``src``) is ``z``'s, then
    only sometimes.
    """
    out = dict(attrs)
    if op == DEFAULT_EDGE_KIND:
        if rng.random() < 0.5:
            out["op"] = op
        if rng.random() < 0.3:
            out.update(_size_attrs(z))
        return out
    out["op"] = op
    size = next(iter(_size_attrs(z).items()))
    if EDGE_KINDS[op].default_size(src) != size or rng.random() < 0.5:
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
