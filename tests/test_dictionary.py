"""The global dictionary: structure (Eq. 12, Eq. 16), adjoint, exports and the objective.

Every dense comparison is against :mod:`deepframe.testing.reference`, which
builds each block from the weights by explicit loops (never deepframe.ops)
and assembles D with ``scipy.sparse.bmat``.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import deepframe as df
from deepframe.dictionary import GlobalDictionary
from deepframe.terms import parameter_shapes
from deepframe.testing import (
    assert_dottest,
    assert_matches_dense,
    assert_matches_reference,
    conv_matrix,
    dense_matrix,
    operator_matrix,
    reference_blocks,
    shortcut_matrix,
)


def node_centric_skips() -> nx.DiGraph:
    """Node-centric graph (Eq. 16-18) whose merges use every edge kind.

    ``a``: conv node fed by the input; ``b``: strided conv node summing ``a``
    (identity) and a conv of the input; ``c``: dense node summing ``b``
    (identity), an option-A shortcut of ``a`` and a projection of the input.
    """
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(1, 5, 5))
    g.add_node("a", channels=2, merge="input", op="conv", kernel_size=3, bias=0.1)
    g.add_node(
        "b", channels=3, merge="input", op="conv", kernel_size=3, stride=2, bias=[0.0, 0.2, 0.3]
    )
    g.add_node("c", features=4, merge="input", op="dense")
    g.add_edge("x", "a")
    g.add_edge("a", "b", op="identity")
    g.add_edge("x", "b", op="conv", kernel_size=3, channels=2)
    g.add_edge("b", "c")
    g.add_edge("a", "c", op="shortcut", stride=2, channels=3)
    g.add_edge("x", "c", op="project", stride=2, channels=3)
    return g


def mixed_edge_centric() -> nx.DiGraph:
    """Edge-centric graph with every edge kind and odd sizes."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(2, 7, 5))
    g.add_node("a", channels=2, bias=0.05)
    g.add_node("b", channels=3)
    g.add_node("c", channels=4, batchnorm=True)
    g.add_node("d", features=3, bias=[0.1, 0.0, 0.2])
    g.add_edge("x", "a", op="conv", kernel_size=3)
    g.add_edge("a", "b", op="conv", kernel_size=3, stride=2)
    g.add_edge("x", "b", op="project", stride=2)
    g.add_edge("b", "c", op="conv", kernel_size=1, padding=0)
    g.add_edge("a", "c", op="shortcut", stride=2)
    g.add_edge("c", "d", op="dense")
    g.add_edge("x", "d", op="dense")
    g.add_edge("a", "d", op="dense")
    return g


GRAPHS = {
    "chain conv": lambda: df.chain((1, 6, 5), [2, 3, 2], strides=[1, 2, 1], bias=0.1),
    "chain dense": lambda: df.chain((7,), [5, 4, 3], bias=0.2),
    "chain node-centric": lambda: df.chain((2, 5, 5), [2, 3], strides=[2, 1], merge="input"),
    "resnet A": lambda: df.resnet((2, 6, 6), 1, widths=(2, 3, 4)),
    "resnet B": lambda: df.resnet((1, 5, 5), 1, widths=(2, 2, 3), shortcut="B"),
    "densenet": lambda: df.densenet((1, 5, 5), 2, widths=(2, 3)),
    "node-centric skips": lambda: df.validate(node_centric_skips()),
    "mixed edge-centric": lambda: df.validate(mixed_edge_centric()),
}
PARAMS = [pytest.param(build, id=name) for name, build in GRAPHS.items()]


@pytest.fixture(scope="module")
def dictionaries():
    return {name: df.dictionary(build(), seed=3) for name, build in GRAPHS.items()}


@pytest.fixture(params=list(GRAPHS))
def D(request, dictionaries) -> GlobalDictionary:
    return dictionaries[request.param]


# --------------------------------------------------------------------------
# adjoint and matrix
# --------------------------------------------------------------------------
def test_dot_test(D):
    assert assert_dottest(D, rtol=1e-10) < 1e-10
    assert D.dottest() < 1e-10


def test_matvec_equals_todense(D):
    assert_matches_dense(D, rtol=1e-12, atol=1e-12)


def test_todense_and_tosparse_equal_independent_bmat_assembly(D):
    assert_matches_reference(D, atol=1e-13)


