"""The registry of edge kinds (deepframe.ops.EDGE_KINDS), checked kind by kind.

Every registered kind is picked up here without a change to this file: graphs
are drawn with :func:`deepframe.testing.random_architecture` restricted to the
kind, and each gets the dot test (PyLops), the structured-vs-dense geometry
comparison (e3nn's fast-vs-slow) and a check of its tap structure against the
operator's own matrix. A toy kind registered for one test shows that a new
kind is one class plus its registry entry.
"""

from __future__ import annotations

import math
import random

import networkx as nx
import numpy as np
import pytest
import torch

import deepframe as df
from deepframe import geometry as geo
from deepframe import ops
from deepframe.graph import EDGE_OPS
from deepframe.testing import OPS, assert_dottest, random_architecture

KINDS = list(ops.EDGE_KINDS)
SEEDS = range(6)
TOL = 1e-9


def _graphs(kind: str, seeds=SEEDS, **options):
    """Graphs drawn with only ``kind`` (and the identity, the default node-centric edge)."""
    for seed in seeds:
        yield random_architecture(random.Random(seed), ops=(kind,), max_atoms=400, **options)


def _operators(d):
    """Every operator of a dictionary: synthesis operators, targets and input maps."""
    for t in d.terms:
        yield t.op
        yield from (p for _, p in t.targets)
        yield from t.inputs


def test_the_graph_and_the_generators_list_the_registered_kinds():
    assert EDGE_OPS == tuple(ops.EDGE_KINDS) == ("conv", "dense", "identity", "project", "shortcut")
    assert OPS == EDGE_OPS
    for name, cls in ops.EDGE_KINDS.items():
        assert cls.kind == name and issubclass(cls, ops.Operator)


def test_unknown_and_ill_typed_kinds_name_the_registry():
    with pytest.raises(ValueError, match=r"unknown op 'pool'; expected one of \('conv'"):
        ops.edge_kind("pool")
    with pytest.raises(ValueError, match="must be a string"):
        ops.edge_kind(3)


