"""Tests of deepframe.geometry: closed forms, structured == dense, bounds, minimisation."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepframe as df
from deepframe import geometry as geo
from deepframe.dictionary import GlobalDictionary, random_weights
from deepframe.geometry.dense import dense_matrix, dense_structure, normalised_gram
from deepframe.geometry.report import metrics_report
from deepframe.geometry.structured import GramPlan

TOL = 1e-9


# --------------------------------------------------------------------------
# a small local strategy of conv graphs (SPEC §2 attributes); deepframe.testing
# may replace it later
# --------------------------------------------------------------------------
def _conv_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _maps_to(src: tuple, dst: tuple) -> list[dict]:
    """Edge attributes of every op that takes a (C, H, W) map ``src`` to ``dst`` exactly."""
    c, h, w = src
    c2, h2, w2 = dst
    out = []
    if src == dst:
        out.append({"op": "identity"})
    for s in (1, 2):
        if -(-h // s) == h2 and -(-w // s) == w2:
            out.append({"op": "project", "stride": s})
            if c2 >= c:
                out.append({"op": "shortcut", "stride": s})
        for k in (1, 2, 3):
            for p in range(k + 1):
                if _conv_size(h, k, s, p) == h2 and _conv_size(w, k, s, p) == w2:
                    out.append({"op": "conv", "kernel_size": k, "stride": s, "padding": p})
    return out


@st.composite
def _primary(draw, src: tuple, channels: int) -> tuple[dict, tuple]:
    """A freely drawn op from ``src`` with ``channels`` outputs, and its output shape."""
    c, h, w = src
    kinds = ["conv", "conv", "project"] + (["shortcut"] if channels >= c else [])
    kinds += ["identity"] if channels == c else []
    kind = draw(st.sampled_from(kinds))
    if kind == "identity":
        return {"op": "identity"}, src
    s = draw(st.sampled_from((1, 2)))
    if kind in ("project", "shortcut"):
        return {"op": kind, "stride": s}, (channels, -(-h // s), -(-w // s))
    k = draw(st.sampled_from((1, 2, 3)))
    p = draw(st.integers(0, k))
    shape = (channels, _conv_size(h, k, s, p), _conv_size(w, k, s, p))
    if shape[1] < 1 or shape[2] < 1:
        return {"op": "conv", "kernel_size": 1, "stride": 1, "padding": 0}, (channels, h, w)
    return {"op": "conv", "kernel_size": k, "stride": s, "padding": p}, shape


@st.composite
def conv_graphs(draw, max_nodes: int = 4, dense_tail: bool = True) -> nx.DiGraph:
    """Small conv graphs: strides 1/2, odd sizes, identity/project/shortcut/conv skips,
    edge- and node-centric merges, optionally a dense tail."""
    g = nx.DiGraph()
    shape = (draw(st.integers(1, 2)), draw(st.integers(3, 7)), draw(st.integers(3, 7)))
    g.add_node("x", kind="input", shape=shape)
    shapes = {"x": shape}
    names = ["x"]
    for i in range(draw(st.integers(1, max_nodes))):
        name = f"n{i}"
        channels = draw(st.integers(1, 3))
        first = draw(st.sampled_from(names))
        others = [m for m in names if m != first]
        extra = draw(st.lists(st.sampled_from(others), unique=True, max_size=2)) if others else []
        if draw(st.booleans()):  # edge-centric
            attrs, out = draw(_primary(shapes[first], channels))
            g.add_node(name, channels=channels)
            g.add_edge(first, name, **attrs)
            for m in extra:
                options = _maps_to(shapes[m], out)
                if options:
                    g.add_edge(m, name, **draw(st.sampled_from(options)))
        else:  # node-centric: z = sum_k E_jk w_k, then the node's own op
            z_channels = draw(st.integers(1, 3))
            attrs, z = draw(_primary(shapes[first], z_channels))
            if attrs["op"] != "identity":
                attrs["channels"] = z_channels
            g.add_edge(first, name, **attrs)
            for m in extra:
                options = _maps_to(shapes[m], z)
                if options:
                    choice = dict(draw(st.sampled_from(options)))
                    if choice["op"] != "identity":
                        choice["channels"] = z_channels
                    g.add_edge(m, name, **choice)
            own, out = draw(_primary(z, channels))
            g.add_node(name, channels=channels, merge="input", **own)
        shapes[name] = out
        names.append(name)
    if dense_tail and draw(st.booleans()):
        src = draw(st.sampled_from(names[1:]))
        features = draw(st.integers(1, 3))
        if draw(st.booleans()):
            g.add_node("fc", features=features)
            g.add_edge(src, "fc", op="dense")
        else:
            g.add_node("fc", features=features, merge="input", op="dense")
            g.add_edge(src, "fc", op="dense", features=draw(st.integers(1, 3)))
        names.append("fc")
    g.graph["output"] = names[-1]
    return df.validate(g)


GRAPH_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------
# Welch bounds and closed forms
# --------------------------------------------------------------------------
def simplex_frame(n: int) -> np.ndarray:
    """``n + 1`` unit vectors in ``R^n`` with pairwise inner products ``-1/n``."""
    e = np.eye(n + 1) - 1.0 / (n + 1)  # centred basis, spans an n-dim subspace
    basis = np.linalg.svd(e)[0][:, :n]  # orthonormal basis of that subspace
    frame = basis.T @ e
    return frame / np.linalg.norm(frame, axis=0)


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_simplex_attains_welch(n):
    frame = simplex_frame(n)
    assert frame.shape == (n, n + 1)
    mu = geo.mutual_coherence(frame)
    assert mu == pytest.approx(1.0 / n, abs=1e-12)
    assert mu == pytest.approx(geo.welch_bound(n + 1, n), abs=1e-12)
    assert geo.frame_potential(frame) == pytest.approx(
        geo.frame_potential_bound(n + 1, n), abs=1e-10
    )


@pytest.mark.parametrize("n", [1, 4, 9])
def test_orthonormal_basis(n):
    q = np.linalg.qr(np.random.default_rng(n).standard_normal((n, n)))[0]
    assert geo.mutual_coherence(q) == pytest.approx(0.0, abs=1e-12)
    assert geo.frame_potential(q) == pytest.approx(n, abs=1e-10)
    assert geo.welch_bound(n, n) == 0.0


@pytest.mark.parametrize("n_atoms,dim", [(5, 2), (7, 3), (12, 5)])
def test_complex_harmonic_frame_is_tight(n_atoms, dim):
    # rows of the N-point DFT: a unit norm tight frame of C^n
    k = np.arange(dim)[:, None] * np.arange(n_atoms)[None, :]
    frame = np.exp(2j * np.pi * k / n_atoms) / math.sqrt(dim)
    assert geo.frame_potential(frame) == pytest.approx(n_atoms**2 / dim, rel=1e-12)
    bound = geo.frame_potential_bound(n_atoms, dim, field="complex")
    assert bound == pytest.approx(n_atoms**2 / dim)
    assert geo.mutual_coherence(frame) >= geo.welch_bound(n_atoms, dim, field="complex") - 1e-12


@pytest.mark.parametrize("bases,dim", [(2, 3), (3, 4)])
def test_union_of_orthonormal_bases_is_tight(bases, dim):
    rng = np.random.default_rng(0)
    frame = np.concatenate(
        [np.linalg.qr(rng.standard_normal((dim, dim)))[0] for _ in range(bases)], axis=1
    )
    assert geo.frame_potential(torch.as_tensor(frame)) == pytest.approx(
        geo.frame_potential_bound(bases * dim, dim), rel=1e-12
    )


def test_icosahedron_lines_are_equiangular():
    # 6 diagonals of the icosahedron: an equiangular tight frame of R^3, mu = 1/sqrt(5)
    phi = (1 + math.sqrt(5)) / 2
    v = np.array(
        [[0, 1, phi], [0, 1, -phi], [1, phi, 0], [1, -phi, 0], [phi, 0, 1], [-phi, 0, 1]]
    ).T
    assert geo.mutual_coherence(v) == pytest.approx(1 / math.sqrt(5), abs=1e-12)
    assert geo.welch_bound(6, 3) == pytest.approx(1 / math.sqrt(5), abs=1e-12)


def test_welch_constants():
    assert geo.welch_bound(10, 4) == pytest.approx(math.sqrt(6 / 36))
    assert geo.frame_potential_bound(10, 4, k=2) == pytest.approx(100 * 3 / (4 * 6))
    assert geo.frame_potential_bound(10, 4, k=2, field="complex") == pytest.approx(100 / 10)
    assert geo.frame_potential_bound(10, 4, k=3) == pytest.approx(100 * 15 / (4 * 6 * 8))
    assert geo.frame_potential_bound(10, 4, k=3, field="complex") == pytest.approx(
        100 / math.comb(6, 3)
    )
    assert geo.welch_bound(1, 3) == 0.0
    assert geo.welch_bound(3, 5, k=2) == 0.0  # vacuous: N c_k <= 1


@pytest.mark.parametrize("args", [(0, 3), (3, 0), (3, 3, 0), (2.5, 3), (True, 3)])
def test_welch_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        geo.welch_bound(*args)


def test_welch_rejects_bad_field():
    with pytest.raises(ValueError, match="field"):
        geo.frame_potential_bound(4, 2, field="quaternion")


@settings(max_examples=30, deadline=None)
@given(
    dim=st.integers(2, 6),
    extra=st.integers(1, 12),
    k=st.integers(1, 4),
    complex_=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_order_k_bounds_hold_on_random_frames(dim, extra, k, complex_, seed):
    rng = np.random.default_rng(seed)
    n_atoms = dim + extra
    frame = rng.standard_normal((dim, n_atoms))
    if complex_:
        frame = frame + 1j * rng.standard_normal((dim, n_atoms))
    field = "complex" if complex_ else "real"
    fp_k = geo.frame_potential(frame, k=k)
    assert fp_k >= geo.frame_potential_bound(n_atoms, dim, k, field) * (1 - 1e-12)
    assert geo.mutual_coherence(frame) >= geo.welch_bound(n_atoms, dim, k, field) - 1e-12


def test_plain_matrix_deep_frame_potential_is_the_mean_off_diagonal():
    rng = np.random.default_rng(3)
    frame = rng.standard_normal((4, 9))
    gram = frame.T @ frame
    norms = np.sqrt(np.diag(gram))
    gram = gram / np.outer(norms, norms)
    off = gram[~np.eye(9, dtype=bool)]
    assert geo.deep_frame_potential(frame) == pytest.approx(np.mean(off**2), rel=1e-12)
    assert geo.frame_potential(frame) == pytest.approx(np.sum(gram**2), rel=1e-12)


# --------------------------------------------------------------------------
# structured == dense
# --------------------------------------------------------------------------
def _compare(d: GlobalDictionary, tol: float = TOL):
    s = geo.gram_metrics(d, method="structured")
    r = geo.gram_metrics(d, method="dense")
    assert s.n_atoms == r.n_atoms and s.n_rows == r.n_rows
    assert s.nonzero_atoms == r.nonzero_atoms
    assert s.structural_nonzeros == r.structural_nonzeros
    assert s.coherence == pytest.approx(r.coherence, abs=tol)
    assert s.frame_potential == pytest.approx(r.frame_potential, abs=tol, rel=tol)
    assert s.deep_frame_potential == pytest.approx(r.deep_frame_potential, abs=tol)
    return s, r


@GRAPH_SETTINGS
@given(g=conv_graphs(), seed=st.integers(0, 1000))
def test_structured_equals_dense_on_drawn_graphs(g, seed):
    d = df.dictionary(g, seed=seed)
    s, _ = _compare(d)
    s2 = geo.frame_potential(d, k=2)
    assert s2 == pytest.approx(geo.frame_potential(d, k=2, method="dense"), rel=TOL, abs=TOL)
    # the reported location attains the coherence (checked through D @ e_i)
    if s.coherence > 0:
        i, j = (a["column"] for a in s.attained_at["atoms"])
        eye = torch.zeros((2, d.shape[1]), dtype=torch.float64)
        eye[0, i] = eye[1, j] = 1
        cols = d.matvec(eye)
        cos = float(cols[0] @ cols[1] / (cols[0].norm() * cols[1].norm()))
        assert abs(cos) == pytest.approx(s.coherence, abs=TOL)


@GRAPH_SETTINGS
@given(g=conv_graphs(), seed=st.integers(0, 1000))
def test_bounds_are_below_attained_values(g, seed):
    d = df.dictionary(g, seed=seed)
    m = geo.gram_metrics(d)
    b = geo.lower_bounds(d, orders=(1, 2, 3))
    assert b["structural_nonzeros"] == m.structural_nonzeros
    assert b["atoms"] == m.nonzero_atoms
    slack = 1e-12
    assert b["welch_coherence"] <= m.coherence + slack
    assert b["structured_coherence"] <= m.coherence + slack
    assert b["welch_coherence"] <= b["structured_coherence"] + slack
    for row in b["welch"]:
        assert row["coherence"] <= m.coherence + slack
    assert b["welch_frame_potential"] <= m.frame_potential * (1 + slack)
    assert b["structured_frame_potential"] <= m.frame_potential * (1 + slack)
    assert m.deep_frame_potential <= m.coherence**2 + slack
    assert b["structured_coherence"] ** 2 <= m.deep_frame_potential + slack


@pytest.mark.parametrize(
    "builder",
    [
        lambda: df.resnet((2, 9, 7), 1, widths=(2, 3, 4)),
        lambda: df.resnet((2, 9, 7), 1, widths=(2, 3, 4), shortcut="B"),
        lambda: df.densenet((1, 7, 9), 2, widths=(2, 3, 2)),
        lambda: df.chain((2, 9, 9), [3, 2, 4], strides=[2, 1, 2], merge="input"),
        lambda: df.chain((6,), [4, 5, 3]),
        lambda: _pad_before(df.resnet((2, 9, 7), 1, widths=(2, 3, 6))),
    ],
)
def test_structured_equals_dense_on_builders(builder):
    _compare(df.dictionary(builder(), seed=4))


def _pad_before(g: nx.DiGraph) -> nx.DiGraph:
    """Option-A shortcuts with all their zero channels behind the kept ones (pad_before=0)."""
    for *_, a in g.edges(data=True):
        if a["op"] == "shortcut":
            a["pad_before"] = 0
    return df.validate(g)


def _cancelling_graph() -> nx.DiGraph:
    """Block (a, b) gets -I from the identity edge a -> b and +I from node m's two
    identity inputs: it is zero for all weights (structurally zero)."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 4, 5))
    g.add_node("a", channels=2)
    g.add_node("b", channels=2)
    g.add_node("m", channels=3, merge="input", op="conv", kernel_size=3)
    g.add_edge("x", "a", op="conv", kernel_size=3)
    g.add_edge("a", "b", op="identity")
    g.add_edge("a", "m", op="identity")
    g.add_edge("b", "m", op="identity")
    return df.validate(g)