def test_vector_and_batch_shapes(D):
    n, big_n = D.shape
    w = torch.randn(big_n, dtype=torch.float64)
    r = torch.randn(n, dtype=torch.float64)
    assert tuple((D @ w).shape) == (n,)
    assert tuple((D.T @ r).shape) == (big_n,)
    assert D.T.shape == (big_n, n)
    batch = torch.stack([w, 2 * w, -w])
    out = D @ batch
    assert tuple(out.shape) == (3, n)
    torch.testing.assert_close(out[1], 2 * (D @ w))
    torch.testing.assert_close((D.T @ torch.stack([r, r]))[0], D.T @ r)
    with pytest.raises(ValueError, match="N="):
        D @ torch.zeros(big_n + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="n="):
        D.T @ torch.zeros((2, n + 1), dtype=torch.float64)


def test_as_linear_operator(D):
    dense = D.todense().numpy()
    op = D.as_linear_operator()
    assert op.shape == D.shape
    rng = np.random.default_rng(0)
    w = rng.standard_normal(D.shape[1])
    r = rng.standard_normal(D.shape[0])
    np.testing.assert_allclose(op @ w, dense @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(r), dense.T @ r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.T @ r, dense.T @ r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.matmat(np.eye(D.shape[1])[:, :3]), dense[:, :3], atol=1e-12)


def test_blocks_are_the_structural_nonzeros(D):
    nodes, terms = reference_blocks(D.graph, D.weights)
    assert [name for name, _ in D.row_blocks] == [name for name, _ in terms]
    assert [j for j, _ in D.col_blocks] == nodes
    expected = {(name, k) for name, blocks in terms for k in blocks}
    assert set(D.blocks) == expected
    dense = D.todense().numpy()
    for (name, size), start in zip(D.row_blocks, D.row_offsets):
        for (j, width), col in zip(D.col_blocks, D.col_offsets):
            block = dense[start : start + size, col : col + width]
            if (name, j) not in D.blocks:
                assert not block.any(), (name, j)


