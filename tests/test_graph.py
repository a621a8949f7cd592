"""Architecture graphs: validation errors, shape inference, builders, JSON and specs."""

from __future__ import annotations

import json
import math
import os
import traceback

import networkx as nx
import pytest

import deepframe as df
from deepframe.graph import activation_nodes, from_spec, output_node
from deepframe.testing import assert_shapes_match_torch, torch_forward


# --------------------------------------------------------------------------
# small valid graphs to break
# --------------------------------------------------------------------------
def conv_graph() -> nx.DiGraph:
    """``x (1, 6, 6) -conv-> a (2) -conv-> b (2)`` plus an identity skip ``a -> b``."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 6, 6))
    g.add_node("a", channels=2)
    g.add_node("b", channels=2)
    g.add_edge("x", "a", op="conv", kernel_size=3)
    g.add_edge("a", "b", op="conv", kernel_size=3)
    return g


def dense_graph() -> nx.DiGraph:
    """``x (5,) -dense-> h (4) -dense-> o (3)``."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(5,))
    g.add_node("h", features=4)
    g.add_node("o", features=3)
    g.add_edge("x", "h", op="dense")
    g.add_edge("h", "o", op="dense")
    return g


def node_centric_graph() -> nx.DiGraph:
    """Seed-paper form: ``x -> a -> b`` with conv ops on the nodes, identity edges."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 6, 6))
    g.add_node("a", channels=2, merge="input", op="conv", kernel_size=3, stride=2)
    g.add_node("b", channels=2, merge="input", op="conv", kernel_size=3)
    g.add_edge("x", "a")
    g.add_edge("a", "b")
    return g


def _edit(base, change):
    def build():
        g = base()
        change(g)  # edits in place
        return g

    return build


def _set_node(name, **attrs):
    return lambda g: g.nodes[name].update(attrs)


def _set_edge(u, v, **attrs):
    return lambda g: g.edges[u, v].update(attrs)


def _del_node_attr(name, key):
    return lambda g: g.nodes[name].pop(key)


def _del_edge_attr(u, v, key):
    return lambda g: g.edges[u, v].pop(key)


def _add(*, nodes=(), edges=(), graph=None):
    def change(g):
        for name, attrs in nodes:
            g.add_node(name, **attrs)
        for u, v, attrs in edges:
            g.add_edge(u, v, **attrs)
        g.graph.update(graph or {})

    return change


def _only_input():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 4, 4))
    return g


def _colliding_names():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(3,))
    g.add_node(1, features=3)
    g.add_node("1", features=3)
    g.add_edge("x", 1, op="identity")
    g.add_edge(1, "1", op="identity")
    return g


def _stride_shrinks():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 2, 2))
    g.add_node("a", channels=1)
    g.add_edge("x", "a", op="conv", kernel_size=3, stride=2, padding=0)
    return g


def _node_centric_mismatch():
    g = node_centric_graph()  # a: (2, 3, 3); x: (1, 6, 6)
    g.add_edge("x", "b")
    return g


# (id, graph builder, fragments the message must contain)
MALFORMED = [
    (
        "cycle",
        _edit(conv_graph, _add(edges=[("b", "a", {"op": "identity"})])),
        ["cycle", "'a'", "'b'"],
    ),
    (
        "self-loop",
        _edit(conv_graph, _add(edges=[("a", "a", {"op": "identity"})])),
        ["self-loop", "'a'"],
    ),
    ("no input", _edit(conv_graph, _del_node_attr("x", "kind")), ["no input node"]),
    (
        "two inputs",
        _edit(
            conv_graph,
            _add(
                nodes=[("x2", {"kind": "input", "shape": (1, 6, 6)})],
                edges=[("x2", "a", {"op": "conv", "kernel_size": 3})],
            ),
        ),
        ["several input nodes", "'x2'"],
    ),
    (
        "unknown op",
        _edit(conv_graph, _set_edge("x", "a", op="conv3d")),
        ["'x' -> 'a'", "unknown op", "conv3d"],
    ),
    ("op not a string", _edit(conv_graph, _set_edge("x", "a", op=3)), ["'x' -> 'a'", "'op'"]),
    (
        "unknown node op",
        _edit(node_centric_graph, _set_node("b", op="pool")),
        ["node 'b'", "unknown op", "pool"],
    ),
    ("unknown node kind", _edit(conv_graph, _set_node("a", kind="hidden")), ["node 'a'", "hidden"]),
    (
        "missing channels",
        _edit(conv_graph, _del_node_attr("a", "channels")),
        ["node 'a'", "channels", "features"],
    ),
    (
        "missing features",
        _edit(dense_graph, _del_node_attr("o", "features")),
        ["node 'o'", "features"],
    ),
    (
        "channels and features",
        _edit(conv_graph, _set_node("b", features=3)),
        ["node 'b'", "not both"],
    ),
    (
        "shape mismatch at a merge",
        _edit(
            conv_graph,
            lambda g: (
                _set_edge("x", "a", stride=2)(g),
                g.add_edge("x", "b", op="conv", kernel_size=3),
            ),
        ),
        ["node 'b'", "mismatch", "(2, 3, 3)", "(2, 6, 6)"],
    ),
    (
        "shape mismatch at a node-centric merge",
        _node_centric_mismatch,
        ["node 'b'", "mismatch", "(2, 3, 3)", "(1, 6, 6)"],
    ),
    (
        "kernel shrinks the map to nothing",
        _edit(conv_graph, _set_edge("x", "a", kernel_size=9, padding=1)),
        ["'x' -> 'a'", "nothing"],
    ),
    ("stride shrinks the map to nothing", _stride_shrinks, ["'x' -> 'a'", "nothing"]),
    ("negative bias", _edit(conv_graph, _set_node("b", bias=-0.5)), ["node 'b'", "-0.5"]),
    (
        "negative bias entry",
        _edit(conv_graph, _set_node("b", bias=[0.1, -1.0])),
        ["node 'b'", "-1.0"],
    ),
    ("NaN bias", _edit(conv_graph, _set_node("a", bias=float("nan"))), ["node 'a'", "nan"]),
    ("infinite bias", _edit(dense_graph, _set_node("h", bias=float("inf"))), ["node 'h'", "inf"]),
    (
        "bias of the wrong length",
        _edit(conv_graph, _set_node("a", bias=[0.1, 0.2, 0.3])),
        ["node 'a'", "3 entries"],
    ),
    ("bias not a number", _edit(conv_graph, _set_node("a", bias="0.1")), ["node 'a'", "bias"]),
    (
        "identity between different channels",
        _edit(
            conv_graph, _add(nodes=[("c", {"channels": 3})], edges=[("b", "c", {"op": "identity"})])
        ),
        ["'b' -> 'c'", "identity"],
    ),
    (
        "identity between different features",
        _edit(dense_graph, _add(edges=[("x", "o", {"op": "identity"})])),
        ["'x' -> 'o'", "identity"],
    ),
    (
        "identity from a conv to a dense node",
        _edit(
            conv_graph,
            _add(
                nodes=[("v", {"features": 2})],
                edges=[("b", "v", {"op": "identity"})],
                graph={"output": "v"},
            ),
        ),
        ["'b' -> 'v'", "identity"],
    ),
    (
        "unreachable node",
        _edit(
            conv_graph, _add(nodes=[("z", {"channels": 2})], edges=[("z", "b", {"op": "identity"})])
        ),
        ["node 'z'", "unreachable"],
    ),
    (
        "kernel_size a string",
        _edit(conv_graph, _set_edge("a", "b", kernel_size="3")),
        ["'a' -> 'b'", "kernel_size", "'3'"],
    ),
    (
        "kernel_size a float",
        _edit(conv_graph, _set_edge("a", "b", kernel_size=3.0)),
        ["'a' -> 'b'", "kernel_size"],
    ),
    (
        "stride a float",
        _edit(conv_graph, _set_edge("x", "a", stride=1.5)),
        ["'x' -> 'a'", "stride", "1.5"],
    ),
    ("stride zero", _edit(conv_graph, _set_edge("x", "a", stride=0)), ["'x' -> 'a'", "stride"]),
    (
        "negative padding",
        _edit(conv_graph, _set_edge("x", "a", padding=-1)),
        ["'x' -> 'a'", "padding"],
    ),
    ("channels a bool", _edit(conv_graph, _set_node("a", channels=True)), ["node 'a'", "channels"]),
    ("channels zero", _edit(conv_graph, _set_node("a", channels=0)), ["node 'a'", "channels"]),
    (
        "batchnorm not a bool",
        _edit(conv_graph, _set_node("a", batchnorm="yes")),
        ["node 'a'", "batchnorm"],
    ),
    ("missing op", _edit(conv_graph, _del_edge_attr("a", "b", "op")), ["'a' -> 'b'", "'op'"]),
    (
        "missing kernel_size",
        _edit(conv_graph, _del_edge_attr("a", "b", "kernel_size")),
        ["'a' -> 'b'", "kernel_size"],
    ),
    ("missing input shape", _edit(conv_graph, _del_node_attr("x", "shape")), ["'x'", "shape"]),
    (
        "input shape of two entries",
        _edit(conv_graph, _set_node("x", shape=(3, 8))),
        ["'x'", "(3, 8)"],
    ),
    (
        "input shape with a zero",
        _edit(conv_graph, _set_node("x", shape=(1, 0, 6))),
        ["'x'", "positive"],
    ),
    ("input shape a string", _edit(conv_graph, _set_node("x", shape="1x6x6")), ["'x'", "1x6x6"]),
    (
        "input with an incoming edge",
        _edit(
            conv_graph,
            _add(nodes=[("feeder", {"channels": 1})], edges=[("feeder", "x", {"op": "identity"})]),
        ),
        ["input node 'x'", "'feeder'"],
    ),
    (
        "several sinks without output",
        _edit(
            conv_graph, _add(nodes=[("c", {"channels": 2})], edges=[("a", "c", {"op": "identity"})])
        ),
        ["2 sinks", "'b'", "'c'", "output"],
    ),
    (
        "output names an unknown node",
        _edit(conv_graph, lambda g: g.graph.update(output="nowhere")),
        ["'nowhere'"],
    ),
    (
        "output names the input",
        _edit(conv_graph, lambda g: g.graph.update(output="x")),
        ["'x'", "output"],
    ),
    (
        "dense op into a channels node",
        _edit(conv_graph, _set_edge("a", "b", op="dense")),
        ["'a' -> 'b'", "dense", "features"],
    ),
    (
        "conv op into a features node",
        _edit(
            conv_graph,
            _add(
                nodes=[("v", {"features": 4})], edges=[("b", "v", {"op": "conv", "kernel_size": 1})]
            ),
        ),
        ["'b' -> 'v'", "channels"],
    ),
    (
        "conv from a dense source",
        _edit(
            dense_graph,
            _add(
                nodes=[("c", {"channels": 2})], edges=[("o", "c", {"op": "conv", "kernel_size": 3})]
            ),
        ),
        ["'o' -> 'c'", "(C, H, W)"],
    ),
    (
        "shortcut from a dense source",
        _edit(
            dense_graph,
            _add(
                nodes=[("c", {"channels": 4})],
                edges=[("h", "c", {"op": "shortcut"})],
                graph={"output": "c"},
            ),
        ),
        ["'h' -> 'c'", "(C, H, W)"],
    ),
    (
        "shortcut reducing channels",
        _edit(
            conv_graph,
            _add(
                nodes=[("s", {"channels": 1})], edges=[("b", "s", {"op": "shortcut", "stride": 2})]
            ),
        ),
        ["'b' -> 's'", "reduce"],
    ),
    (
        "shortcut pad_before beyond the added channels",
        _edit(
            conv_graph,
            _add(
                nodes=[("s", {"channels": 5})],
                edges=[("b", "s", {"op": "shortcut", "stride": 2, "pad_before": 4})],
            ),
        ),
        ["'b' -> 's'", "pad_before=4", "3 channels"],
    ),
    (
        "negative pad_before",
        _edit(
            conv_graph,
            _add(
                nodes=[("s", {"channels": 5})],
                edges=[("b", "s", {"op": "shortcut", "pad_before": -1})],
            ),
        ),
        ["'b' -> 's'", "pad_before", ">= 0"],
    ),
    (
        "project from a dense source into channels",
        _edit(
            dense_graph, _add(nodes=[("c", {"channels": 2})], edges=[("o", "c", {"op": "project"})])
        ),
        ["'o' -> 'c'", "features"],
    ),
    ("a MultiDiGraph", lambda: nx.MultiDiGraph(conv_graph()), ["MultiDiGraph"]),
    ("an undirected Graph", lambda: nx.Graph(conv_graph()), ["got Graph"]),
    ("not a graph", lambda: {"x": {"a": {}}}, ["DiGraph", "dict"]),
    ("empty graph", nx.DiGraph, ["empty"]),
    ("only the input", _only_input, ["only the input", "'x'"]),
    ("unknown merge", _edit(conv_graph, _set_node("a", merge="node")), ["node 'a'", "merge"]),
    (
        "merge=input without a node op",
        _edit(node_centric_graph, _del_node_attr("b", "op")),
        ["node 'b'", "'op'"],
    ),
    (
        "node op on an edge-centric node",
        _edit(conv_graph, _set_node("a", kernel_size=3)),
        ["node 'a'", "kernel_size", "merge='input'"],
    ),
    (
        "channels on an edge into an edge-centric node",
        _edit(conv_graph, _set_edge("a", "b", channels=2)),
        ["'a' -> 'b'", "channels"],
    ),
    (
        "conv edge into a node-centric node without a size",
        _edit(node_centric_graph, _set_edge("a", "b", op="conv", kernel_size=1)),
        ["'a' -> 'b'", "output size"],
    ),
    (
        "identity edge into a node-centric node declaring other channels",
        _edit(node_centric_graph, _set_edge("a", "b", channels=3)),
        ["'a' -> 'b'", "identity"],
    ),
    (
        "unknown node attribute",
        _edit(conv_graph, _set_node("a", chanels=2)),
        ["node 'a'", "chanels"],
    ),
    (
        "unknown edge attribute",
        _edit(conv_graph, _set_edge("x", "a", kernal_size=3)),
        ["'x' -> 'a'", "kernal_size"],
    ),
    ("names that collide as strings", _colliding_names, ["distinct"]),
]


def _no_torch_frames(exc: BaseException) -> None:
    """The error is raised by deepframe, never from inside torch."""
    seen = exc
    while seen is not None:
        for frame in traceback.extract_tb(seen.__traceback__):
            assert f"{os.sep}torch{os.sep}" not in frame.filename, frame
        seen = seen.__cause__ or seen.__context__


@pytest.mark.parametrize(
    ("build", "fragments"), [pytest.param(b, f, id=i) for i, b, f in MALFORMED]
)
def test_malformed_graph_raises_architecture_error(build, fragments):
    with pytest.raises(df.ArchitectureError) as info:
        df.validate(build())
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert isinstance(info.value, ValueError)
    _no_torch_frames(info.value)


@pytest.mark.parametrize(
    ("build", "fragments"), [pytest.param(b, f, id=i) for i, b, f in MALFORMED]
)
def test_malformed_graph_fails_before_any_tensor_work(build, fragments):
    with pytest.raises(df.ArchitectureError) as info:
        df.dictionary(build())
    assert fragments[0] in str(info.value)
    _no_torch_frames(info.value)


def test_table_is_large_and_distinct():
    assert len(MALFORMED) >= 20
    assert len({i for i, _, _ in MALFORMED}) == len(MALFORMED)


def test_builders_of_the_table_are_valid_before_breaking():
    for build in (conv_graph, dense_graph, node_centric_graph):
        df.validate(build())


# --------------------------------------------------------------------------
# shape inference
# --------------------------------------------------------------------------
SHAPE_GRAPHS = {
    "chain conv odd strided": lambda: df.chain((3, 9, 7), [4, 5, 6], strides=[2, 1, 2]),
    "chain conv kernel 5": lambda: df.chain((1, 6, 5), [2, 3], kernel_size=5, strides=[2, 2]),
    "chain dense": lambda: df.chain((7,), [5, 3]),
    "chain conv then dense": lambda: df.chain((2, 5, 5), [4, 3], dense=True),
    "chain node-centric": lambda: df.chain((1, 7, 7), [2, 3], strides=[2, 1], merge="input"),
    "resnet A": lambda: df.resnet((3, 9, 9), 1, widths=(2, 4, 6)),
    "resnet B": lambda: df.resnet((3, 10, 7), 2, widths=(2, 3, 4), shortcut="B"),
    "densenet": lambda: df.densenet((2, 9, 8), 3, widths=(2, 3)),
    "node-centric skips": lambda: node_centric_graph(),
}


@pytest.mark.parametrize("build", SHAPE_GRAPHS.values(), ids=SHAPE_GRAPHS.keys())
def test_inferred_shapes_are_what_torch_computes(build):
    assert_shapes_match_torch(build())


def test_shapes_of_a_strided_conv_and_shortcut():
    g = df.resnet((3, 7, 7), 1, widths=(4, 6, 8))
    assert g.nodes["stem"]["shape"] == (4, 7, 7)
    assert g.nodes["s2b1a"]["shape"] == (6, 4, 4)  # ceil(7 / 2) with kernel 3, padding 1
    assert g.nodes["s3b1b"]["shape"] == (8, 2, 2)
    assert g.edges["s1b1b", "s2b1b"]["op"] == "shortcut"
    assert g.edges["s1b1b", "s2b1b"]["out_shape"] == (6, 4, 4)


def test_explicit_padding_and_stride():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 6, 5))
    g.add_node("a", channels=2)
    g.add_edge("x", "a", op="conv", kernel_size=5, padding=0, stride=2)
    v = df.validate(g)
    assert v.nodes["a"]["shape"] == (2, 1, 1)
    assert torch_forward(g)["a"] == (2, 1, 1)


def test_node_centric_annotations():
    v = df.validate(node_centric_graph())
    assert v.nodes["a"]["input_shape"] == (1, 6, 6)
    assert v.nodes["a"]["shape"] == (2, 3, 3)
    assert v.nodes["b"]["input_shape"] == (2, 3, 3)
    assert v.edges["a", "b"]["out_shape"] == (2, 3, 3)


def test_validate_returns_an_annotated_copy():
    g = conv_graph()
    before = nx.node_link_data(g, edges="edges")
    v = df.validate(g)
    assert v is not g
    assert nx.node_link_data(g, edges="edges") == before  # input untouched
    again = df.validate(v)  # idempotent on its own output
    assert dict(again.nodes(data=True)) == dict(v.nodes(data=True))
    assert list(again.edges(data=True)) == list(v.edges(data=True))


def test_json_lists_are_accepted_as_shapes():
    g = conv_graph()
    g.nodes["x"]["shape"] = [1, 6, 6]
    assert df.validate(g).nodes["x"]["shape"] == (1, 6, 6)


def test_column_order_is_lexicographic_topological_by_str():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(3,))
    for name in (10, 2, "b", "a"):
        g.add_node(name, features=3)
        g.add_edge("x", name, op="identity")
    g.add_node("z", features=3)
    for name in (10, 2, "b", "a"):
        g.add_edge(name, "z", op="identity")
    v = df.validate(g)
    assert activation_nodes(v) == [10, 2, "a", "b", "z"]
    assert output_node(v) == "z"


def test_output_attribute_selects_among_sinks():
    g = conv_graph()
    g.add_node("c", channels=2)
    g.add_edge("a", "c", op="identity")
    g.graph["output"] = "c"
    assert output_node(df.validate(g)) == "c"


# --------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_is_the_6n_plus_2_family(n, shortcut):
    g = df.resnet((3, 8, 8), n, widths=(2, 3, 4), shortcut=shortcut)
    convs = [e for e in g.edges(data=True) if e[2]["op"] == "conv"]
    assert len(convs) == 6 * n + 1  # stem + 2 per block; + classifier = 6n + 2 layers
    assert g.number_of_nodes() == 6 * n + 2  # input, stem, two nodes per block
    kinds = [a["op"] for _, _, a in g.edges(data=True) if a["op"] != "conv"]
    assert len(kinds) == 3 * n  # one skip per block
    changing = "shortcut" if shortcut == "A" else "project"
    assert kinds.count(changing) == 2  # the first block of stages 2 and 3
    assert kinds.count("identity") == 3 * n - 2
    for k, j, a in g.edges(data=True):
        if a["op"] in ("shortcut", "project"):
            assert a["stride"] == 2 and g.nodes[j]["shape"][1] < g.nodes[k]["shape"][1]
    assert all(a.get("kernel_size", 3) == 3 for _, _, a in g.edges(data=True))


def test_resnet_defaults_and_chain_twin():
    g = df.resnet()
    assert g.nodes["x"]["shape"] == (3, 32, 32)
    assert [g.nodes[n]["channels"] for n in ("s1b1b", "s2b1b", "s3b1b")] == [16, 32, 64]
    twin = df.resnet(skips=False)
    assert all(a["op"] == "conv" for _, _, a in twin.edges(data=True))
    assert nx.is_directed_acyclic_graph(twin) and twin.number_of_edges() == 7
    with pytest.raises(ValueError, match="shortcut"):
        df.resnet(shortcut="C")


@pytest.mark.parametrize(("layers", "widths"), [(1, (2,)), (3, (2, 3)), (4, (2, 3, 4))])
def test_densenet_edge_count(layers, widths):
    g = df.densenet((1, 8, 8), layers, widths=widths)
    assert g.number_of_edges() == 1 + len(widths) * layers * (layers + 1) // 2
    assert g.number_of_nodes() == 2 + len(widths) * layers
    assert all(a["op"] == "conv" for _, _, a in g.edges(data=True))


def test_chain_builder():
    g = df.chain((1, 8, 8), widths=[8, 16])
    assert activation_nodes(g) == ["l1", "l2"]
    assert g.nodes["l2"]["shape"] == (16, 8, 8)
    mlp = df.chain((10,), [6, 4], bias=0.1)
    assert mlp.nodes["l2"]["shape"] == (4,) and mlp.edges["l1", "l2"]["op"] == "dense"
    assert mlp.nodes["l1"]["bias"] == 0.1
    with pytest.raises(ValueError, match="strides"):
        df.chain((1, 4, 4), [2, 2], strides=[1])


# --------------------------------------------------------------------------
# node-link JSON
# --------------------------------------------------------------------------
def _round_trip_equal(original: nx.DiGraph, loaded: nx.DiGraph) -> None:
    assert set(original.nodes) == set(loaded.nodes)
    assert set(original.edges) == set(loaded.edges)
    for n, a in original.nodes(data=True):
        assert loaded.nodes[n] == a, n
    for u, v, a in original.edges(data=True):
        assert loaded.edges[u, v] == a, (u, v)
    assert loaded.graph == original.graph


JSON_GRAPHS = {
    "resnet A": lambda: df.resnet((3, 8, 8), 1, widths=(2, 3, 4), bias=0.1, batchnorm=True),
    "resnet B": lambda: df.resnet((3, 8, 8), 1, widths=(2, 3, 4), shortcut="B"),
    "densenet": lambda: df.densenet((1, 6, 6), 2, widths=(2, 3)),
    "mlp": lambda: df.chain((6,), [4, 3]),
    "shortcut pad_before": lambda: df.validate(
        _edit(
            conv_graph,
            _add(
                nodes=[("s", {"channels": 5})],
                edges=[("b", "s", {"op": "shortcut", "stride": 2, "pad_before": 3})],
            ),
        )()
    ),
    "node-centric": lambda: df.validate(node_centric_graph()),
    "per-channel bias and output": lambda: df.validate(
        _edit(
            conv_graph,
            lambda g: (
                g.nodes["a"].update(bias=[0.0, 0.5]),
                g.add_node("c", channels=2),
                g.add_edge("a", "c", op="identity"),
                g.graph.update(output="b"),
            ),
        )()
    ),
}


@pytest.mark.parametrize("build", JSON_GRAPHS.values(), ids=JSON_GRAPHS.keys())
def test_node_link_json_round_trip(build, tmp_path):
    g = build()
    path = tmp_path / "arch.json"
    df.save(g, path)
    data = json.loads(path.read_text())
    assert {"nodes", "edges"} <= set(data)  # networkx node-link layout
    _round_trip_equal(g, df.load(path))
    _round_trip_equal(g, from_spec(str(path)))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no architecture"):
        df.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(df.ArchitectureError, match="bad.json"):
        df.load(bad)
    bad.write_text(json.dumps({"edges": []}))
    with pytest.raises(df.ArchitectureError, match="node-link"):
        df.load(bad)


def test_load_accepts_links_key(tmp_path):
    g = df.chain((5,), [3])
    data = nx.node_link_data(g, edges="links")
    path = tmp_path / "links.json"
    path.write_text(json.dumps(data, default=list))
    assert df.load(path).nodes["l1"]["shape"] == (3,)


# --------------------------------------------------------------------------
# command-line specs
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "check"),
    [
        ("resnet", lambda g: g.number_of_nodes() == 8 and g.nodes["x"]["shape"] == (3, 32, 32)),
        (
            "resnet:blocks_per_stage=2,shortcut=B",
            lambda g: (
                g.number_of_nodes() == 14
                and any(a["op"] == "project" for _, _, a in g.edges(data=True))
            ),
        ),
        (
            "resnet:input_shape=3x8x8,widths=2x4x6,bias=0.25",
            lambda g: g.nodes["s3b1b"]["shape"] == (6, 2, 2) and g.nodes["stem"]["bias"] == 0.25,
        ),
        ("chain:input_shape=1x8x8,widths=8x16", lambda g: g.nodes["l2"]["shape"] == (16, 8, 8)),
        ("chain", lambda g: g.nodes["l2"]["shape"] == (16, 8, 8)),
        ("chain:input_shape=64,widths=10", lambda g: g.nodes["l1"]["shape"] == (10,)),
        (
            "chain:input_shape=1x9x9,widths=2x3,strides=2x2,kernel_size=5",
            lambda g: g.nodes["l2"]["shape"] == (3, 3, 3),
        ),
        (
            "chain:input_shape=1x4x4,widths=3,batchnorm=true,merge=input",
            lambda g: g.nodes["l1"]["batchnorm"] is True and g.nodes["l1"]["merge"] == "input",
        ),
        (
            "densenet:input_shape=1x8x8,layers_per_stage=2,widths=2x3",
            lambda g: g.number_of_edges() == 1 + 2 * 3,
        ),
    ],
)
def test_from_spec(spec, check):
    assert check(from_spec(spec))


@pytest.mark.parametrize(
    ("spec", "error", "fragment"),
    [
        ("vgg", ValueError, "unknown architecture"),
        ("resnet:blocks_per_stage", ValueError, "key=value"),
        ("resnet:depth=20", ValueError, "depth"),
        ("chain:input_shape=1x4x4,widths=2,strides=2x2", ValueError, "strides"),
        ("resnet:input_shape=12", df.ArchitectureError, "'x' -> 'stem'"),
        ("missing-file.json", FileNotFoundError, "missing-file.json"),
    ],
)
def test_from_spec_errors(spec, error, fragment):
    with pytest.raises(error, match=fragment):
        from_spec(spec)


def test_builder_sizes_are_small_integers():
    g = df.resnet((3, 8, 8), 1, widths=(2, 3, 4))
    for _, a in g.nodes(data=True):
        assert all(isinstance(s, int) for s in a["shape"])
    assert math.prod(g.nodes["x"]["shape"]) == 192


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        pytest.param(
            _edit(dense_graph, _set_edge("h", "o", op="project", stride=0)),
            "'h' -> 'o'",
            id="stride 0 on a dense project",
        ),
        pytest.param(
            _edit(dense_graph, _set_edge("h", "o", op="project", stride=True)),
            "'h' -> 'o'",
            id="stride True on a dense project",
        ),
        pytest.param(
            _edit(dense_graph, _set_edge("x", "h", padding=-1)),
            "'x' -> 'h'",
            id="padding -1 on a dense edge",
        ),
        pytest.param(
            _edit(conv_graph, lambda g: g.add_edge("a", "b", op="identity", kernel_size="3")),
            "'a' -> 'b'",
            id="kernel_size '3' on an identity edge",
        ),
    ],
)
def test_ill_typed_attributes_are_rejected_where_the_op_ignores_them(build, fragment):
    """``stride``/``kernel_size``/``padding`` are type-checked whenever present.

    Today validate only reads them for ops that use them, so ``stride=0`` on a dense
    projection (or ``kernel_size="3"`` on an identity) passes silently.
    """
    with pytest.raises(df.ArchitectureError, match=fragment):
        df.validate(build())