def test_parameter_free_cancellation_is_structurally_zero():
    d = df.dictionary(_cancelling_graph(), seed=0)
    s, _ = _compare(d)
    rows = {tuple(r["blocks"]): r for r in geo.coherence_breakdown(d)}
    assert ("a", "b") not in rows  # -I + I: neither nonzero nor structurally nonzero
    assert ("a", "m") in rows and ("b", "m") in rows


def test_zero_atoms_are_left_at_zero():
    # the node-centric shortcut pads 2 zero channels: those atoms of the sink are zero
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 5, 5))
    g.add_node("a", channels=2)
    g.add_node("b", channels=4, merge="input", op="shortcut", stride=2)
    g.add_edge("x", "a", op="conv", kernel_size=3)
    g.add_edge("a", "b", op="identity")
    d = df.dictionary(df.validate(g), seed=0)
    s, _ = _compare(d)
    assert s.nonzero_atoms == d.shape[1] - 2 * 3 * 3
    assert geo.lower_bounds(d)["atoms"] == s.nonzero_atoms


def test_all_atoms_zero():
    # z is 1x1; the node's 1x1 conv with padding 1 and stride 2 only ever reads padding
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 3, 3))
    g.add_node("a", channels=2, merge="input", op="conv", kernel_size=1, stride=2, padding=1)
    g.add_edge("x", "a", op="conv", kernel_size=3, padding=0, stride=2, channels=1)
    d = df.dictionary(df.validate(g), seed=0)
    s, _ = _compare(d)
    assert (s.nonzero_atoms, s.coherence, s.frame_potential) == (0, 0.0, 0.0)
    b = geo.lower_bounds(d)
    assert b["atoms"] == 0 and b["structured_coherence"] == 0.0


