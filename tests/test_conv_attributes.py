"""Convolutions as torchvision writes them (issue 19, item 3): groups, dilation,
non-square kernels, per-axis strides and paddings.

The registry's generic tests (tests/test_edge_kinds.py, tests/test_ops.py,
tests/test_geometry.py) draw these attributes; here: models read by
``from_torch`` reproduce their logits exactly, the structured geometry of
hand-written grouped and dilated graphs equals the dense one and the
independent reference dictionary, the norm bounds decompose as proved, the
graph refuses bad attributes naming the edge, and the Jacobi sweep groups
grouped convolutions.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepframe as df
from deepframe import geometry as geo
from deepframe import ops
from deepframe.memory import estimate_memory
from deepframe.testing import assert_shapes_match_torch, reference_dictionary

f64 = torch.float64


def _randomise(model, seed=0):
    """Random batch-norm statistics and affine parameters, random biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def _images(shape, batch=3, seed=1):
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed))


def _exact(model, shape):
    """from_torch + compile(method="feedforward") against the model, float64, 1e-10."""
    x = _images(shape)
    g, weights = df.from_torch(model, x[:2])
    net = df.compile(g, method="feedforward", weights=weights, dtype=f64).eval()
    with torch.no_grad():
        got = net(x.double())
        want = model.double().eval()(x.double())
    assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()
    return g