def test_float32_dictionary():
    D32 = df.dictionary(GRAPHS["resnet A"](), seed=1, dtype=torch.float32)
    assert D32.dtype == torch.float32
    assert_dottest(D32, rtol=1e-5)
    D64 = df.dictionary(GRAPHS["resnet A"](), seed=1)
    w = torch.randn(D64.shape[1], dtype=torch.float64)
    torch.testing.assert_close((D32 @ w.float()).double(), D64 @ w, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# Eq. 12 and Eq. 16 block by block
# --------------------------------------------------------------------------
def _block(D, dense, row, col):
    r = [name for name, _ in D.row_blocks].index(row)
    c = D.nodes.index(col)
    return dense[
        D.row_offsets[r] : D.row_offsets[r] + D.row_sizes[r],
        D.col_offsets[c] : D.col_offsets[c] + D.col_sizes[c],
    ]


def test_chain_is_eq_12():
    """``D = [[B1, 0, 0], [-I, B2, 0], [0, -I, B3]]`` with ``B_l`` the conv matrix transposed."""
    g = df.chain((1, 6, 5), [2, 3, 2], strides=[1, 2, 1])
    D = df.dictionary(g, seed=7)
    dense = D.todense().numpy()
    layers = ["l1", "l2", "l3"]
    rows = ["x->l1", "l1->l2", "l2->l3"]
    assert [name for name, _ in D.row_blocks] == rows
    assert D.nodes == layers
    shapes = {"x": (1, 6, 5), **{j: g.nodes[j]["shape"] for j in layers}}
    previous = ["x", *layers]
    for i, row in enumerate(rows):
        for j, col in enumerate(layers):
            block = _block(D, dense, row, col)
            if j == i:  # B_l = A_l^T
                a = conv_matrix(D.weights[row], shapes[previous[i]], stride=[1, 2, 1][i], padding=1)
                np.testing.assert_array_equal(block, a.T)
            elif j == i - 1:
                np.testing.assert_array_equal(block, -np.eye(block.shape[0]))
            else:
                assert not block.any()
    x = torch.randn(2, 1, 6, 5, dtype=torch.float64)
    y = D.target(x)  # [x; 0; 0]
    torch.testing.assert_close(y[:, :30], x.reshape(2, -1))
    assert not y[:, 30:].any()
    assert D.block_map().splitlines()[2:] == [
        " x->l1 |  B  0  0",
        "l1->l2 | -I  B  0",
        "l2->l3 |  0 -I  B",
    ]


def test_dense_chain_is_eq_12():
    g = df.chain((6,), [4, 3])
    D = df.dictionary(g, seed=2)
    dense = D.todense().numpy()
    expected = np.block(
        [
            [dense_matrix(D.weights["x->l1"]).T, np.zeros((6, 3))],
            [-np.eye(4), dense_matrix(D.weights["l1->l2"]).T],
        ]
    )
    np.testing.assert_array_equal(dense, expected)


def test_node_centric_graph_is_eq_16():
    """Row block j: ``-B_jk^T`` (the edge's forward matrix, negated) at k, ``B_j`` at j."""
    g = df.validate(node_centric_skips())
    D = df.dictionary(g, seed=5)
    W = D.weights
    dense = D.todense().numpy()
    assert [name for name, _ in D.row_blocks] == ["a", "b", "c"]
    a_mat = conv_matrix(W["a"], (1, 5, 5))  # (2*5*5, 25)
    b_mat = conv_matrix(W["b"], (2, 5, 5), stride=2)  # (3*3*3, 50)
    c_mat = dense_matrix(W["c"])  # (4, 27)
    e_ca = shortcut_matrix((2, 5, 5), 3, stride=2)  # (27, 50)
    expected = {
        ("a", "a"): a_mat.T,
        ("a", "b"): 0,
        ("a", "c"): 0,
        ("b", "a"): -np.eye(50),
        ("b", "b"): b_mat.T,
        ("b", "c"): 0,
        ("c", "a"): -e_ca,
        ("c", "b"): -np.eye(27),
        ("c", "c"): c_mat.T,
    }
    for (row, col), value in expected.items():
        block = _block(D, dense, row, col)
        if isinstance(value, int):
            assert not block.any(), (row, col)
        else:
            np.testing.assert_array_equal(block, value, err_msg=f"block ({row}, {col})")
    # the input's edges go into y: z_a = x, z_b gets conv(x), z_c gets project(x)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    xf = x.reshape(2, -1).numpy()
    y = D.target(x).numpy()
    proj = operator_matrix("project", {"stride": 2}, (1, 5, 5), (3, 3, 3), W["x->c"])
    conv = conv_matrix(W["x->b"], (1, 5, 5))
    np.testing.assert_allclose(y[:, :25], xf, atol=1e-14)
    np.testing.assert_allclose(y[:, 25:75], xf @ conv.T, atol=1e-12)
    np.testing.assert_allclose(y[:, 75:], xf @ proj.T, atol=1e-12)
    assert D.block_map().splitlines()[2:] == [
        "a |  B  0  0",
        "b | -I  B  0",
        "c | -E -I  B",
    ]


def test_chain_forms_give_the_same_dictionary():
    edge = df.chain((1, 5, 4), [2, 3], strides=[2, 1])
    node = df.chain((1, 5, 4), [2, 3], strides=[2, 1], merge="input")
    De = df.dictionary(edge, seed=4)
    Dn = df.dictionary(node, weights={"l1": De.weights["x->l1"], "l2": De.weights["l1->l2"]})
    torch.testing.assert_close(De.todense(), Dn.todense(), rtol=0, atol=0)


def test_resnet_block_map():
    D = df.dictionary(df.resnet((3, 8, 8), 1, widths=(4, 8, 16)), seed=0)
    lines = D.block_map().splitlines()
    assert lines[0].split() == ["|", "stem", "s1b1a", "s1b1b", "s2b1a", "s2b1b", "s3b1a", "s3b1b"]
    rows = {line.split("|")[0].strip(): line.split("|")[1].split() for line in lines[2:]}
    assert rows["stem->s1b1b"] == ["-I", "0", "B", "0", "0", "0", "0"]  # the identity skip
    assert rows["s1b1b->s2b1b"] == ["0", "0", "-I", "0", "B", "0", "0"]  # the shortcut
    assert len(rows) == 10  # 7 convs + 3 skips


# --------------------------------------------------------------------------
# the problem: target, objective, codes, Lipschitz constants
# --------------------------------------------------------------------------
def _lambda_vector(D) -> np.ndarray:
    parts = []
    for j in D.nodes:
        shape = D.node_shapes[j]
        bias = np.broadcast_to(np.asarray(D.graph.nodes[j].get("bias", 0.0), float), (shape[0],))
        parts.append(np.repeat(bias, int(np.prod(shape[1:]))))
    return np.concatenate(parts)


def test_target_and_objective_against_numpy(D):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, *D.input_shape))
    w = np.abs(rng.standard_normal((3, D.shape[1])))
    dense = D.todense().numpy()
    # y: the input's contributions; r = y - D w with the library's own residuals
    y = D.target(torch.from_numpy(x)).numpy()
    assert y.shape == (3, D.shape[0])
    codes = D.codes(torch.from_numpy(w))
    r = torch.cat([t.flatten(1) for t in D.residuals(torch.from_numpy(x), codes)], 1).numpy()
    np.testing.assert_allclose(r, y - w @ dense.T, rtol=1e-12, atol=1e-12)
    lam = _lambda_vector(D)
    expected = 0.5 * ((y - w @ dense.T) ** 2).sum(1) + w @ lam
    got = D.objective(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(
        D.objective(torch.from_numpy(x), codes).numpy(), expected, rtol=1e-12
    )


def test_target_of_an_edge_centric_graph_is_x_on_input_edges():
    D = df.dictionary(df.validate(mixed_edge_centric()), seed=0)
    x = torch.randn(2, 2, 7, 5, dtype=torch.float64)
    y = D.target(x)
    for (name, size), start in zip(D.row_blocks, D.row_offsets):
        part = y[:, start : start + size]
        if name.startswith("x->"):
            torch.testing.assert_close(part, x.reshape(2, -1))
        else:
            assert not part.any(), name
    with pytest.raises(ValueError, match="shape"):
        D.target(torch.zeros(2, 2, 5, 7, dtype=torch.float64))


def test_codes_and_flat_round_trip(D):
    w = torch.randn(4, D.shape[1], dtype=torch.float64)
    codes = D.codes(w)
    assert list(codes) == D.nodes
    for j in D.nodes:
        assert tuple(codes[j].shape) == (4, *D.node_shapes[j])
    torch.testing.assert_close(D.flat(codes), w, rtol=0, atol=0)
    single = D.codes(w[0])
    torch.testing.assert_close(D.flat(single)[0], w[0], rtol=0, atol=0)


def test_lipschitz_against_dense_block_norms(D):
    nodes, terms = reference_blocks(D.graph, D.weights)
    expected = {j: 0.0 for j in nodes}
    for _, blocks in terms:  # sum of squared spectral norms of column j's blocks
        for k, block in blocks.items():
            expected[k] += np.linalg.norm(block, 2) ** 2
    exact = D.lipschitz(exact=True)
    dense = D.todense().numpy()
    for j, start, size in zip(D.nodes, D.col_offsets, D.col_sizes):
        assert exact[j] == pytest.approx(expected[j], rel=1e-10)
        # L_j bounds the block Hessian D_j^T D_j
        hessian_norm = np.linalg.norm(dense[:, start : start + size], 2) ** 2
        assert hessian_norm <= exact[j] * (1 + 1e-10)


@pytest.mark.parametrize("name", ["chain conv", "node-centric skips", "mixed edge-centric"])
def test_lipschitz_by_power_iteration(dictionaries, name):
    D = dictionaries[name]
    exact = D.lipschitz(exact=True)
    approx = D.lipschitz(estimate=True)
    for j in D.nodes:
        assert approx[j] <= exact[j] * (1 + 1e-10)
        assert approx[j] == pytest.approx(exact[j], rel=1e-2)


def test_edge_centric_lipschitz_formula():
    """``L_j = sum_{k in pred(j)} ||B_kj||^2 + |succ(j)|`` (SPEC §3)."""
    g = df.validate(mixed_edge_centric())
    D = df.dictionary(g, seed=0)
    exact = D.lipschitz(exact=True)
    for j in D.nodes:
        norms = sum(
            np.linalg.norm(
                operator_matrix(
                    g.edges[k, j]["op"],
                    g.edges[k, j],
                    g.nodes[k]["shape"],
                    g.nodes[j]["shape"],
                    D.weights.get(f"{k}->{j}"),
                ),
                2,
            )
            ** 2
            for k in g.predecessors(j)
        )
        assert exact[j] == pytest.approx(norms + g.out_degree(j), rel=1e-10)


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------
def test_weights_are_seeded_he_normal():
    g = df.chain((8, 6, 6), [32, 16])
    a = df.dictionary(g, seed=0)
    b = df.dictionary(g, seed=0)
    c = df.dictionary(g, seed=1)
    for key in a.weights:
        torch.testing.assert_close(a.weights[key], b.weights[key], rtol=0, atol=0)
        assert not torch.equal(a.weights[key], c.weights[key])
    shapes = parameter_shapes(g)
    assert shapes["x->l1"] == ((32, 8, 3, 3), 72)
    for key, (shape, fan_in) in shapes.items():
        assert tuple(a.weights[key].shape) == shape
        std = float(a.weights[key].std())
        assert std == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.1)