def test_float32_structured_matches_float64():
    g = df.resnet((3, 11, 11), 1, widths=(4, 6, 8))
    d64 = df.dictionary(g, seed=2)
    d32 = GlobalDictionary(g, {k: v.float() for k, v in d64.weights.items()})
    a, b = geo.gram_metrics(d64), geo.gram_metrics(d32)
    assert b.coherence == pytest.approx(a.coherence, rel=1e-5)
    assert b.frame_potential == pytest.approx(a.frame_potential, rel=1e-5)
    assert b.deep_frame_potential == pytest.approx(a.deep_frame_potential, rel=1e-5)


def test_structured_gradient_equals_dense_gradient():
    g = df.resnet((2, 7, 7), 1, widths=(2, 3, 4))
    weights = {k: v.requires_grad_(True) for k, v in random_weights(g, seed=5).items()}
    d = GlobalDictionary(g, weights)
    plan = GramPlan.build(d)
    structured = plan.evaluate(coherence=False).offdiagonal / plan.structural_nonzeros()
    grads = torch.autograd.grad(structured, list(weights.values()))
    structure = dense_structure(d, geo.DEFAULT_MEMORY_BUDGET)
    gram, _ = normalised_gram(dense_matrix(d, geo.DEFAULT_MEMORY_BUDGET))
    dense = gram.pow(2)[structure].sum() / structure.sum()
    dense_grads = torch.autograd.grad(dense, list(weights.values()))
    assert structured.item() == pytest.approx(dense.item(), abs=TOL)
    for a, b in zip(grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def test_breakdown_maximum_is_the_coherence():
    d = df.dictionary(df.resnet((1, 9, 9), 1, widths=(2, 3, 3)), seed=1)
    rows = geo.coherence_breakdown(d)
    mu = geo.mutual_coherence(d)
    assert rows[0]["max"] == pytest.approx(mu, abs=TOL)
    assert sum(r["structural_nonzeros"] for r in rows) == geo.gram_metrics(d).structural_nonzeros
    dense_rows = {tuple(r["blocks"]): r for r in geo.coherence_breakdown(d, method="dense")}
    for r in rows:
        other = dense_rows[tuple(r["blocks"])]
        assert r["max"] == pytest.approx(other["max"], abs=TOL)
        assert r["frame_potential"] == pytest.approx(other["frame_potential"], abs=TOL)
        assert r["structural_nonzeros"] == other["structural_nonzeros"]


def test_dense_refuses_beyond_memory_budget():
    d = df.dictionary(df.resnet((3, 32, 32), 1), seed=0)
    with pytest.raises(geo.GramTooLargeError, match="73728") as info:
        geo.mutual_coherence(d, method="dense")
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="memory_budget"):
        geo.frame_potential(np.ones((3, 40)), method="dense", memory_budget=1000)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        geo.mutual_coherence(np.eye(3), method="fast")


