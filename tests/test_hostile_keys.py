"""Hostile node names: every weight key names one weight (issue 21, item 3).

Weights are keyed by node names written as strings: ``"k->j"`` for an edge,
``"j"`` for a node-centric node's operator, ``"lambda:j"`` (and the batch-norm
tensors) for a node, ``"head.weight"`` / ``"head.bias"`` for the head.
:func:`deepframe.validate` refuses the names that would give two weights one key
(docs/concepts.md, section 8); the rows below are the library's exception and
message and the command line's exit status, one line and unchanged input.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import deepframe as df
from deepframe.checkpoints import model_metadata
from deepframe.cli import main
from deepframe.dictionary import HEAD_KEYS, split_weights
from deepframe.graph import RESERVED_NAMES, ArchitectureError, dumps, loads
from deepframe.terms import edge_key, parameter_shapes, structure


def _issue_graph(names=("a", "b->c", "a->b", "c")) -> nx.DiGraph:
    """The graph of the issue: edges ``a -> b->c`` and ``a->b -> c`` (one key ``a->b->c``)."""
    a, bc, ab, c = names
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 4, 4))
    for name in (a, bc, ab, c):
        g.add_node(name, channels=2)
    g.add_edge("x", a, op="conv", kernel_size=3)
    g.add_edge("x", ab, op="conv", kernel_size=3)
    g.add_edge(a, bc, op="conv", kernel_size=3)
    g.add_edge(ab, c, op="conv", kernel_size=3)
    g.add_edge(bc, c, op="conv", kernel_size=3)
    return g


def _chain_through(name, *, merge: str = "edge") -> nx.DiGraph:
    """``x -> name -> z``: a valid graph but for the name."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 4, 4))
    if merge == "input":
        g.add_node(name, channels=2, merge="input", op="conv", kernel_size=3)
        g.add_edge("x", name)
    else:
        g.add_node(name, channels=2)
        g.add_edge("x", name, op="conv", kernel_size=3)
    g.add_node("z", channels=2)
    g.add_edge(name, "z", op="conv", kernel_size=3)
    return g


# --------------------------------------------------------------------------- the library


def test_the_issue_graph_is_refused_by_validate_dictionary_and_compile():
    for build in (df.validate, df.dictionary, df.compile):
        with pytest.raises(ArchitectureError, match=re.escape("node 'b->c': a node name may not")):
            build(_issue_graph())


def test_the_issue_graph_renamed_has_one_weight_per_edge():
    g = df.validate(_issue_graph(("a", "b_c", "a_b", "c")))
    keys = parameter_shapes(g)
    assert len(keys) == g.number_of_edges() == 5
    net = df.compile(g, method="deep", iterations=1)
    weights = net.weight_dict()
    assert len({w.data_ptr() for w in weights.values()}) == 5


def test_colliding_keys_are_caught_also_without_validate():
    """A validated graph renamed afterwards: the structure refuses the shared key."""
    g = df.validate(_issue_graph(("a", "b_c", "a_b", "c")))
    hostile = nx.relabel_nodes(g, {"b_c": "b->c", "a_b": "a->b"})
    with pytest.raises(ArchitectureError, match=re.escape("share the weight key 'a->b->c'")):
        structure(hostile)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("a->b", "may not contain '->' (an edge's weight is keyed 'k->j'"),
        ("->", "may not contain '->'"),
        ("a-", None),  # fine: "x->a-" and "a-->z" split at one "->" each
        (">b", None),
        ("lambda:x", "may not contain ':' (a node's lambda and batch-norm tensors"),
        (":", "may not contain ':'"),
        ("a:b", "may not contain ':'"),
        (("a->b", 1), "may not contain '->'"),
        (("lambda:", 0), "may not contain ':'"),
        ("head.weight", "the name is reserved, it is the key of the classifier head's weight"),
        ("head.bias", "reserved"),
        ("head", None),
        ("", None),
        (7, None),
        (("l", 1), None),
    ],
    ids=repr,
)
@pytest.mark.parametrize("merge", ["edge", "input"])
def test_names_that_would_share_a_key_are_refused(name, fragment, merge):
    g = _chain_through(name, merge=merge)
    if fragment is None:
        v = df.validate(g)
        keys = parameter_shapes(v)
        assert len(keys) == 2  # one weight per parametrised operator
        assert edge_key(name, "z") in keys
        return
    with pytest.raises(ArchitectureError) as info:
        df.validate(g)
    message = str(info.value)
    assert message.startswith(f"node {name!r}: ") and fragment in message
    assert "rename the node" in message and "\n" not in message