def test_parameter_free_graph_and_missing_weights():
    g = df.validate(_identity_graph())
    D = df.dictionary(g)
    assert D.weights == {} and D.shape == (3, 3)
    np.testing.assert_array_equal(D.todense().numpy(), np.eye(3))
    with pytest.raises(ValueError, match="missing weights"):
        GlobalDictionary(df.chain((4,), [2]), {})


def _identity_graph():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(3,))
    g.add_node("a", features=3)
    g.add_edge("x", "a", op="identity")
    return g


def test_repr_and_shape():
    D = df.dictionary(df.chain((1, 4, 4), [2, 3]))
    assert D.shape == (16 + 32, 32 + 48)
    assert "48 rows x 80 atoms" in repr(D)


@pytest.mark.parametrize(
    ("key", "shape"),
    [("l1->l2", (4, 2, 3, 3)), ("x->l1", (2, 1, 5, 5)), ("l1->l2", (3, 2, 3))],
)
def test_weights_of_the_wrong_shape_are_rejected(key, shape):
    """A weight that does not fit the graph is a ValueError naming it, before any tensor work."""
    g = df.chain((1, 4, 4), [2, 3])
    weights = dict(df.dictionary(g).weights)
    weights[key] = torch.randn(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=key):
        GlobalDictionary(g, weights)