# --------------------------------------------------------------------------
# structured bounds: denser skips lower the coherence bound
# --------------------------------------------------------------------------
def test_denser_skips_at_cifar_size():
    """Builders at (3, 32, 32): same nodes and widths, differing only in skips.

    Every skip adds rows, so with skips ``n > N`` and both structured bounds are
    vacuous (0); the chain keeps ``n < N`` and a positive bound. ``N_nz`` grows
    strictly with the skips (figures in docs/geometry.md).
    """
    shape = (3, 32, 32)
    graphs = {
        "chain": df.resnet(shape, 1, skips=False),
        "resnet": df.resnet(shape, 1),
        "densenet": df.densenet(shape, 2),
    }
    bounds = {name: geo.lower_bounds(g) for name, g in graphs.items()}
    assert {b["atoms"] for b in bounds.values()} == {73728}
    assert [bounds[k]["rows"] for k in graphs] == [72704, 113664, 113664]
    nnz = [bounds[k]["structural_nonzeros"] for k in graphs]
    assert nnz == [54407168, 54452224, 63360000]
    mu = {name: b["structured_coherence"] for name, b in bounds.items()}
    assert mu["chain"] == pytest.approx(0.0043688, rel=1e-4)
    assert mu["chain"] > mu["resnet"] == mu["densenet"] == 0.0


