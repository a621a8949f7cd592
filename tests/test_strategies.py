"""Property tests over drawn architectures, and tests of deepframe.testing itself."""

from __future__ import annotations

import collections
import json
import math
import os
import random
import subprocess
import sys
import traceback

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepframe as df
from deepframe import ops
from deepframe.graph import dumps, loads
from deepframe.testing import (
    MALFORMED_KINDS,
    architectures,
    assert_dottest,
    assert_matches_dense,
    assert_matches_reference,
    assert_shapes_match_torch,
    dictionaries,
    malformed_architectures,
    random_architecture,
    random_malformed,
)

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# properties of every valid architecture
# --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dictionaries())
def test_dot_test_on_drawn_graphs(D):
    assert_dottest(D, rtol=1e-10)


@FAST
@given(architectures(max_nodes=4, max_atoms=300), st.integers(0, 100))
def test_dictionary_equals_independent_assembly(g, seed):
    D = df.dictionary(g, seed=seed)
    assert_matches_reference(D, atol=1e-12)
    assert_matches_dense(D)


@FAST
@given(architectures(max_nodes=5))
def test_inferred_shapes_are_what_torch_computes(g):
    assert_shapes_match_torch(g)


@FAST
@given(architectures(max_nodes=5))
def test_json_round_trip_of_drawn_graphs(g):
    v = df.validate(g)
    loaded = loads(dumps(v))  # the text df.save writes and df.load reads, no file
    assert dict(loaded.nodes(data=True)) == dict(v.nodes(data=True))
    assert {(u, w): a for u, w, a in loaded.edges(data=True)} == {
        (u, w): a for u, w, a in v.edges(data=True)
    }
    assert loaded.graph == v.graph


@FAST
@given(architectures(max_nodes=4))
def test_validate_leaves_the_graph_alone_and_is_idempotent(g):
    before = json.dumps(nx.node_link_data(g, edges="edges"), sort_keys=True, default=repr)
    v = df.validate(g)
    assert json.dumps(nx.node_link_data(g, edges="edges"), sort_keys=True, default=repr) == before
    again = df.validate(v)
    assert dict(again.nodes(data=True)) == dict(v.nodes(data=True))


# --------------------------------------------------------------------------
# malformed graphs
# --------------------------------------------------------------------------
def _check_malformed(graph, fragment):
    with pytest.raises(df.ArchitectureError) as info:
        df.validate(graph)
    assert fragment in str(info.value), (fragment, str(info.value))
    frames = traceback.extract_tb(info.value.__traceback__)
    assert not any(f"{os.sep}torch{os.sep}" in f.filename for f in frames)
    return info.value


@settings(max_examples=150, deadline=None)
@given(malformed_architectures())
def test_drawn_malformed_graphs_raise_naming_the_culprit(pair):
    graph, fragment = pair
    _check_malformed(graph, fragment)


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_malformed_kind(kind):
    for seed in range(3):
        graph, fragment = random_malformed(random.Random(seed), kind)
        error = _check_malformed(graph, fragment)
        if isinstance(graph, nx.DiGraph) and not isinstance(graph, nx.MultiDiGraph):
            with pytest.raises(df.ArchitectureError) as info:
                df.dictionary(graph)
            assert str(info.value) == str(error)


def test_malformed_kinds_are_many():
    assert len(MALFORMED_KINDS) >= 20


@settings(max_examples=10, deadline=None)
@given(malformed_architectures(kinds=["cycle", "self_loop"]))
def test_malformed_kinds_can_be_restricted(pair):
    graph, fragment = pair
    message = str(_check_malformed(graph, fragment))
    assert "cycle" in message or "self-loop" in message


# --------------------------------------------------------------------------
# the strategies' own contract
# --------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(architectures(ops=("conv",), merges=("edge",), inputs=("conv",)))
def test_restricted_ops(g):
    assert all(a["op"] == "conv" for _, _, a in g.edges(data=True))
    assert all(len(g.nodes[n].get("shape", (0, 0, 0))) == 3 for n in g)


@settings(max_examples=20, deadline=None)
@given(architectures(merges=("input",), node_attributes=False))
def test_node_centric_only(g):
    nodes = [n for n, a in g.nodes(data=True) if a.get("kind") != "input"]
    assert all(g.nodes[n].get("merge") == "input" for n in nodes)
    assert not any("bias" in g.nodes[n] or "batchnorm" in g.nodes[n] for n in nodes)


@settings(max_examples=15, deadline=None)
@given(architectures(validated=True))
def test_validated_graphs_are_annotated(g):
    assert all("shape" in a for _, a in g.nodes(data=True))
    assert all("out_shape" in a for _, _, a in g.edges(data=True))


@settings(max_examples=15, deadline=None)
@given(architectures())
def test_drawn_graphs_are_plain_and_unvalidated(g):
    assert type(g) is nx.DiGraph
    assert not any("out_shape" in a for _, _, a in g.edges(data=True))