class _Head(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Linear(channels, 5)

    def forward(self, h):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class AlexNetStem(nn.Module):
    """AlexNet's first convolution (11x11, stride 4, padding 2), then a grouped 5x5
    (the original two-GPU AlexNet's groups=2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(8, 6, 5, padding=2, groups=2)
        self.head = _Head(6)

    def forward(self, x):
        return self.head(F.relu(self.conv2(F.relu(self.conv1(x)))))


class DepthwiseSeparable(nn.Module):
    """A depthwise 3x3 (groups = channels) with batch norm, then a pointwise 1x1."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.head = _Head(12)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        h = F.relu(self.bn1(self.dw(h)))
        return self.head(F.relu(self.pw(h)))


class Dilated(nn.Module):
    """Dilated convolutions, equal and per axis, the module and functional spellings."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=2, dilation=2)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=(2, 1), dilation=(2, 1))
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3) * 0.3)
        self.head = _Head(4)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.relu(F.conv2d(h, self.weight, stride=2, padding=3, dilation=3, groups=2))
        return self.head(h)


class NonSquare(nn.Module):
    """Non-square kernels with unequal strides and paddings per axis."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, (1, 3), padding=(0, 1))
        self.conv2 = nn.Conv2d(6, 6, (3, 1), stride=(2, 1), padding=(1, 0))
        self.conv3 = nn.Conv2d(6, 8, (3, 5), stride=(1, 2), padding=(1, 2), groups=2)
        self.head = _Head(8)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.head(F.relu(self.conv3(h)))


class Bottleneck(nn.Module):
    """torchvision's ResNeXt bottleneck: 1x1, grouped 3x3 (stride here), 1x1, + shortcut."""

    def __init__(self, c_in, width, c_out, groups, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNeXt(nn.Module):
    """A small ResNeXt (cardinality 4, bottleneck width 8): a 7x7 stride-2 stem, a
    downsampling block with a projection shortcut, a block with an identity one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Bottleneck(8, 8, 16, groups=4, stride=2)
        self.block2 = Bottleneck(16, 8, 16, groups=4, stride=1)
        self.head = _Head(16)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        return self.head(self.block2(self.block1(h)))


class ParallelMaps(nn.Module):
    """Maps the importer must combine: a depthwise conv plus the identity from one node
    (one edge), a dilated conv plus a 1x1 conv from one node, and a grouped conv of a
    concatenation (one edge per part, each part a block of the grouped weight)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.point = nn.Conv2d(4, 4, 1)
        self.grouped = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.head = _Head(6)

    def forward(self, x):
        a = F.relu(self.stem(x))
        b = F.relu(self.dw(a) + a)
        c = F.relu(self.dilated(b) + self.point(b))
        return self.head(F.relu(self.grouped(torch.cat([b, c], 1))))


MODELS = {
    "alexnet stem": (AlexNetStem, (3, 39, 35)),
    "depthwise separable": (DepthwiseSeparable, (3, 9, 8)),
    "dilated": (Dilated, (3, 11, 10)),
    "non-square": (NonSquare, (3, 9, 12)),
    "resnext bottleneck": (ResNeXt, (3, 16, 16)),
    "parallel maps": (ParallelMaps, (3, 7, 6)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_from_torch_feedforward_equals_the_model(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    g = _exact(_randomise(make()), shape)
    assert_shapes_match_torch(g)  # the attributes as the edges state them, read by torch


def test_from_torch_writes_the_attributes_on_the_edges():
    torch.manual_seed(0)
    g = _exact(_randomise(AlexNetStem()), (3, 39, 35))
    convs = sorted(
        (a for *_, a in g.edges(data=True) if a["op"] == "conv"), key=lambda a: -a["out_shape"][1]
    )
    first, second = convs
    assert (first["kernel_size"], first["stride"], first["padding"]) == (11, 4, 2)
    assert "groups" not in first and "dilation" not in first
    assert (second["kernel_size"], second["padding"], second["groups"]) == (5, 2, 2)
    torch.manual_seed(0)
    g = _exact(_randomise(NonSquare()), (3, 9, 12))
    kernels = {tuple(ops.pair(a["kernel_size"])): a for *_, a in g.edges(data=True)}
    assert kernels[(1, 3)]["kernel_size"] == [1, 3] and kernels[(1, 3)]["padding"] == [0, 1]
    assert kernels[(3, 1)]["stride"] == [2, 1] and kernels[(3, 1)]["padding"] == [1, 0]
    assert kernels[(3, 5)]["stride"] == [1, 2] and kernels[(3, 5)]["groups"] == 2
    torch.manual_seed(0)
    g = _exact(_randomise(Dilated()), (3, 11, 10))
    dilations = sorted(str(a.get("dilation", 1)) for *_, a in g.edges(data=True))
    assert dilations == ["2", "3", "[2, 1]"]
    # node-link JSON keeps them
    again = df.graph.loads(df.graph.dumps(g))
    for k, j, a in g.edges(data=True):
        for key in ("kernel_size", "stride", "padding", "dilation", "groups"):
            assert again.edges[k, j].get(key) == a.get(key)


def test_resnext_block_keeps_its_groups_and_geometry():
    """The grouped 3x3s stay grouped edges (weights C_out x C_in / 4), and the imported
    dictionary's structured geometry equals the dense one."""
    torch.manual_seed(0)
    model = _randomise(ResNeXt())
    g, weights = df.from_torch(model, _images((3, 16, 16), 2))
    grouped = [(k, j) for k, j, a in g.edges(data=True) if a.get("groups", 1) == 4]
    assert len(grouped) == 2
    for k, j in grouped:
        assert tuple(weights[f"{k}->{j}"].shape) == (8, 2, 3, 3)
    d = df.dictionary(g, weights=weights)
    assert d.dottest() < 1e-10
    _same_geometry(d)


# --------------------------------------------------------------------------
# the structured geometry of grouped and dilated graphs
# --------------------------------------------------------------------------
def _same_geometry(d):
    s = geo.gram_metrics(d, method="structured")
    r = geo.gram_metrics(d, method="dense")
    assert s.n_atoms == r.n_atoms and s.n_rows == r.n_rows
    assert s.nonzero_atoms == r.nonzero_atoms
    assert s.structural_nonzeros == r.structural_nonzeros
    assert s.coherence == pytest.approx(r.coherence, abs=1e-10)
    assert s.frame_potential == pytest.approx(r.frame_potential, rel=1e-10)
    assert s.deep_frame_potential == pytest.approx(r.deep_frame_potential, rel=1e-10)


def _grouped_graph():
    """Grouped and depthwise convs with identity, shortcut and grouped-projection skips."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(2, 7, 6))
    g.add_node("a", channels=4)
    g.add_node("b", channels=4, batchnorm=True)
    g.add_node("c", channels=6)
    g.add_node("d", channels=6)
    g.add_edge("x", "a", op="conv", kernel_size=[3, 1], stride=[1, 2], groups=2)
    g.add_edge("a", "b", op="conv", kernel_size=3, groups=4, dilation=2)
    g.add_edge("x", "b", op="conv", kernel_size=1, stride=[1, 2])
    g.add_edge("b", "c", op="conv", kernel_size=[3, 5], stride=2, padding=[1, 2], groups=2)
    g.add_edge("a", "c", op="project", stride=2, groups=2)
    g.add_edge("c", "d", op="conv", kernel_size=3, groups=3, dilation=[1, 2])
    g.add_edge("a", "d", op="project", stride=2, groups=2)
    return g


def _node_centric_graph():
    """Node-centric nodes whose own operator is grouped (and dilated), fed by grouped
    convolutions, identities and shortcuts."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(3, 6, 6))
    g.add_node("a", channels=6)
    g.add_node("b", channels=6)
    g.add_node("c", channels=6, merge="input", op="conv", kernel_size=3, groups=3, dilation=2)
    g.add_node("e", channels=4, merge="input", op="project", groups=2, stride=[2, 1])
    g.add_edge("x", "a", op="conv", kernel_size=3, groups=3)
    g.add_edge("a", "b", op="conv", kernel_size=[1, 3], groups=6)
    g.add_edge("a", "c", op="identity")
    g.add_edge("b", "c", op="conv", kernel_size=3, groups=2, channels=6)
    g.add_edge("c", "e", op="identity")
    g.add_edge("b", "e", op="shortcut")
    return g


@pytest.mark.parametrize("make", [_grouped_graph, _node_centric_graph])
def test_structured_geometry_of_grouped_dilated_graphs_equals_dense(make):
    g = make()
    assert_shapes_match_torch(g)
    d = df.dictionary(g, seed=4)
    dense = d.todense().detach().numpy()
    reference = reference_dictionary(df.validate(g), d.weights).toarray()
    np.testing.assert_allclose(dense, reference, rtol=0, atol=1e-14)
    _same_geometry(d)


def test_grouped_structural_count_is_below_the_ungrouped_one():
    """Groups remove Gram entries for every weight (the dense check above counts them
    from the support of two random weight draws): the grouped graph's N_nz is strictly
    below that of the same graph without groups."""
    grouped = _grouped_graph()
    plain = grouped.copy()
    for *_, a in plain.edges(data=True):
        a.pop("groups", None)
    count = geo.gram_metrics(df.dictionary(grouped, seed=0)).structural_nonzeros
    assert count < geo.gram_metrics(df.dictionary(plain, seed=0)).structural_nonzeros


# --------------------------------------------------------------------------
# norm bounds
# --------------------------------------------------------------------------
def test_grouped_bound_is_the_largest_group_bound():
    """||A||^2 of a grouped conv is the largest of its groups' (independent blocks):
    the bound is exactly the maximum of the per-group bounds."""
    w = torch.randn((6, 2, 3, 3), generator=torch.Generator().manual_seed(0), dtype=f64)
    grouped = ops.conv_sqnorm_bound(w, (9, 8), (2, 1), 1, groups=3)
    per_group = [ops.conv_sqnorm_bound(w[2 * j : 2 * j + 2], (9, 8), (2, 1), 1) for j in range(3)]
    assert float(grouped) == pytest.approx(max(float(b) for b in per_group), rel=1e-13)
    # and the ungrouped (block-diagonal) weight gives the same norm, never a smaller bound
    full = ops.conv_sqnorm_bound(ops.block_diagonal(w, 3), (9, 8), (2, 1), 1)
    assert float(full) == pytest.approx(float(grouped), rel=1e-9)


def test_dilated_bound_is_that_of_the_dilated_kernel():
    w = torch.randn((3, 2, 3, 2), generator=torch.Generator().manual_seed(1), dtype=f64)
    got = ops.conv_sqnorm_bound(w, (11, 9), 2, (2, 1), dilation=(2, 3))
    want = ops.conv_sqnorm_bound(ops.dilated_kernel(w, (2, 3)), (11, 9), 2, (2, 1))
    assert float(got) == float(want)
    op = ops.Conv(w, (2, 11, 9), stride=2, padding=(2, 1), dilation=(2, 3))
    plain = ops.Conv(ops.dilated_kernel(w, (2, 3)), (2, 11, 9), stride=2, padding=(2, 1))
    torch.testing.assert_close(op.todense(), plain.todense(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, groups",
    [(3, 1, 2, 2, 8), ((3, 5), (2, 1), (1, 2), 1, 4), (3, 2, 1, (1, 2), 2)],
)
def test_bound_is_tight_on_a_large_map(kernel, stride, padding, dilation, groups):
    """On a 40x40 map the periodic bound is within 5% of the norm (power iteration,
    a lower bound): the boundary effect fades with the map's size."""
    k = ops.pair(kernel)
    w = torch.randn((8, 8 // groups, *k), generator=torch.Generator().manual_seed(2), dtype=f64)
    op = ops.Conv(w, (8, 40, 40), stride, padding, dilation, groups)
    bound, estimate = float(op.sqnorm_bound()), op.sqnorm(iterations=500, tol=1e-12)
    assert estimate <= bound <= 1.05 * estimate


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, groups",
    [(3, 1, 1, 1, 2), ((3, 5), (2, 1), (1, 2), 1, 4), (3, 2, 2, 2, 4), ((1, 3), (1, 3), 0, 2, 1)],
)
def test_change_bound_is_an_upper_bound(kernel, stride, padding, dilation, groups):
    k = ops.pair(kernel)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn((4, 4 // groups, *k), generator=gen, dtype=f64)
    delta = torch.randn(w.shape, generator=gen, dtype=f64)
    op = ops.Conv(w, (4, 9, 8), stride, padding, dilation, groups)
    exact = float(torch.linalg.matrix_norm(op.with_weight(delta).todense(), ord=2))
    assert exact <= float(op.change_norm_bound(delta))
    # the groups' maximum, never more than the ungrouped tap sum of the same kernel
    plain = ops.Conv(ops.block_diagonal(delta, groups), (4, 9, 8), stride, padding, dilation)
    assert float(op.change_norm_bound(delta)) <= float(plain.change_norm_bound(plain.weight))


# --------------------------------------------------------------------------
# graph validation: bad attributes name the edge
# --------------------------------------------------------------------------
def _one_edge(**attrs):
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(4, 8, 8))
    g.add_node("a", channels=6)
    g.add_edge("x", "a", **attrs)
    return g


@pytest.mark.parametrize(
    "attrs, fragment",
    [
        ({"op": "conv", "kernel_size": 3, "groups": 4}, r"groups=4 needs channels divisible by 4"),
        ({"op": "conv", "kernel_size": 3, "groups": 3}, r"maps 4 input channels to 6 output"),
        ({"op": "conv", "kernel_size": 3, "groups": 0}, r"'groups' must be >= 1"),
        ({"op": "conv", "kernel_size": [3, 3, 3]}, r"integer or a pair \[height, width\]"),
        ({"op": "conv", "kernel_size": [3, 0]}, r"\(width\): attribute 'kernel_size' must be >= 1"),
        ({"op": "conv", "kernel_size": 3, "dilation": [2, 1.5]}, r"'dilation' must be an integer"),
        ({"op": "conv", "kernel_size": 3, "groups": [1, 1]}, r"'groups' must be an integer"),
        ({"op": "conv", "kernel_size": [9, 3], "padding": [0, 1]}, r"kernel \(9, 3\), stride 1"),
        ({"op": "conv", "kernel_size": 5, "dilation": 3, "padding": 0}, r"dilation 3\) shrinks"),
        ({"op": "project", "stride": [2, 1], "groups": 4}, r"groups=4 needs channels divisible"),
        ({"op": "shortcut", "stride": [2, 1]}, r"op 'shortcut' takes one value for both axes"),
    ],
)
def test_bad_attributes_are_clear_errors_naming_the_edge(attrs, fragment):
    with pytest.raises(df.ArchitectureError, match=r"edge 'x' -> 'a'") as info:
        df.validate(_one_edge(**attrs))
    assert info.match(fragment), str(info.value)


def test_groups_on_a_dense_project_and_on_an_edge_centric_node_are_refused():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(6,))
    g.add_node("a", features=4)
    g.add_edge("x", "a", op="project", groups=2)
    with pytest.raises(df.ArchitectureError, match="edge 'x' -> 'a': groups=2 on a project"):
        df.validate(g)
    g = _one_edge(op="conv", kernel_size=3)
    g.nodes["a"]["groups"] = 2
    with pytest.raises(df.ArchitectureError, match=r"node 'a': attributes \['groups'\] belong"):
        df.validate(g)


# --------------------------------------------------------------------------
# the pursuit's conv paths and the memory estimates
# --------------------------------------------------------------------------
def _chain_of_grouped():
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(4, 8, 7))
    previous = "x"
    for name in ("a", "b", "c", "d"):
        g.add_node(name, channels=4, bias=0.05, batchnorm=name in ("b", "d"))
        g.add_edge(previous, name, op="conv", kernel_size=[3, 5], dilation=[2, 1], groups=2)
        previous = name
    g.add_edge("a", "c", op="conv", kernel_size=[3, 5], dilation=[2, 1], groups=2)
    return g


def test_jacobi_groups_grouped_convolutions_and_equals_one_call_per_term():
    from deepframe.solvers import conv_groups

    g = _chain_of_grouped()
    options = {"method": "deep", "iterations": 3, "alpha": "fista", "schedule": "jacobi"}
    grouped = df.compile(g, dtype=f64, **options).train()
    # x->a, a->b, b->c, c->d, a->c: one shape, kernel, dilation and groups
    assert [len(group) for group in grouped._conv_groups] == [5]
    assert conv_groups(df.terms.structure(df.validate(g)).terms) == grouped._conv_groups
    single = df.compile(g, dtype=f64, **options).train()
    single.load_state_dict(grouped.state_dict())
    single._conv_groups = []
    x, y = _images((4, 8, 7), batch=3), torch.tensor([0, 1, 2])
    results = []
    for net in (single, grouped):
        x_ = x.double().requires_grad_()
        net.zero_grad(set_to_none=True)
        logits = net(x_)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), x_.grad, {n: p.grad for n, p in net.named_parameters()}))
    (want, want_x, want_p), (got, got_x, got_p) = results
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
    assert torch.allclose(got_x, want_x, rtol=1e-10, atol=1e-14)
    for name, grad in want_p.items():
        if grad is not None:
            assert torch.allclose(got_p[name], grad, rtol=1e-10, atol=1e-14), name


def test_deep_pursuit_with_grouped_convolutions_matches_feedforward_at_zero_iterations():
    g = _grouped_graph()
    deep = df.compile(g, method="deep", iterations=0, dtype=f64, seed=1).eval()
    ff = df.compile(g, method="feedforward", dtype=f64, seed=1).eval()
    ff.load_state_dict(deep.state_dict())
    x = _images((2, 7, 6))
    with torch.no_grad():
        torch.testing.assert_close(deep(x.double()), ff(x.double()), rtol=1e-12, atol=1e-12)


def test_memory_estimate_counts_grouped_weights_and_non_square_taps():
    g = df.validate(_grouped_graph())
    est = estimate_memory(g)
    want = 0
    for _, _, a in g.edges(data=True):
        kernel = ops.pair(a.get("kernel_size", 1))
        want += a["out_shape"][0] * a["in_shape"][0] // a.get("groups", 1) * math.prod(kernel)
    assert est.weights == want
    assert est.max_taps == 15  # the 3x5 kernel
    spec = ops.Conv.spec(
        {"kernel_size": 3, "groups": 2, "stride": [2, 1]}, (4, 9, 8), (6, 5, 8), "w"
    )
    # the DFT of each group's C_out/2 x (C_in/2) s_h s_w kernel and its Gram, per frequency
    grid = (-(-max(9 + 1, 2 * 5, 3, 2 * 4 + 3 - 1) // 2), max(8 + 1, 8, 3, 7 + 3 - 1))
    per_group = 3 * (2 * 2) + 2 * min(3, 4) ** 2
    assert spec.bound_bytes() == 40 * grid[0] * (grid[1] // 2 + 1) * 2 * per_group