def _skip_family(kind: str) -> nx.DiGraph:
    """x -> a -> b -> c -> d (3x3 convs, 1, 1, 1, 16 channels at 6x6): an overcomplete
    sink, so the structured bounds are not vacuous. ``resnet`` adds the identity skip
    a -> c; ``densenet`` a learned conv from every earlier non-adjacent node."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 6, 6))
    prev = "x"
    for name, width in zip("abcd", (1, 1, 1, 16)):
        g.add_node(name, channels=width)
        g.add_edge(prev, name, op="conv", kernel_size=3)
        prev = name
    if kind == "resnet":
        g.add_edge("a", "c", op="identity")
    if kind == "densenet":
        for src, dst in (("a", "c"), ("a", "d"), ("b", "d")):
            g.add_edge(src, dst, op="conv", kernel_size=3)
    return df.validate(g)


def test_denser_skips_lower_the_structured_coherence_bound():
    bounds = {k: geo.lower_bounds(_skip_family(k)) for k in ("chain", "resnet", "densenet")}
    assert {b["atoms"] for b in bounds.values()} == {684}
    nnz = [bounds[k]["structural_nonzeros"] for k in ("chain", "resnet", "densenet")]
    assert nnz == [157716, 157788, 174612]
    fp = [bounds[k]["structured_frame_potential"] for k in ("chain", "resnet", "densenet")]
    assert fp == pytest.approx([9324.0, 9324.0, 3180.0])
    mu = [bounds[k]["structured_coherence"] for k in ("chain", "resnet", "densenet")]
    assert mu == pytest.approx([0.2340556, 0.2340022, 0.1195598], rel=1e-6)
    assert mu[0] > mu[1] > mu[2] > 0
    for k, b in bounds.items():  # and each bound holds
        assert (
            b["structured_coherence"]
            <= geo.mutual_coherence(df.dictionary(_skip_family(k), seed=0)) + 1e-12
        )


def test_lower_bounds_accepts_graph_dictionary_and_matrix():
    g = df.chain((1, 6, 6), [2, 3])
    a, b = geo.lower_bounds(g), geo.lower_bounds(df.dictionary(g, seed=9))
    assert a == b
    m = geo.lower_bounds(np.random.default_rng(0).standard_normal((3, 7)))
    assert m["atoms"] == 7 and m["rows"] == 3
    assert m["structured_coherence"] == pytest.approx(geo.welch_bound(7, 3))


# --------------------------------------------------------------------------
# minimisation
# --------------------------------------------------------------------------
def test_minimize_frame_potential_lowers_dfp_and_is_reproducible():
    g = df.resnet((1, 6, 6), 1, widths=(2, 3, 3))
    res = geo.minimize_frame_potential(g, steps=25, lr=0.05, seed=3)
    assert len(res.history) == 26
    assert res.final < 0.8 * res.initial
    assert geo.deep_frame_potential(res.dictionary) == pytest.approx(res.final, rel=1e-12)
    again = geo.minimize_frame_potential(g, steps=25, lr=0.05, seed=3, device="cpu")
    assert again.history == res.history
    for k in res.weights:
        assert torch.equal(res.weights[k], again.weights[k])


def test_minimize_structured_and_dense_agree():
    g = df.chain((1, 5, 5), [2, 3], strides=[1, 2])
    a = geo.minimize_frame_potential(g, steps=8, lr=0.05, seed=1)
    b = geo.minimize_frame_potential(g, steps=8, lr=0.05, seed=1, method="dense")
    np.testing.assert_allclose(a.history, b.history, rtol=1e-8, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_minimize_frame_potential_does_not_depend_on_device():
    g = df.resnet((1, 6, 6), 1, widths=(2, 3, 3))
    cpu = geo.minimize_frame_potential(g, steps=10, lr=0.05, seed=3)
    gpu = geo.minimize_frame_potential(g, steps=10, lr=0.05, seed=3, device="cuda")
    np.testing.assert_allclose(cpu.history, gpu.history, rtol=1e-9)
    for k in cpu.weights:
        torch.testing.assert_close(cpu.weights[k], gpu.weights[k].cpu(), rtol=1e-8, atol=1e-10)


def test_minimize_rejects_bad_arguments():
    g = df.chain((1, 4, 4), [2])
    with pytest.raises(ValueError, match="steps"):
        geo.minimize_frame_potential(g, steps=-1)
    with pytest.raises(ValueError, match="lr"):
        geo.minimize_frame_potential(g, lr=0.0)


# --------------------------------------------------------------------------
# the report behind `deepframe metrics`
# --------------------------------------------------------------------------
def test_metrics_report_is_json_serialisable():
    g = df.resnet((3, 8, 8), 1, widths=(2, 3, 4))
    report = metrics_report(g, details=True)
    text = json.dumps(report)
    back = json.loads(text)
    for key in (
        "atoms",
        "rows",
        "welch",
        "bounds",
        "coherence",
        "frame_potential",
        "deep_frame_potential",
        "structural_nonzeros",
        "attained_at",
    ):
        assert key in back
    assert back["attained_at"]["blocks"] == [str(n) for n in back["attained_at"]["blocks"]]
    assert back["bounds"]["structured_coherence"] <= back["coherence"]
    assert back["blocks"][0]["max"] == pytest.approx(back["coherence"])
    dense = metrics_report(g, method="dense")
    assert dense["coherence"] == pytest.approx(report["coherence"], abs=TOL)


def test_metrics_report_lives_in_geometry():
    """The report of the geometry belongs to the geometry package (the command line
    formats and prints it); deepframe.metrics_report is the same function."""
    assert df.metrics_report is metrics_report
    assert geo.metrics_report is metrics_report
    assert "metrics_report" in df.__all__ and "metrics_report" in geo.__all__


def test_measure_is_gram_metrics_and_lower_bounds():
    """One plan for both: the same numbers as the two separate calls."""
    g = df.resnet((2, 7, 7), 1, widths=(2, 3, 4))
    d = df.dictionary(g, seed=3)
    both = geo.measure(d, orders=(1, 2), details=True)
    assert both.metrics == geo.gram_metrics(d, deep=True, details=True)
    assert both.bounds == geo.lower_bounds(d, orders=(1, 2))
    dense = geo.measure(d, method="dense")
    assert dense.metrics.method == "dense"
    assert dense.metrics.coherence == pytest.approx(both.metrics.coherence, abs=TOL)
    with pytest.raises(TypeError, match="GlobalDictionary"):
        geo.measure(g)


@pytest.mark.parametrize(
    "builder",
    [
        lambda: df.resnet((2, 9, 7), 1, widths=(2, 3, 4)),
        lambda: df.resnet((2, 9, 7), 1, widths=(2, 3, 4), shortcut="B"),
        lambda: df.densenet((1, 7, 9), 2, widths=(2, 3, 2)),
        lambda: df.chain((2, 9, 9), [3, 2, 4], strides=[2, 1, 2], merge="input"),
        lambda: df.chain((6,), [4, 5, 3]),
    ],
)
def test_structured_equals_dense_with_column_scales(builder):
    """Batch norm folded (synthesis blocks scaled per channel, identity and shortcut
    ones included): the structured engine reads the scales, the dense reference
    takes D.todense(); the structural count stays the architecture's."""
    d = df.dictionary(builder(), seed=4)
    g = torch.Generator().manual_seed(6)
    scales = {
        j: torch.rand(d.node_shapes[j][0], generator=g, dtype=torch.float64) * 2 + 0.2
        for j in d.nodes
    }
    folded = GlobalDictionary(d.graph, d.weights, column_scales=scales)
    s, _ = _compare(folded)
    assert s.structural_nonzeros == geo.gram_metrics(d).structural_nonzeros
    # (the coherence may coincide: a node with synthesis blocks only scales as a whole)
    assert s.frame_potential != pytest.approx(geo.frame_potential(d), rel=1e-6)