@pytest.mark.parametrize(("one", "other"), [(1, "1"), (2.5, "2.5"), (True, "True"), ((1,), "(1,)")])
def test_names_equal_as_strings_are_refused(one, other):
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(4,))
    g.add_node(one, features=3)
    g.add_node(other, features=3)
    g.add_edge("x", one, op="dense")
    g.add_edge(one, other, op="dense")
    with pytest.raises(ArchitectureError) as info:
        df.validate(g)
    assert str(info.value) == (
        f"nodes {one!r} and {other!r} are not distinct as strings (both {str(one)!r}); "
        "weights are keyed by that string, so rename one of them"
    )


def test_the_reserved_names_are_the_head_keys():
    assert tuple(RESERVED_NAMES) == tuple(HEAD_KEYS)


def test_integer_names_keep_their_keys_through_node_link_json():
    g = nx.DiGraph()
    g.add_node(0, kind="input", shape=(1, 4, 4))
    g.add_node(10, channels=2)
    g.add_node(2, channels=3, merge="input", op="conv", kernel_size=3)
    g.add_edge(0, 10, op="conv", kernel_size=3)
    g.add_edge(10, 2)
    g = df.validate(g)
    assert list(parameter_shapes(g)) == ["0->10", "2"]
    back = loads(dumps(g))
    assert set(back.nodes) == {0, 10, 2}  # integers stay integers
    assert parameter_shapes(back) == parameter_shapes(g)
    net = df.compile(g, method="deep", iterations=1, seed=3)
    again = df.compile(back, method="deep", iterations=1, seed=4)
    again.load_state_dict(net.state_dict())
    for key, w in net.weight_dict().items():
        assert torch.equal(again.weight_dict()[key], w)


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        (("l", 1), "node ('l', 1): a tuple name comes back from JSON as a list"),
        (frozenset({"l"}), "a frozenset name cannot be written as JSON"),
        (float("inf"), "a non-finite number comes back from JSON as another node"),
    ],
    ids=["tuple", "frozenset", "inf"],
)
def test_names_json_cannot_give_back_are_refused_when_saving(tmp_path, name, fragment):
    """In memory such a graph works; its file (and a checkpoint's metadata) would not load."""
    g = df.validate(_chain_through(name))
    df.dictionary(g)  # fine in memory
    with pytest.raises(ArchitectureError, match=re.escape(fragment)):
        dumps(g)
    with pytest.raises(ArchitectureError, match=re.escape(fragment)):
        df.save(g, tmp_path / "arch.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArchitectureError, match=re.escape(fragment)):
        model_metadata(g, method="feedforward")


def test_numpy_and_torch_attribute_values_are_written_as_numbers():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 4, 4))
    g.add_node(np.int64(5), channels=np.int64(2), bias=torch.tensor([0.5, 0.25]))
    g.add_edge("x", np.int64(5), op="conv", kernel_size=np.int32(3))
    g = df.validate(g)
    back = loads(dumps(g))
    assert back.nodes[5]["channels"] == 2 and back.nodes[5]["bias"] == [0.5, 0.25]
    assert back.edges["x", 5]["kernel_size"] == 3


def test_split_weights_names_a_key_that_is_not_a_string():
    g = df.chain((4,), [3])
    weights = {**df.dictionary(g).weights, 5: torch.zeros(3)}
    with pytest.raises(ValueError, match=re.escape("weights: key 5 (int) is not a string")):
        split_weights(g, weights)


# ------------------------------------------------- parameter names of PursuitNet (state_dict)


def _safe_name_graph(reverse: bool = False) -> nx.DiGraph:
    """Names whose parameter names collide: ``a.b`` / ``a_b`` -> ``a_b``, the edge
    ``a.b -> c`` -> ``a_b__c`` and the node-centric node ``a_b__c``."""
    nodes = [
        ("x", {"kind": "input", "shape": (1, 4, 4)}),
        ("a.b", {"channels": 2}),
        ("a_b", {"channels": 2}),
        ("c", {"channels": 2}),
        ("a_b__c", {"channels": 2, "merge": "input", "op": "conv", "kernel_size": 3}),
    ]
    edges = [
        ("x", "a.b", {"op": "conv", "kernel_size": 3}),
        ("x", "a_b", {"op": "conv", "kernel_size": 3}),
        ("a.b", "c", {"op": "conv", "kernel_size": 3}),
        ("a_b", "c", {"op": "conv", "kernel_size": 3}),
        ("c", "a_b__c", {}),
    ]
    g = nx.DiGraph()
    g.add_nodes_from(reversed(nodes) if reverse else nodes)
    g.add_edges_from(reversed(edges) if reverse else edges)
    return g