# --------------------------------------------------------------------------
# column scales (batch norm folded): synthesis blocks only
# --------------------------------------------------------------------------
def _scales(D, seed=4):
    g = torch.Generator().manual_seed(seed)
    return {
        j: torch.rand(D.node_shapes[j][0], generator=g, dtype=torch.float64) * 2 + 0.2
        for j in D.nodes[::2]  # every other node, so scaled and unscaled ones meet
    }


def test_column_scales_scale_the_synthesis_blocks_only(D):
    scales = _scales(D)
    S = GlobalDictionary(D.graph, D.weights, D.lambdas, column_scales=scales)
    nodes, terms = reference_blocks(D.graph, {k: w.numpy() for k, w in D.weights.items()})
    col = {j: i for i, j in enumerate(nodes)}
    grid = [[None] * len(nodes) for _ in terms]
    for r, ((name, blocks), t) in enumerate(zip(terms, S.terms)):
        assert name == t.name
        for k, block in blocks.items():
            if k == t.synth and k in scales:  # atoms (columns) of node k, per channel
                s = scales[k].numpy()
                block = block * np.repeat(s, block.shape[1] // s.size)[None, :]
            grid[r][col[k]] = block
    for r, (_, blocks) in enumerate(terms):
        for c in range(len(nodes)):
            if grid[r][c] is None:
                grid[r][c] = np.zeros((next(iter(blocks.values())).shape[0], D.col_sizes[c]))
    want = np.block(grid)
    np.testing.assert_allclose(S.todense().numpy(), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(S.tosparse().toarray(), want, rtol=1e-13, atol=1e-13)
    assert S.dottest() < 1e-10
    # the objective is 1/2 ||y - D w||^2 + <lambda, w> with the scaled matrix
    x = torch.rand(
        (2, *S.input_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    w = torch.rand((2, S.shape[1]), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = S.target(x).numpy() - w.numpy() @ want.T
    lam = _lambda_vector(S)
    expected = 0.5 * (r**2).sum(1) + w.numpy() @ lam
    np.testing.assert_allclose(S.objective(x, w).numpy(), expected, rtol=1e-12)
    # and the conversion keeps them
    S32 = S.to(torch.float32)
    assert set(S32.column_scales) == set(scales)
    assert all(s.dtype == torch.float32 for s in S32.column_scales.values())


def test_lipschitz_default_is_an_upper_bound_of_each_block(D):
    bound = D.lipschitz()
    exact = D.lipschitz(exact=True)
    dense = D.todense().numpy()
    for j, start, size in zip(D.nodes, D.col_offsets, D.col_sizes):
        assert bound[j] >= exact[j]
        assert bound[j] >= np.linalg.norm(dense[:, start : start + size], 2) ** 2


def test_bad_column_scales_are_clear_errors(dictionaries):
    D = dictionaries["chain conv"]
    j = D.nodes[0]
    with pytest.raises(ValueError, match="not an activation node"):
        GlobalDictionary(D.graph, D.weights, column_scales={"nope": torch.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        GlobalDictionary(D.graph, D.weights, column_scales={j: torch.ones(99)})