def test_deep_frame_potential_normalisation_as_documented():
    """DFP = mean of the *squared* off-diagonal Gram entries of the unit-norm columns
    over the *structurally* nonzero ordered pairs (numpy, from the definition);
    mu^2 >= DFP >= (FP_lb - N') / N_nz; the minimised DFP is attained by its weights."""
    g = df.resnet((1, 5, 5), 1, widths=(2, 3))
    d = df.dictionary(g, seed=2)
    m = d.todense().numpy()
    norms = np.linalg.norm(m, axis=0)
    live = norms > 0
    gram = (m[:, live] / norms[live]).T @ (m[:, live] / norms[live])
    # S: entries nonzero at two independent random draws of the weights (a nonzero
    # polynomial in the weights vanishes on a null set)
    pattern = np.zeros((d.shape[1], d.shape[1]), dtype=bool)
    for seed in (11, 12):
        other = df.dictionary(g, seed=seed).todense().numpy()
        pattern |= np.abs(other.T @ other) > 1e-14
    np.fill_diagonal(pattern, False)
    structure = pattern[np.ix_(live, live)]
    off = gram.copy()
    np.fill_diagonal(off, 0.0)
    expected = (off[structure] ** 2).sum() / structure.sum()
    metrics = geo.gram_metrics(d)
    assert metrics.structural_nonzeros == pattern.sum()
    assert metrics.deep_frame_potential == pytest.approx(expected, rel=1e-12)
    n_live = int(live.sum())
    assert metrics.deep_frame_potential == pytest.approx(
        ((gram**2).sum() - n_live) / structure.sum(), rel=1e-12
    )
    assert np.abs(off).max() ** 2 >= metrics.deep_frame_potential
    bounds = geo.lower_bounds(d)
    floor = (bounds["structured_frame_potential"] - n_live) / structure.sum()
    assert metrics.deep_frame_potential >= floor - 1e-15
    result = geo.minimize_frame_potential(g, steps=5, lr=0.02, seed=2)
    assert result.final == pytest.approx(geo.deep_frame_potential(result.dictionary), rel=1e-12)
    assert geo.mutual_coherence(result.dictionary) ** 2 >= result.final