def test_registering_a_taken_or_missing_name_is_refused():
    class Other(ops.Identity):
        kind = "conv"

    with pytest.raises(ValueError, match="already Conv"):
        ops.register_edge_kind(Other)

    class Nameless(ops.Identity):
        kind = ops.Operator.kind

    with pytest.raises(ValueError, match="its own string 'kind'"):
        ops.register_edge_kind(Nameless)
    assert ops.register_edge_kind(ops.Conv) is ops.Conv  # registering again is harmless


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_passes_the_dot_test(kind):
    seen = 0
    for g in _graphs(kind):
        d = df.dictionary(g, seed=1)
        assert_dottest(d, rtol=1e-10)
        assert d.dottest() < 1e-10
        for op in _operators(d):
            seen += type(op) is ops.EDGE_KINDS[kind]
            assert assert_dottest(op, rtol=1e-10) < 1e-10
            assert op.dottest() < 1e-10
    assert seen, f"no {kind!r} operator was drawn"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_structured_geometry_equals_the_dense_one(kind):
    for g in _graphs(kind, range(4)):
        d = df.dictionary(g, seed=2)
        s = geo.gram_metrics(d, method="structured")
        r = geo.gram_metrics(d, method="dense")
        assert s.n_atoms == r.n_atoms and s.n_rows == r.n_rows
        assert s.nonzero_atoms == r.nonzero_atoms
        assert s.structural_nonzeros == r.structural_nonzeros
        assert s.coherence == pytest.approx(r.coherence, abs=TOL)
        assert s.frame_potential == pytest.approx(r.frame_potential, abs=TOL, rel=TOL)
        assert s.deep_frame_potential == pytest.approx(r.deep_frame_potential, abs=TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_consistent_shape_rule_weight_shape_and_spec(kind):
    """The shape rule, the weight shape and the spec's operator agree with each other."""
    cls = ops.EDGE_KINDS[kind]
    for g in _graphs(kind, range(4)):
        v = df.validate(g)
        maps = [(a, a["in_shape"], a["out_shape"]) for *_, a in v.edges(data=True)]
        maps += [
            (a, a["input_shape"], a["shape"])
            for _, a in v.nodes(data=True)
            if a.get("merge", "edge") == "input"
        ]
        for a, in_shape, out_shape in maps:
            if a.get("op", "identity") != kind:
                continue
            assert cls.shape_rule(
                a,
                tuple(in_shape),
                None
                if kind == "identity"
                else (("channels" if len(out_shape) == 3 else "features"), out_shape[0]),
            ) == tuple(out_shape)
            spec = cls.spec(a, in_shape, out_shape, "w")
            shape = cls.weight_shape(a, in_shape, out_shape)
            weights = {} if shape is None else {"w": torch.zeros(shape[0], dtype=torch.float64)}
            op = spec.build(weights)
            assert (op.in_shape, op.out_shape) == (tuple(in_shape), tuple(out_shape))
            assert (op.weight is None) == (shape is None)
            if shape is not None:
                assert shape[1] == math.prod(shape[0][1:])  # fan-in: one output's inputs


# --------------------------------------------------------------------------
# the tap structure the structured Gram reads
# --------------------------------------------------------------------------
def _support(op: ops.Operator) -> np.ndarray:
    """Nonzero pattern of ``op``'s matrix with every learned weight set to 1."""
    if op.weight is not None:
        op = op.with_weight(torch.ones_like(op.weight, dtype=torch.float64))
    return op.todense().detach().cpu().numpy() != 0


def _pattern(taps: ops.TapStructure, op: ops.Operator, transposed: bool) -> np.ndarray:
    """The pattern the tap structure describes, ``(out_size, in_size)``.

    ``transposed=True`` reads the tables as a synthesis block (node = the
    operator's output), ``False`` as a target block (node = its input).
    """
    node, res = (op.out_shape, op.in_shape) if transposed else (op.in_shape, op.out_shape)
    axes = []
    for axis in (0, 1):
        inc = taps.incidence(axis, node[1 + axis], res[1 + axis], transposed)
        assert inc.shape == (node[1 + axis], taps.kernel_size[axis])
        assert inc.min() >= -1 and inc.max() < res[1 + axis]
        m = np.zeros((node[1 + axis], res[1 + axis]), dtype=bool)
        for y, alpha in zip(*np.nonzero(inc >= 0)):
            m[y, inc[y, alpha]] = True
        axes.append(m)
    sel = taps.selection(node[0], res[0], transposed)
    if taps.learned:  # the groups' diagonal blocks (all channel pairs for one group)
        assert sel is None
        channels = np.zeros((node[0], res[0]), dtype=bool)
        size_node, size_res = node[0] // taps.groups, res[0] // taps.groups
        for group in range(taps.groups):
            channels[
                group * size_node : (group + 1) * size_node,
                group * size_res : (group + 1) * size_res,
            ] = True
    else:
        channels = np.zeros((node[0], res[0]), dtype=bool)
        for c, r in enumerate(sel):
            if r >= 0:
                channels[c, r] = True
    np.testing.assert_array_equal(taps.channel_pattern(node[0], res[0], transposed), channels)
    full = np.kron(np.kron(channels, axes[0]), axes[1])  # (node, res)
    return full if transposed else full.T


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_tap_structure_is_the_operator_support(kind):
    """Read either way (synthesis or target block), the incidence tables and the
    channel selection give exactly the nonzero pattern of the operator's matrix."""
    checked = 0
    for g in _graphs(kind):
        for op in _operators(df.dictionary(g, seed=3)):
            taps = op.taps()
            if taps is None:  # not a map between two (C, H, W) activations, or dense
                assert len(op.in_shape) != 3 or len(op.out_shape) != 3 or op.kind == "dense"
                continue
            assert len(op.in_shape) == 3 and len(op.out_shape) == 3
            support = _support(op)
            for transposed in (True, False):
                np.testing.assert_array_equal(_pattern(taps, op, transposed), support)
            checked += type(op) is ops.EDGE_KINDS[kind]
    if kind != "dense":
        assert checked, f"no conv-like {kind!r} operator was drawn"


def test_tap_structure_of_a_scaled_operator_is_the_inner_one():
    conv = ops.Conv(torch.ones((3, 2, 3, 3), dtype=torch.float64), (2, 5, 4), stride=2)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    scaled = ops.Scaled(conv, scale)
    assert scaled.taps() == conv.taps() == ops.TapStructure((3, 3), 2, 1)
    inner, s = scaled.unscaled()
    assert inner is conv and s is scale
    assert conv.unscaled() == (conv, None)


# --------------------------------------------------------------------------
# a new kind is one class plus its registry entry
# --------------------------------------------------------------------------
class Negate(ops.Operator):
    """A toy parameter-free kind: ``A x = -x`` (shape rule: the source's shape)."""

    kind = "negate"
    draw_weights = (1.0, 1.0)

    @classmethod
    def shape_rule(cls, attrs, src, size):
        if size is not None and size[1] != src[0]:
            raise ValueError(f"negate keeps the shape {src}")
        return src

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        return ops.OpSpec("negate", tuple(in_shape), tuple(out_shape))

    @classmethod
    def from_spec(cls, spec, weights):
        return Negate(spec.in_shape, spec.out_shape)

    @classmethod
    def draw(cls, rng, src, limits):
        return {}, src

    @classmethod
    def between(cls, rng, src, dst, limits):
        return [{}] if src == dst else []

    def forward(self, x):
        return -x

    def adjoint(self, y):
        return -y

    def sqnorm_bound(self, scale=None):
        if scale is None:
            return torch.ones((), dtype=torch.float64)
        return scale.detach().to(torch.float64).square().max()


@pytest.fixture
def negate():
    ops.register_edge_kind(Negate)
    try:
        yield Negate
    finally:
        del ops.EDGE_KINDS["negate"]


def test_a_new_kind_works_everywhere_once_registered(negate):
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(2, 5, 4))
    g.add_node("a", channels=3)
    g.add_node("b", channels=3)
    g.add_edge("x", "a", op="conv", kernel_size=3)
    g.add_edge("a", "b", op="negate")
    g.add_edge("x", "b", op="conv", kernel_size=1)
    v = df.validate(g)
    assert v.edges["a", "b"]["out_shape"] == (3, 5, 4)
    d = df.dictionary(v, seed=0)
    assert_dottest(d)
    weights = dict(d.weights)
    x = torch.randn((2, 2, 5, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.rand((2, d.shape[1]), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    codes = d.codes(w)
    # term "a->b": r = w_a - A^T w_b = w_a + w_b (the negated synthesis)
    r = dict(zip((t.name for t in d.terms), d.residuals(x, codes)))
    torch.testing.assert_close(r["a->b"], codes["a"] + codes["b"])
    s = geo.gram_metrics(d, method="structured")
    r = geo.gram_metrics(d, method="dense")
    assert s.coherence == pytest.approx(r.coherence, abs=TOL)
    assert s.frame_potential == pytest.approx(r.frame_potential, rel=TOL)
    net = df.compile(v, method="deep", iterations=2, weights=weights)
    assert net(x.to(net.head.weight.dtype)).shape == (2, 10)
    drawn = [
        a.get("op")
        for seed in range(10)
        for *_, a in random_architecture(random.Random(seed), ops=("negate", "conv")).edges(
            data=True
        )
    ]
    assert "negate" in drawn
    with pytest.raises(df.ArchitectureError, match=r"edge 'a' -> 'b': negate keeps the shape"):
        g.nodes["b"]["channels"] = 4
        g.edges["x", "b"]["kernel_size"] = 1
        df.validate(g)