@settings(max_examples=20, deadline=None)
@given(architectures(max_atoms=200, max_nodes=6))
def test_atom_budget(g):
    v = df.validate(g)
    nodes = [n for n, a in v.nodes(data=True) if a.get("kind") != "input"]
    total = sum(math.prod(v.nodes[n]["shape"]) for n in nodes)
    assert total <= 200 or len(nodes) == 1


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="ops"):
        architectures(ops=("pool",))
    with pytest.raises(ValueError, match="merges"):
        architectures(merges=())
    with pytest.raises(ValueError, match="malformed kinds"):
        malformed_architectures(kinds=["nope"])
    with pytest.raises(ValueError, match="cannot follow a dense input"):
        random_architecture(random.Random(0), ops=("conv",), inputs=("dense",))


def test_generator_is_deterministic_per_seed():
    a = random_architecture(random.Random(123))
    b = random_architecture(random.Random(123))
    assert nx.node_link_data(a, edges="edges") == nx.node_link_data(b, edges="edges")


def test_generator_covers_every_kind():
    """Over a few hundred seeds: every op on edges, skips and nodes, both merges, odd sizes."""
    seen = collections.Counter()
    for seed in range(300):
        g = df.validate(random_architecture(random.Random(seed)))
        for n, a in g.nodes(data=True):
            shape = a["shape"]
            if len(shape) == 3 and (shape[1] % 2 or shape[2] % 2):
                seen["odd map"] += 1
            if a.get("merge") == "input":
                seen[f"node {a['op']}"] += 1
                if g.in_degree(n) > 1:
                    seen["node-centric merge"] += 1
            if isinstance(a.get("bias"), list):
                seen["bias per channel"] += 1
            if a.get("batchnorm"):
                seen["batchnorm"] += 1
            if isinstance(n, int):
                seen["int name"] += 1
        for k, j, a in g.edges(data=True):
            op = a.get("op", "identity")
            seen[f"edge {op}"] += 1
            if g.in_degree(j) > 1:
                seen[f"skip {op}"] += 1
            if a.get("stride", 1) == 2:
                seen["stride 2"] += 1
            if op == "conv":
                kernel = ops.pair(a["kernel_size"])
                dilation = ops.pair(a.get("dilation", 1))
                default = tuple(d * (k // 2) for k, d in zip(kernel, dilation))
                seen[f"kernel {kernel[0]}"] += 1
                if ops.pair(a.get("padding", default)) != default:
                    seen["other padding"] += 1
                for name, value in (
                    ("kernel", kernel),
                    ("stride", ops.pair(a.get("stride", 1))),
                    ("padding", ops.pair(a.get("padding", default))),
                    ("dilation", dilation),
                ):
                    if value[0] != value[1]:
                        seen[f"conv {name} per axis"] += 1
                if dilation != (1, 1):
                    seen["conv dilation"] += 1
                groups = a.get("groups", 1)
                if groups > 1:
                    seen["conv groups"] += 1
                    if groups == a["in_shape"][0]:
                        seen["conv depthwise"] += 1
            if op == "project":
                if a.get("groups", 1) > 1:
                    seen["project groups"] += 1
                stride = ops.pair(a.get("stride", 1))
                if stride[0] != stride[1]:
                    seen["project stride per axis"] += 1
            if op == "dense" and len(g.nodes[k]["shape"]) == 3:
                seen["dense from conv"] += 1
        if "output" in g.graph:
            seen["output attribute"] += 1
    kinds = ("conv", "dense", "identity", "project", "shortcut")
    expected = [f"edge {op}" for op in kinds] + [f"skip {op}" for op in kinds]
    expected += [f"node {op}" for op in kinds] + [f"kernel {k}" for k in (1, 3, 5)]
    expected += [
        "odd map",
        "node-centric merge",
        "bias per channel",
        "batchnorm",
        "int name",
        "stride 2",
        "other padding",
        "dense from conv",
        "output attribute",
    ]
    expected += [f"conv {name} per axis" for name in ("kernel", "stride", "padding", "dilation")]
    expected += ["conv dilation", "conv groups", "conv depthwise", "project groups"]
    expected += ["project stride per axis"]
    missing = [key for key in expected if seen[key] < 3]
    assert not missing, (missing, seen)


def test_import_deepframe_does_not_import_hypothesis():
    code = (
        "import sys, deepframe, deepframe.testing\n"
        "from deepframe.testing import random_architecture, assert_dottest\n"
        "assert 'hypothesis' not in sys.modules, 'hypothesis imported'\n"
        "from deepframe.testing import architectures\n"
        "assert 'hypothesis' in sys.modules\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


def test_assert_dottest_catches_a_wrong_adjoint():
    from deepframe import ops

    class Broken(ops.Identity):
        def adjoint(self, y):
            return 2 * y

    with pytest.raises(AssertionError, match="dot test failed"):
        assert_dottest(Broken((3,)))

    class WrongShape(ops.Identity):
        def adjoint(self, y):
            return y[:, :-1]

    with pytest.raises(AssertionError, match="adjoint returned shape"):
        assert_dottest(WrongShape((3,)))