def test_colliding_parameter_names_give_each_weight_its_own_state_dict_key():
    net = df.compile(_safe_name_graph(), method="deep", iterations=1, seed=0)
    state = net.state_dict()
    names = {k.removeprefix("weights."): k for k in state if k.startswith("weights.")}
    # the suffixes follow the key order of parameter_shapes, which depends on the names only
    assert sorted(names) == sorted(["x__a_b", "x__a_b_1", "a_b__c", "a_b__c_1", "a_b__c_2"])
    expected = {
        "x->a.b": "x__a_b",
        "x->a_b": "x__a_b_1",
        "a.b->c": "a_b__c",
        "a_b->c": "a_b__c_1",
        "a_b__c": "a_b__c_2",
    }
    for key, w in net.weight_dict().items():
        assert torch.equal(state[f"weights.{expected[key]}"], w), key
    assert len({w.data_ptr() for w in net.weight_dict().values()}) == 5
    lambdas = sorted(k.removeprefix("lambda_rho.") for k in state if k.startswith("lambda_rho."))
    assert lambdas == sorted(["a_b", "a_b_1", "c", "a_b__c_3"])


def test_parameter_names_do_not_depend_on_insertion_order_or_the_json_round_trip():
    net = df.compile(_safe_name_graph(), method="deep", iterations=1, seed=0)
    other = df.compile(_safe_name_graph(reverse=True), method="deep", iterations=1, seed=0)
    back = df.compile(loads(dumps(_safe_name_graph())), method="deep", iterations=1, seed=1)
    a, b = net.state_dict(), other.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    back.load_state_dict(a)
    for key, w in net.weight_dict().items():
        assert torch.equal(back.weight_dict()[key], w), key


# --------------------------------------------------------------------------- the command line


def _hashes(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


def _node_link(nodes: list, edges: list) -> str:
    return json.dumps({"directed": True, "nodes": nodes, "edges": edges})


_CONV = {"op": "conv", "kernel_size": 3}
CLI_CASES = [
    (
        "arrow",
        _node_link(
            [{"id": "x", "kind": "input", "shape": [1, 4, 4]}]
            + [{"id": n, "channels": 2} for n in ("a", "b->c", "a->b", "c")],
            [
                {"source": "x", "target": "a", **_CONV},
                {"source": "x", "target": "a->b", **_CONV},
                {"source": "a", "target": "b->c", **_CONV},
                {"source": "a->b", "target": "c", **_CONV},
                {"source": "b->c", "target": "c", **_CONV},
            ],
        ),
        "node 'b->c': a node name may not contain '->'",
    ),
    (
        "colon",
        _node_link(
            [{"id": "x", "kind": "input", "shape": [1, 4, 4]}, {"id": "lambda:x", "channels": 2}],
            [{"source": "x", "target": "lambda:x", **_CONV}],
        ),
        "node 'lambda:x': a node name may not contain ':'",
    ),
    (
        "int and string",
        _node_link(
            [{"id": "x", "kind": "input", "shape": [4]}]
            + [{"id": 1, "features": 3}, {"id": "1", "features": 3}],
            [
                {"source": "x", "target": 1, "op": "dense"},
                {"source": 1, "target": "1", "op": "dense"},
            ],
        ),
        "nodes 1 and '1' are not distinct as strings (both '1')",
    ),
    (
        "reserved",
        _node_link(
            [
                {"id": "x", "kind": "input", "shape": [1, 4, 4]},
                {"id": "head.weight", "channels": 2, "merge": "input", **_CONV},
            ],
            [{"source": "x", "target": "head.weight"}],
        ),
        "node 'head.weight': the name is reserved",
    ),
]


@pytest.mark.parametrize("command", ["describe", "metrics", "train"])
@pytest.mark.parametrize(
    ("text", "fragment"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_the_command_line_refuses_in_one_line(
    tmp_path, monkeypatch, capsys, command, text, fragment
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEEPFRAME_DEBUG", raising=False)
    (tmp_path / "arch.json").write_text(text)
    before = _hashes(tmp_path)
    extra = ["--epochs", "1", "--out", "run", "--quiet"] if command == "train" else []
    assert main([command, "arch.json", *extra]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"deepframe {command}: error: arch.json: ") and fragment in lines[0]
    assert "Traceback" not in err
    assert _hashes(tmp_path) == before  # the file unchanged, nothing written
