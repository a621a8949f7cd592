"""Pursuit solvers against hand-written networks, autograd, scipy and scikit-learn."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from scipy.optimize import minimize

import deepframe as df
from deepframe.testing import architectures

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
f64 = torch.float64


def _x(shape, batch=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, *shape), generator=g, dtype=f64).to(device)


def _lam(net, j, dim=4):
    lam = net.lambdas()[j].detach()
    return lam.reshape(-1, 1, 1) if dim == 4 else lam


# ---------------------------------------------------------------------------
# feed-forward = the ordinary network (hand-written, same weights)
# ---------------------------------------------------------------------------
def _shortcut(h, channels):
    """Option A by hand: subsample by 2, zero channels split evenly."""
    pad = channels - h.shape[1]
    return F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, pad // 2, pad - pad // 2))


def _bn(net, j, a, updated=None):
    """An nn.BatchNorm2d with the net's running statistics, scale and -lambda shift.

    In eval mode; in training mode (batch statistics) when ``updated`` is a
    dict, which then receives node j's updated running statistics.
    """
    name = net._names[j]
    bn = torch.nn.BatchNorm2d(a.shape[1]).to(a.dtype).train(updated is not None)
    with torch.no_grad():
        bn.running_mean.copy_(getattr(net, f"bn_mean_{name}"))
        bn.running_var.copy_(getattr(net, f"bn_var_{name}"))
        bn.weight.copy_(net.bn_scale[name])
        bn.bias.copy_(-net.lambdas()[j])
    out = bn(a)
    if updated is not None:
        updated[name] = (bn.running_mean, bn.running_var)
    return out


def _act(net, j, a, batchnorm):
    """ReLU after batch norm (``batchnorm`` True: eval mode; a dict: training mode,
    see :func:`_bn`) or after the shift ``-lambda_j`` (``batchnorm`` False)."""
    if batchnorm is False:
        return F.relu(a - _lam(net, j, a.dim()))
    return F.relu(_bn(net, j, a, None if batchnorm is True else batchnorm))


def plain_chain(net, x, bn):
    W = net.weight_dict()
    h = _act(net, "l1", F.conv2d(x, W["x->l1"], padding=1), bn)
    h = _act(net, "l2", F.conv2d(h, W["l1->l2"], padding=1, stride=2), bn)
    return _act(net, "l3", F.conv2d(h, W["l2->l3"], padding=1), bn)


def plain_resnet(net, x, bn):
    """The CIFAR ResNet-8 of He et al. (option A), written out."""
    W = net.weight_dict()
    h = _act(net, "stem", F.conv2d(x, W["x->stem"], padding=1), bn)
    for s, stride in ((1, 1), (2, 2), (3, 2)):
        a, b = f"s{s}b1a", f"s{s}b1b"
        prev = "stem" if s == 1 else f"s{s - 1}b1b"
        u = _act(net, a, F.conv2d(h, W[f"{prev}->{a}"], padding=1, stride=stride), bn)
        skip = h if stride == 1 else _shortcut(h, u.shape[1])
        # the graph sums the incoming edges in order of the source names
        pre = F.conv2d(u, W[f"{a}->{b}"], padding=1) + skip
        h = _act(net, b, pre, bn)
    return h


def plain_densenet(net, x, bn):
    W = net.weight_dict()
    h = _act(net, "stem", F.conv2d(x, W["x->stem"], padding=1), bn)
    entry, stride = "stem", 1
    for s in (1, 2):
        out = {}
        for i in (1, 2, 3):
            name = f"d{s}l{i}"
            sources = sorted([entry] + [f"d{s}l{m}" for m in range(1, i)])
            pre = None
            for src in sources:  # summed in order of the source names
                v = h if src == entry else out[src]
                st = stride if src == entry else 1
                c = F.conv2d(v, W[f"{src}->{name}"], padding=1, stride=st)
                pre = c if pre is None else pre + c
            out[name] = _act(net, name, pre, bn)
        h, entry, stride = out[f"d{s}l3"], f"d{s}l3", 2
    return h


CASES = {
    "chain": (
        lambda bn: df.chain((3, 9, 9), [4, 5, 6], strides=[1, 2, 1], bias=0.05, batchnorm=bn),
        plain_chain,
        "l3",
    ),
    "resnet": (
        lambda bn: df.resnet((3, 8, 8), 1, widths=(4, 8, 8), bias=0.05, batchnorm=bn),
        plain_resnet,
        "s3b1b",
    ),
    "densenet": (
        lambda bn: df.densenet((3, 8, 8), 3, widths=(3, 4), bias=0.05, batchnorm=bn),
        plain_densenet,
        "d2l3",
    ),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_feedforward_equals_plain_network(case, batchnorm, device):
    build, plain, out = CASES[case]
    net = df.compile(build(batchnorm), method="feedforward", dtype=f64, device=device).eval()
    if batchnorm:  # non-trivial running statistics and scales
        g = torch.Generator().manual_seed(1)
        for name, buf in net.named_buffers():
            if name.startswith("bn_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=f64) * 0.1)
            if name.startswith("bn_var"):
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=f64) + 0.5)
        with torch.no_grad():
            for p in net.bn_scale.values():
                p.copy_(torch.rand(p.shape, generator=g, dtype=f64) + 0.5)
    x = _x(net.input_shape, device=device)
    with torch.no_grad():
        got = net.encode(x)[out]
        want = plain(net, x, batchnorm)
    assert torch.equal(got, want)
    # and the classifier head on top
    with torch.no_grad():
        logits = net.head(want.flatten(2).mean(2))
        assert torch.equal(net(x), logits)


@pytest.mark.parametrize("case", sorted(CASES))
def test_feedforward_in_training_mode_equals_plain_network(case):
    """Batch statistics and running-statistic updates as nn.BatchNorm2d has them,
    whether or not the pass completes the problem (a traced pass folds batch norm,
    an untraced T = 0 pass does not need to)."""
    build, plain, out = CASES[case]
    net = df.compile(build(True), method="feedforward", dtype=f64).train()
    with torch.no_grad():
        for p in net.bn_scale.values():
            p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(2), dtype=f64))
            p.add_(0.5)
    x = _x(net.input_shape, batch=5)
    before = {name: buf.clone() for name, buf in net.named_buffers()}
    updated = {}
    with torch.no_grad():
        want = plain(net, x, updated)
    assert len(updated) == len(net.bn_scale) > 0
    for traced in (False, True):
        with torch.no_grad():
            for name, buf in net.named_buffers():
                buf.copy_(before[name])
            got = net.encode(x, trace=True)[0] if traced else net.encode(x)
        assert torch.equal(got[out], want)
        for name, (mean, var) in updated.items():
            assert torch.equal(getattr(net, f"bn_mean_{name}"), mean)
            assert torch.equal(getattr(net, f"bn_var_{name}"), var)


def test_layered_and_deep_with_zero_iterations_are_feedforward():
    g = CASES["resnet"][0](False)
    x = _x((3, 8, 8))
    ff = df.compile(g, method="feedforward", dtype=f64).eval()
    for method in ("layered", "deep"):
        net = df.compile(g, method=method, iterations=0, dtype=f64).eval()
        assert torch.equal(net(x), ff(x))


# ---------------------------------------------------------------------------
# the block gradient = autograd of f (Eq. 15 / Eq. 18)
# ---------------------------------------------------------------------------
def _node_centric_dense_skips():
    """Eq. 16: every node reconstructs the sum of all earlier nodes (identity E)."""
    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=(2, 6, 6))
    g.add_node("a", channels=3, merge="input", op="conv", kernel_size=3, bias=0.1)
    g.add_node("b", channels=3, merge="input", op="conv", kernel_size=3, stride=2, bias=0.1)
    g.add_node("c", channels=4, merge="input", op="conv", kernel_size=1, bias=0.1)
    g.add_edge("x", "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("a", "c", op="shortcut", stride=2, channels=3)
    return g


GRAPHS = {
    "chain": lambda: df.chain((2, 7, 7), [3, 4], strides=[2, 1], bias=0.1),
    "resnet": lambda: df.resnet((2, 6, 6), 1, widths=(2, 3, 3), bias=0.1),
    "resnet-B": lambda: df.resnet((2, 5, 5), 1, widths=(2, 3), shortcut="B", bias=0.1),
    "densenet": lambda: df.densenet((2, 6, 6), 2, widths=(2, 3), bias=0.1),
    "node-centric": _node_centric_dense_skips,
    "node-centric-chain": lambda: df.chain((2, 6, 6), [3, 3], merge="input", bias=0.1),
    "mlp": lambda: df.chain((12,), [7, 5], bias=0.1),
}


def _check_gradient(graph):
    net = df.compile(graph, method="deep", iterations=1, dtype=f64).eval()
    D = net.dictionary()
    x = _x(net.input_shape, batch=2)
    g = torch.Generator().manual_seed(3)
    codes = {
        j: torch.rand((2, *D.node_shapes[j]), generator=g, dtype=f64).requires_grad_()
        for j in D.nodes
    }
    smooth = sum(0.5 * r.pow(2).sum() for r in D.residuals(net.normalize(x), codes))
    auto = torch.autograd.grad(smooth, [codes[j] for j in D.nodes])
    ours = net.gradient(x, {j: c.detach() for j, c in codes.items()})
    for j, a in zip(D.nodes, auto):
        torch.testing.assert_close(ours[j], a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_block_gradient_equals_autograd(name):
    _check_gradient(GRAPHS[name]())


# ---------------------------------------------------------------------------
# deep pursuit converges to the global non-negative LASSO minimiser
# ---------------------------------------------------------------------------
def _dense_problem(net, x):
    D = net.dictionary()
    A = D.todense().numpy()
    y = D.target(net.normalize(x)).numpy()[0]
    lam = np.concatenate(
        [np.repeat(D.lambdas[j].numpy(), int(np.prod(D.node_shapes[j][1:]))) for j in D.nodes]
    )
    return D, A, y, lam


def _lbfgsb(A, y, lam):
    def fun(w):
        r = y - A @ w
        return 0.5 * r @ r + lam @ w, -A.T @ r + lam

    res = minimize(
        fun,
        np.zeros(A.shape[1]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0, None)] * A.shape[1],
        options={"maxiter": 50000, "ftol": 1e-16, "gtol": 1e-12},
    )
    return res.x, res.fun


def _descend(graph, seed, sweeps=1500):
    """DP with alpha = 0, beta = 1 and exact L_j; checks that F never increases."""
    net = df.compile(graph, method="deep", iterations=sweeps, beta=1.0, dtype=f64).eval()
    net.refresh_lipschitz(exact=True)
    x = _x(net.input_shape, batch=1, seed=seed)
    with torch.no_grad():
        codes, trace = net.encode(x, trace=True)
    obj = trace.objective[:, 0]
    assert torch.all(obj[1:] <= obj[:-1] * (1 + 1e-12) + 1e-12)
    return net, x, codes, obj


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_deep_pursuit_descends_and_reaches_the_minimiser(name):
    net, x, codes, obj = _descend(GRAPHS[name](), seed=5)
    D, A, y, lam = _dense_problem(net, x)
    w_ref, f_ref = _lbfgsb(A, y, lam)
    w = D.flat(codes).numpy()[0]
    r = y - A @ w
    f_dp = 0.5 * r @ r + lam @ w
    assert abs(float(obj[-1]) - f_dp) <= 1e-10 * abs(f_dp)  # trace F = dense F
    assert (f_dp - f_ref) / abs(f_ref) < 1e-6
    # KKT at the limit: w >= 0, -grad <= lambda, equality on the support.
    grad = -A.T @ r
    assert w.min() >= 0
    scale = np.abs(A.T @ y).max()
    assert np.all(grad + lam >= -1e-5 * scale)
    support = w > 1e-8
    assert np.all(np.abs(grad[support] + lam[support]) <= 1e-5 * scale)


def test_deep_pursuit_matches_sklearn_lasso_single_lambda():
    from sklearn.linear_model import Lasso

    g = df.chain((1, 6, 6), [3, 4], bias=0.2)
    net = df.compile(g, method="deep", iterations=3000, beta=1.0, dtype=f64).eval()
    net.refresh_lipschitz(exact=True)
    x = _x(net.input_shape, batch=1, seed=2)
    with torch.no_grad():
        codes = net.encode(x)
    D, A, y, lam = _dense_problem(net, x)
    n = A.shape[0]
    lasso = Lasso(
        alpha=float(lam[0]) / n, positive=True, fit_intercept=False, tol=1e-14, max_iter=200000
    ).fit(A, y)

    def F_(w):
        r = y - A @ w
        return 0.5 * r @ r + lam @ w

    w = D.flat(codes).numpy()[0]
    assert (F_(w) - F_(lasso.coef_)) / F_(lasso.coef_) < 1e-6
    assert np.allclose(w, lasso.coef_, atol=1e-4 * np.abs(lasso.coef_).max())


def test_jacobi_schedule_and_fista_reach_the_same_minimiser():
    g = GRAPHS["chain"]()
    x = _x((2, 7, 7), batch=1, seed=9)
    ref = df.compile(g, method="deep", iterations=1500, beta=1.0, dtype=f64).eval()
    ref.refresh_lipschitz(exact=True)
    with torch.no_grad():
        f_ref = ref.dictionary().objective(ref.normalize(x), ref.encode(x))
    for options in ({"alpha": "fista"}, {"schedule": "jacobi", "beta": 1.0}):
        net = df.compile(g, method="deep", iterations=1500, dtype=f64, **options).eval()
        net.load_state_dict(ref.state_dict(), strict=False)
        net.refresh_lipschitz(exact=True)
        with torch.no_grad():
            f = net.dictionary().objective(net.normalize(x), net.encode(x))
        assert float((f - f_ref) / f_ref) < 1e-6, options


# ---------------------------------------------------------------------------
# layered pursuit: each node solves its own local problem
# ---------------------------------------------------------------------------
def test_layered_pursuit_solves_each_local_problem():
    from sklearn.linear_model import Lasso

    g = df.resnet((2, 6, 6), 1, widths=(2, 3), bias=0.15)
    net = df.compile(g, method="layered", iterations=3000, beta=1.0, dtype=f64).eval()
    net.refresh_lipschitz(exact=True)
    x = _x(net.input_shape, batch=1, seed=4)
    with torch.no_grad():
        codes = net.encode(x)
    D = net.dictionary()
    xn = net.normalize(x)
    full = {**codes, D.input: xn}
    for j in D.nodes:
        # The node's own terms: the edges into j, predecessors' codes fixed.
        terms = [t for t in D.terms if t.synth == j]
        B = np.vstack([t.op.todense().numpy().T for t in terms])
        target = np.concatenate(
            [
                sum(p.forward(full[k]) for k, p in t.targets + [(D.input, q) for q in t.inputs])
                .flatten()
                .numpy()
                for t in terms
            ]
        )
        lam = float(D.lambdas[j][0])
        lasso = Lasso(
            alpha=lam / B.shape[0], positive=True, fit_intercept=False, tol=1e-14, max_iter=200000
        ).fit(B, target)
        w = codes[j].flatten().numpy()

        def local(v, B=B, target=target, lam=lam):
            r = target - B @ v
            return 0.5 * r @ r + lam * v.sum()

        assert (local(w) - local(lasso.coef_)) / local(lasso.coef_) < 1e-6, j


# ---------------------------------------------------------------------------
# differentiating through the iterations
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["deep", "layered"])
def test_gradcheck_through_three_iterations(method):
    g = df.resnet((1, 4, 4), 1, widths=(2, 2), bias=0.01)
    net = df.compile(g, method=method, iterations=3, alpha=0.3, dtype=f64).eval()
    x = _x((1, 4, 4), batch=2, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: net(v), (x,), eps=1e-6, atol=1e-6)
    y = torch.tensor([0, 1])
    loss = F.cross_entropy(net(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.all(grad.flatten(1).abs().sum(1) > 0)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_runs_and_trains_parameters(device):
    g = df.resnet((3, 8, 8), 1, widths=(4, 8), bias=0.05, batchnorm=True)
    net = df.compile(g, method="deep", iterations=2, device=device).train()
    x = torch.rand(4, 3, 8, 8, device=device)
    loss = F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3], device=device))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for p in net.beta_rho.values())


def test_trace_shapes_and_feedforward_entry():
    g = GRAPHS["resnet"]()
    net = df.compile(g, method="deep", iterations=4, dtype=f64).eval()
    x = _x(net.input_shape, batch=2)
    codes, trace = net.encode(x, trace=True)
    assert trace.objective.shape == (5, 2)
    assert set(trace.node_errors) == set(net.nodes)
    assert all(v.shape == (5, 2) for v in trace.term_errors.values())
    ff = df.compile(g, method="feedforward", dtype=f64).eval()
    ff.load_state_dict(net.state_dict(), strict=False)
    f0 = ff.dictionary().objective(ff.normalize(x), ff.encode(x))
    torch.testing.assert_close(trace.objective[0], f0.detach())


def test_dictionary_of_compiled_net_matches_seeded_dictionary():
    g = GRAPHS["densenet"]()
    net = df.compile(g, seed=3, dtype=f64)
    D1, D2 = net.dictionary(), df.dictionary(g, seed=3)
    for key, w in D2.weights.items():
        torch.testing.assert_close(D1.weights[key].double(), w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "magic"},
        {"schedule": "random"},
        {"threshold": "hard"},
        {"iterations": -1},
        {"alpha": 1.0},
        {"beta": 0.0},
        {"beta": 1.5},
    ],
)
def test_bad_options_are_clear_errors(bad):
    with pytest.raises(ValueError, match="compile"):
        df.compile(GRAPHS["chain"](), **bad)


def test_torch_compile_traces_the_unrolled_loop_without_graph_breaks():
    """``fullgraph=True`` fails on any graph break (host sync, data-dependent branch)."""
    g = df.resnet((2, 6, 6), 1, widths=(2, 3), bias=0.05, batchnorm=True)
    net = df.compile(g, method="deep", iterations=2, alpha="fista").eval()
    x = torch.rand(2, 2, 6, 6)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), net(x))


# ---------------------------------------------------------------------------
# training smoke test on the built-in digits
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["feedforward", "layered", "deep"])
def test_a_few_hundred_steps_on_digits_lower_the_loss(method):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    g = df.resnet((1, 8, 8), 1, widths=(8, 16), bias=0.01)
    torch.manual_seed(0)
    net = df.compile(g, method=method, iterations=3, mean=[0.3], std=[0.4]).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert np.isfinite(losses).all()
    assert last < 0.5 * first, (first, last)


# ---------------------------------------------------------------------------
# the same properties on drawn graphs
# ---------------------------------------------------------------------------
def _without_batchnorm(g):
    for _, a in g.nodes(data=True):
        a.pop("batchnorm", None)
    return g


def _sparse_problem(g):
    """lambda = 0.2 everywhere: a sparse, well-posed problem.

    With lambda near 0 and more atoms than rows the problem is nearly least squares
    and (block) ISTA converges sublinearly, O(1/t): a relative gap of 1e-6 can take
    far more than 1500 sweeps there (a rate, not an error: F still decreases at
    every sweep). With lambda = 0.2 every one of 120 drawn graphs checked reached
    1e-6 within 1500 sweeps.
    """
    for _, a in _without_batchnorm(g).nodes(data=True):
        if a.get("kind") != "input":
            a["bias"] = 0.2
    return g


@settings(max_examples=12, deadline=None, derandomize=True)
@given(graph=architectures(max_nodes=3, max_atoms=250).map(_sparse_problem))
def test_deep_pursuit_reaches_the_minimiser_on_drawn_graphs(graph):
    net, x, codes, obj = _descend(graph, seed=7)
    D, A, y, lam = _dense_problem(net, x)
    _, f_ref = _lbfgsb(A, y, lam)
    f_dp = float(obj[-1])
    assert (f_dp - f_ref) / max(abs(f_ref), 1e-12) < 1e-6


@settings(max_examples=15, deadline=None)
@given(graph=architectures(max_nodes=3, max_atoms=250).map(_without_batchnorm))
def test_block_gradient_equals_autograd_on_drawn_graphs(graph):
    _check_gradient(graph)


# ---------------------------------------------------------------------------
# L_j is a provable upper bound of the block Lipschitz constant
# ---------------------------------------------------------------------------
def _dense_tail():
    """A strided conv chain on odd sizes ending in a dense layer."""
    g = df.chain((2, 7, 5), [3, 2], strides=[2, 1], bias=0.1)
    g.add_node("fc", features=5, bias=0.1)
    g.add_edge("l2", "fc", op="dense")
    return df.graph.validate(g)


LIPSCHITZ_GRAPHS = {
    **GRAPHS,
    "chain-stride2-odd": lambda: df.chain((2, 9, 7), [3, 4, 2], strides=[2, 2, 1], bias=0.1),
    "dense-tail": _dense_tail,
}


def _with_batchnorm(g):
    for _, a in g.nodes(data=True):
        if a.get("kind") != "input":
            a["batchnorm"] = True
    return df.graph.validate(g)


def _random_bn_statistics(net, seed=1):
    """Non-trivial running statistics and scales (eval-mode batch norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.startswith("bn_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=f64) * 0.3)
            if name.startswith("bn_var"):
                buf.copy_(torch.rand(buf.shape, generator=g, dtype=f64) * 2 + 0.2)
        for p in net.bn_scale.values():
            p.copy_(torch.rand(p.shape, generator=g, dtype=f64) * 2 + 0.3)


def _block_hessian_top(net):
    """``lambda_max(D_j^T D_j)`` per node by numpy eigvalsh on the dense dictionary,
    batch norm folded by hand: the rows of node j's synthesis terms scaled per column
    by ``s_j = gamma / sqrt(running_var + eps)`` (its target rows are not)."""
    weights = {k: w.detach() for k, w in net.weight_dict().items()}
    D = df.GlobalDictionary(net.graph, weights)
    A = D.todense().numpy()
    out = {}
    for j, c0, size in zip(D.nodes, D.col_offsets, D.col_sizes):
        block = A[:, c0 : c0 + size].copy()
        name = net._names[j]
        if name in net.bn_scale:
            gamma = net.bn_scale[name].detach().numpy()
            var = getattr(net, f"bn_var_{name}").numpy()
            s = gamma / np.sqrt(var + 1e-5)
            per_column = np.repeat(s, size // s.size)
            for t, r0, rows in zip(D.terms, D.row_offsets, D.row_sizes):
                if t.synth == j:
                    block[r0 : r0 + rows] *= per_column
        out[j] = np.linalg.eigvalsh(block.T @ block)[-1]
    return out


def _check_lipschitz_bound(graph, batchnorm):
    net = df.compile(graph, method="deep", iterations=1, dtype=f64).eval()
    if batchnorm:
        _random_bn_statistics(net)
    lipschitz = net.lipschitz()
    truth = _block_hessian_top(net)
    for j in net.nodes:
        assert not lipschitz[j].requires_grad
        assert float(lipschitz[j]) >= truth[j], (j, float(lipschitz[j]), truth[j])
    return net, lipschitz, truth


@pytest.mark.parametrize("batchnorm", [False, True])
@pytest.mark.parametrize("name", sorted(LIPSCHITZ_GRAPHS))
def test_lipschitz_bounds_the_block_hessian(name, batchnorm):
    graph = LIPSCHITZ_GRAPHS[name]()
    _check_lipschitz_bound(_with_batchnorm(graph) if batchnorm else graph, batchnorm)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(graph=architectures(max_nodes=3, max_atoms=250))
def test_lipschitz_bounds_the_block_hessian_on_drawn_graphs(graph):
    _check_lipschitz_bound(graph, batchnorm=True)


def test_lipschitz_is_what_the_solver_uses(monkeypatch):
    """``net.lipschitz()`` returns the very L_j of an eval-mode forward pass, batch
    norm folded, and they carry no gradient (SPEC §4)."""
    g = _with_batchnorm(LIPSCHITZ_GRAPHS["resnet"]())
    net = df.compile(g, method="deep", iterations=2, dtype=f64).eval()
    _random_bn_statistics(net)
    used = {}
    original = net._node_lipschitz

    def record(terms, j, scale, dtype):
        used[j] = original(terms, j, scale, dtype)
        return used[j]

    monkeypatch.setattr(net, "_node_lipschitz", record)
    net(_x(net.input_shape))
    for j, value in net.lipschitz().items():
        assert torch.equal(used[j][0], value), j
        assert not used[j][0].requires_grad
    # in training (batch statistics) too, with gradients flowing elsewhere
    net.train()
    net(_x(net.input_shape)).sum().backward()
    assert all(not v[0].requires_grad and not v[1].requires_grad for v in used.values())


def test_exact_lipschitz_mode_is_a_tighter_upper_bound():
    g = _with_batchnorm(LIPSCHITZ_GRAPHS["resnet"]())
    net = df.compile(g, method="deep", iterations=1, dtype=f64).eval()
    _random_bn_statistics(net)
    bound = net.lipschitz()
    net.refresh_lipschitz(exact=True)
    exact = net.lipschitz()
    truth = _block_hessian_top(net)
    for j in net.nodes:
        assert truth[j] <= float(exact[j]) <= float(bound[j]) * (1 + 1e-12), j
    net.refresh_lipschitz()
    assert all(torch.equal(v, bound[j]) for j, v in net.lipschitz().items())


def test_float32_lipschitz_is_rounded_up():
    g = LIPSCHITZ_GRAPHS["chain"]()
    net64 = df.compile(g, method="deep", iterations=1, dtype=f64).eval()
    net32 = df.compile(g, method="deep", iterations=1).eval()
    net32.load_state_dict(net64.state_dict())  # the same (float32-representable) weights
    net64.load_state_dict(net32.state_dict())
    for j, v in net32.lipschitz().items():
        assert v.dtype == torch.float32
        assert float(v) >= float(net64.lipschitz()[j])


def test_eval_lipschitz_cache_follows_the_weights():
    """Eval forwards reuse L_j until a weight or running statistic changes."""
    g = _with_batchnorm(LIPSCHITZ_GRAPHS["chain"]())
    net = df.compile(g, method="deep", iterations=2, dtype=f64).eval()
    x = _x(net.input_shape)
    net(x)
    first = net._lipschitz_cache[1]
    net(x)
    assert net._lipschitz_cache[1] is first
    with torch.no_grad():
        net.weight_dict()["l1->l2"].mul_(2.0)
    net(x)
    assert net._lipschitz_cache[1] is not first
    for j, value in net.lipschitz().items():
        assert torch.equal(net._lipschitz_cache[1][j][0], value)
    second = net._lipschitz_cache[1]
    with torch.no_grad():
        getattr(net, f"bn_var_{net._names['l2']}").fill_(3.0)
    net(x)
    assert net._lipschitz_cache[1] is not second
    for j, value in net.lipschitz().items():
        assert torch.equal(net._lipschitz_cache[1][j][0], value)


# ---------------------------------------------------------------------------
# layered pursuit: both readings of Eq. 9, against a hand-written Algorithm 1
# ---------------------------------------------------------------------------
def _hand_lbp(net, x, init, T):
    """Algorithm 1 on a two-layer chain, written out: ``w_j <- ReLU(w_j - (g_j + lambda_j)
    / L_j)``, ``g_j = B_j^T (B_j w_j - w_{j-1})`` (Eq. 8, 10), ``B_j`` the adjoint of the
    layer's conv2d (by torch.func.vjp), ``L_j`` the solver's local constants."""
    W = net.weight_dict()
    lam = {j: _lam(net, j) for j in ("l1", "l2")}
    lipschitz = net.lipschitz()
    layers = {"l1": ("x->l1", 1), "l2": ("l1->l2", 2)}

    def analysis(j, v):
        key, stride = layers[j]
        return F.conv2d(v, W[key].detach(), stride=stride, padding=1)

    def solve(j, target, start):
        _, vjp = torch.func.vjp(lambda v: analysis(j, v), target)
        w = start
        for _ in range(T):
            grad = analysis(j, vjp(w)[0] - target)
            w = F.relu(w - (grad + lam[j]) / lipschitz[j])
        return w

    ff1 = F.relu(analysis("l1", x) - lam["l1"])  # Eq. 9 for the first layer (w_0 = x)
    ff2 = F.relu(analysis("l2", ff1) - lam["l2"])
    w1 = solve("l1", x, ff1)
    start2 = ff2 if init == "feedforward" else F.relu(analysis("l2", w1) - lam["l2"])
    return {"l1": w1, "l2": solve("l2", w1, start2)}


@pytest.mark.parametrize("init", ["feedforward", "final"])
def test_layered_pursuit_equals_hand_written_algorithm_1(init):
    g = df.chain((2, 6, 6), [3, 4], strides=[1, 2], bias=0.1)
    net = df.compile(g, method="layered", iterations=4, beta=1.0, layered_init=init, dtype=f64)
    net = net.eval()
    x = _x(net.input_shape, batch=2, seed=3)
    with torch.no_grad():
        codes = net.encode(x)
    want = _hand_lbp(net, x, init, 4)
    for j in ("l1", "l2"):
        torch.testing.assert_close(codes[j], want[j], rtol=1e-12, atol=1e-12)
    # the two readings differ after the first layer
    other = _hand_lbp(net, x, "final" if init == "feedforward" else "feedforward", 4)
    assert not torch.allclose(want["l2"], other["l2"])


def test_layered_init_default_and_bad_value():
    g = df.chain((2, 6, 6), [3, 4], bias=0.1)
    assert df.compile(g, method="layered", iterations=1).layered_init == "final"
    with pytest.raises(ValueError, match="layered_init"):
        df.compile(g, method="layered", iterations=1, layered_init="paper")


# ---------------------------------------------------------------------------
# trace index 0 is the feed-forward state for every method
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"method": "feedforward"},
        {"method": "layered", "iterations": 3, "layered_init": "final"},
        {"method": "layered", "iterations": 3, "layered_init": "feedforward"},
        {"method": "deep", "iterations": 3},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_trace_index_zero_is_the_feedforward_state(options):
    g = GRAPHS["resnet"]()
    net = df.compile(g, dtype=f64, **options).eval()
    ff = df.compile(g, method="feedforward", dtype=f64).eval()
    ff.load_state_dict(net.state_dict(), strict=False)
    x = _x(net.input_shape, batch=2)
    with torch.no_grad():
        codes, trace = net.encode(x, trace=True)
        ff_codes, ff_trace = ff.encode(x, trace=True)
    D = ff.dictionary()
    T = net.iterations
    assert trace.objective.shape == (T + 1, 2)
    # index 0: F of the feed-forward codes, by the dense objective
    torch.testing.assert_close(
        trace.objective[0], D.objective(net.normalize(x), ff_codes), rtol=1e-12, atol=1e-12
    )
    for j in net.nodes:
        torch.testing.assert_close(trace.node_errors[j][0], ff_trace.node_errors[j][0])
    # index T: the returned codes
    torch.testing.assert_close(
        trace.objective[-1], D.objective(net.normalize(x), codes), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("name", ["densenet", "mlp", "node-centric"])
def test_float64_compile_draws_exactly_the_seeded_dictionary_weights(name):
    g = GRAPHS[name]()
    net = df.compile(g, seed=3, dtype=f64)
    D = df.dictionary(g, seed=3)
    weights = net.weight_dict()
    assert set(weights) == set(D.weights)
    for key, w in D.weights.items():
        assert weights[key].dtype == f64
        assert torch.equal(weights[key].detach(), w), key
    # float32 models hold the same draws rounded once to float32
    net32 = df.compile(g, seed=3)
    for key, w in D.weights.items():
        assert torch.equal(net32.weight_dict()[key].detach(), w.float()), key


# ---------------------------------------------------------------------------
# the dictionary a batch-norm model reports is the one it solves
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["deep", "layered"])
def test_batchnorm_model_reports_the_dictionary_it_solves(method):
    from deepframe import geometry as geo

    g = _with_batchnorm(df.resnet((2, 6, 6), 1, widths=(2, 3), bias=0.1))
    net = df.compile(g, method=method, iterations=4, dtype=f64).eval()
    _random_bn_statistics(net)
    x = _x(net.input_shape, batch=2, seed=8)
    with torch.no_grad():
        codes, trace = net.encode(x, trace=True)
    D = net.dictionary()
    f = D.objective(net.normalize(x), D.flat(codes))
    torch.testing.assert_close(f, trace.objective[-1], rtol=1e-10, atol=1e-10)
    # independently: the dense folded matrix (synthesis rows scaled by hand)
    unfolded = net.unfolded_dictionary()
    A = unfolded.todense().numpy()
    for j, c0, size in zip(unfolded.nodes, unfolded.col_offsets, unfolded.col_sizes):
        name = net._names[j]
        s = (net.bn_scale[name] / torch.sqrt(getattr(net, f"bn_var_{name}") + 1e-5)).detach()
        per_column = np.repeat(s.numpy(), size // s.numel())
        for t, r0, rows in zip(unfolded.terms, unfolded.row_offsets, unfolded.row_sizes):
            if t.synth == j:
                A[r0 : r0 + rows, c0 : c0 + size] *= per_column
    np.testing.assert_allclose(D.todense().numpy(), A, rtol=1e-13, atol=1e-13)
    y = D.target(net.normalize(x)).numpy()
    w = D.flat(codes).numpy()
    lam = np.concatenate(
        [
            np.repeat(
                np.maximum(
                    net.lambdas()[j].detach().numpy()
                    + (
                        net.bn_scale[net._names[j]]
                        / torch.sqrt(getattr(net, f"bn_var_{net._names[j]}") + 1e-5)
                        * getattr(net, f"bn_mean_{net._names[j]}")
                    )
                    .detach()
                    .numpy(),
                    0,
                ),
                int(np.prod(D.node_shapes[j][1:])),
            )
            for j in D.nodes
        ]
    )
    r = y - w @ A.T
    np.testing.assert_allclose(0.5 * (r**2).sum(1) + w @ lam, trace.objective[-1], rtol=1e-10)
    # structured geometry of the folded dictionary equals the dense reference
    s, d = geo.gram_metrics(D), geo.gram_metrics(D, method="dense")
    assert s.coherence == pytest.approx(d.coherence, abs=1e-10)
    assert s.frame_potential == pytest.approx(d.frame_potential, rel=1e-10)
    assert s.deep_frame_potential == pytest.approx(d.deep_frame_potential, abs=1e-10)
    # and it is not the unfolded dictionary's
    assert s.frame_potential != pytest.approx(geo.frame_potential(unfolded), rel=1e-6)


def test_objective_takes_the_normalised_input():
    """With input normalisation the solver's objective is D.objective(net.normalize(x), .)
    (as documented); the raw input gives a different problem."""
    g = df.chain((2, 6, 6), [3, 4], bias=0.1)
    net = df.compile(
        g, method="deep", iterations=3, mean=[0.4, 0.6], std=[0.2, 0.3], dtype=f64
    ).eval()
    x = _x(net.input_shape, batch=2, seed=5)
    with torch.no_grad():
        codes, trace = net.encode(x, trace=True)
    D = net.dictionary()
    xn = (x - torch.tensor([0.4, 0.6], dtype=f64).reshape(-1, 1, 1)) / torch.tensor(
        [0.2, 0.3], dtype=f64
    ).reshape(-1, 1, 1)
    torch.testing.assert_close(net.normalize(x), xn, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(D.objective(xn, codes), trace.objective[-1], rtol=1e-12, atol=0)
    assert not torch.allclose(D.objective(x, codes), trace.objective[-1])


# recomputed iterations (checkpoint_sweeps): same gradients, state updated once
# ---------------------------------------------------------------------------
# The three solvers of the seed paper's Fig. 6, with batch norm (train mode updates its
# running statistics, and every training forward pass steps the power iterations).
SOLVERS = {
    "DP": (False, "deep"),
    "DP-res": (True, "deep"),
    "L-BP": (False, "layered"),
}


def _bn_graph(skips):
    return df.resnet((3, 8, 8), 1, widths=(4, 6), bias=0.05, batchnorm=True, skips=skips)


def _train_step(net, x, y):
    """Logits, input gradient and parameter gradients of one training step."""
    x = x.detach().clone().requires_grad_()
    net.zero_grad(set_to_none=True)
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    return logits.detach(), x.grad, grads


@pytest.mark.parametrize("segment", [True, 1, 2])
@pytest.mark.parametrize("alpha", [0.0, "fista"])
@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_checkpoint_sweeps_gradients_equal_the_stored_path(solver, alpha, segment):
    skips, method = SOLVERS[solver]
    g = _bn_graph(skips)
    options = {"method": method, "iterations": 5, "alpha": alpha, "dtype": f64}
    plain = df.compile(g, **options).train()
    recomputed = df.compile(g, checkpoint_sweeps=segment, **options).train()
    recomputed.load_state_dict(plain.state_dict())
    x, y = _x((3, 8, 8), batch=4, seed=2), torch.tensor([0, 1, 2, 3])
    want = _train_step(plain, x, y)
    got = _train_step(recomputed, x, y)
    assert torch.allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(got[1], want[1], rtol=1e-10, atol=1e-14)
    assert set(got[2]) == set(want[2])
    for name, grad in want[2].items():
        if grad is None:
            assert got[2][name] is None, name
        else:
            assert torch.allclose(got[2][name], grad, rtol=1e-10, atol=1e-14), name
    # Running statistics were updated exactly once: a
    # second update (by a recomputation) would move them further.
    for (name, buf), (_, other) in zip(plain.named_buffers(), recomputed.named_buffers()):
        assert torch.equal(buf, other), name


def test_checkpoint_sweeps_recomputes_in_backward_and_stores_less(monkeypatch):
    """The sweeps run again in the backward pass, the state updates do not, and the
    tensors autograd keeps outside the recomputed segments shrink."""
    from deepframe import solvers
    from deepframe.pursuit import PursuitNet

    calls = {"sweep": 0, "feedforward": 0}
    sweep, feedforward = solvers._gauss_seidel_sweep, PursuitNet._feedforward

    def counted_sweep(*args):
        calls["sweep"] += 1
        return sweep(*args)

    def counted_feedforward(self, *args, **kwargs):  # batch-norm statistics and the L_j bounds
        calls["feedforward"] += 1
        return feedforward(self, *args, **kwargs)

    monkeypatch.setattr(solvers, "_gauss_seidel_sweep", counted_sweep)
    monkeypatch.setattr(PursuitNet, "_feedforward", counted_feedforward)
    g = _bn_graph(True)
    x, y = _x((3, 8, 8), batch=4, seed=2), torch.tensor([0, 1, 2, 3])
    stored = {}
    for segment in (0, 1):
        net = df.compile(g, method="deep", iterations=6, checkpoint_sweeps=segment, dtype=f64)
        net.train()
        calls.update(sweep=0, feedforward=0)
        kept = {}

        def pack(t, kept=kept):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(net(x), y)
        forward_sweeps = calls["sweep"]
        loss.backward()
        assert forward_sweeps == 6
        assert calls["sweep"] == (11 if segment else 6)  # the last sweep is not redone
        assert calls["feedforward"] == 1
        stored[segment] = sum(kept.values())
    # stored: feed-forward + 6 sweeps; recomputed: feed-forward + the last sweep
    assert stored[1] < stored[0] / 3, stored


@pytest.mark.parametrize("method", ["feedforward", "layered", "deep"])
def test_solver_registry_runs_on_a_problem(method):
    """``SOLVERS[method](problem, codes, options)`` from the feed-forward codes is the
    model's pursuit: the registry is the methods and nothing else happens in between."""
    from deepframe.pursuit import METHODS
    from deepframe.solvers import SOLVERS

    assert tuple(SOLVERS) == METHODS
    g = _bn_graph(True)
    net = df.compile(g, method=method, iterations=2, alpha=0.2, dtype=f64).eval()
    _random_bn_statistics(net)
    x = _x((3, 8, 8), batch=2)
    with torch.no_grad():
        problem = net._problem(net.normalize(x))
        codes = net._feedforward(problem)
        problem.betas = net.betas()
        if net.iterations:
            codes = SOLVERS[method](problem, codes, net._options())
        want = net.encode(x)
    for j in net.nodes:
        assert torch.equal(codes[j], want[j]), j


def test_checkpoint_sweeps_leaves_inference_and_traces_alone():
    g = _bn_graph(True)
    net = df.compile(g, method="deep", iterations=3, checkpoint_sweeps=True, dtype=f64).eval()
    ref = df.compile(g, method="deep", iterations=3, dtype=f64).eval()
    ref.load_state_dict(net.state_dict())
    x = _x((3, 8, 8), batch=2)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    codes, trace = net.encode(x, trace=True)
    _, ref_trace = ref.encode(x, trace=True)
    torch.testing.assert_close(trace.objective, ref_trace.objective, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# sweeps against a dense reference; the Jacobi sweep as one grouped pass
# ---------------------------------------------------------------------------
def _dense_sweeps(net, x, sweeps, alpha, jacobi):
    """T sweeps of extrapolated block proximal gradient with the dense matrix of D.

    Block j is updated from the block gradient of ``f(w) = 1/2 ||y - D w||^2`` at
    ``w`` with block j replaced by its extrapolation (Gauss-Seidel: the newest
    blocks; Jacobi: all blocks of the previous sweep).
    """
    D = net.dictionary()
    A = D.todense()
    xn = net.normalize(x)
    y = D.target(xn)
    lip = net.lipschitz()
    ff = df.compile(net.graph, method="feedforward", dtype=f64).eval()
    ff.load_state_dict(net.state_dict(), strict=False)
    with torch.no_grad():
        w = D.flat(ff.encode(x))
    prev = w.clone()
    bounds = np.cumsum([0] + D.col_sizes)
    for _ in range(sweeps):
        source, new = w.clone(), w.clone()
        for j, lo, hi in zip(D.nodes, bounds[:-1], bounds[1:]):
            z = (source if jacobi else new).clone()
            z[:, lo:hi] = w[:, lo:hi] + alpha * (w[:, lo:hi] - prev[:, lo:hi])
            grad = ((z @ A.T - y) @ A)[:, lo:hi]
            shape = D.node_shapes[j]
            lam = D.lambdas[j].reshape(-1, *[1] * (len(shape) - 1)).expand(shape).flatten()
            step = 1.0 / float(lip[j])
            new[:, lo:hi] = F.relu(z[:, lo:hi] - step * (grad + lam))
        prev, w = w, new
    return D.codes(w)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("schedule", ["gauss-seidel", "jacobi"])
@pytest.mark.parametrize("name", ["resnet", "densenet", "node-centric"])
def test_sweeps_equal_the_dense_reference(name, schedule, alpha):
    g = GRAPHS[name]()
    net = df.compile(
        g, method="deep", iterations=3, alpha=alpha, beta=1.0, schedule=schedule, dtype=f64
    ).eval()
    x = _x(net.input_shape, batch=2, seed=3)
    with torch.no_grad():
        got = net.encode(x)
    want = _dense_sweeps(net, x, 3, alpha, schedule == "jacobi")
    for j in net.nodes:
        torch.testing.assert_close(got[j], want[j], rtol=1e-10, atol=1e-12)


def test_jacobi_grouped_convolutions_equal_one_call_per_term(monkeypatch):
    """Batch norm in train mode, FISTA extrapolation: outputs and gradients of the
    grouped pass equal those of one convolution per term."""
    g = df.resnet((3, 8, 8), 2, widths=(4, 6), bias=0.05, batchnorm=True)
    options = {"method": "deep", "iterations": 3, "alpha": "fista", "schedule": "jacobi"}
    grouped = df.compile(g, dtype=f64, **options).train()
    assert max(len(group) for group in grouped._conv_groups) >= 4  # stage 1: 4 convs
    single = df.compile(g, dtype=f64, **options).train()
    single.load_state_dict(grouped.state_dict())
    single._conv_groups = []
    x, y = _x((3, 8, 8), batch=3, seed=1), torch.tensor([0, 1, 2])
    want, got = _train_step(single, x, y), _train_step(grouped, x, y)
    assert torch.allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(got[1], want[1], rtol=1e-10, atol=1e-14)
    for name, grad in want[2].items():
        if grad is not None:
            assert torch.allclose(got[2][name], grad, rtol=1e-10, atol=1e-14), name


# ---------------------------------------------------------------------------
# GPU-path options, checked on any device
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_same_results(device):
    g = _bn_graph(True)
    plain = df.compile(g, method="deep", iterations=2, dtype=f64, device=device).train()
    fast = df.compile(g, method="deep", iterations=2, dtype=f64, device=device, channels_last=True)
    fast.train().load_state_dict(plain.state_dict())
    assert fast.weights["x__stem"].is_contiguous(memory_format=torch.channels_last)
    x, y = _x((3, 8, 8), batch=4, device=device), torch.tensor([0, 1, 2, 3], device=device)
    want, got = _train_step(plain, x, y), _train_step(fast, x, y)
    assert torch.allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(got[1], want[1], rtol=1e-10, atol=1e-14)
    for name, grad in want[2].items():
        assert torch.allclose(got[2][name], grad, rtol=1e-10, atol=1e-14), name
    with torch.no_grad():
        code = fast.eval().encode(x)["s1b1b"]
    assert code.is_contiguous(memory_format=torch.channels_last)


def test_torch_compile_option_gives_the_same_forward_and_backward():
    """``torch_compile`` through AOTAutograd (forward and backward graphs) on CPU."""
    g = df.resnet((2, 6, 6), 1, widths=(2, 3), bias=0.05, batchnorm=True)
    options = {"method": "deep", "iterations": 2, "alpha": "fista", "checkpoint_sweeps": 1}
    eager = df.compile(g, **options).train()
    compiled = df.compile(g, torch_compile={"backend": "aot_eager"}, **options).train()
    compiled.load_state_dict(eager.state_dict())
    x, y = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    want, got = _train_step(eager, x, y), _train_step(compiled, x, y)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for name, grad in want[2].items():
        torch.testing.assert_close(got[2][name], grad, msg=name)
    assert "_compiled_solve" in compiled.__dict__
    for (name, buf), (_, other) in zip(eager.named_buffers(), compiled.named_buffers()):
        torch.testing.assert_close(other, buf, msg=name)


@pytest.mark.slow
def test_torch_compile_with_inductor_gives_the_same_outputs():
    g = df.resnet((2, 6, 6), 1, widths=(2, 3), bias=0.05)
    eager = df.compile(g, method="deep", iterations=2).eval()
    compiled = df.compile(g, method="deep", iterations=2, torch_compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"method": "deep"},
        {"method": "deep", "alpha": "fista", "checkpoint_sweeps": True},
        {"method": "deep", "schedule": "jacobi", "alpha": 0.2},
        {"method": "layered", "checkpoint_sweeps": 1},
    ],
)
def test_no_host_sync_in_training_and_inference_steps(options):
    from deepframe.testing import assert_no_host_sync

    net = df.compile(_bn_graph(True), iterations=3, **options).train()
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    with assert_no_host_sync():
        F.cross_entropy(net(x), y).backward()
    with assert_no_host_sync(), torch.no_grad():
        net.eval()(x)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("checkpoint_sweeps", [False, True])
def test_no_host_sync_on_cuda(checkpoint_sweeps):
    net = df.compile(
        _bn_graph(True),
        method="deep",
        iterations=3,
        device="cuda",
        checkpoint_sweeps=checkpoint_sweeps,
    ).train()
    x = torch.rand(4, 3, 8, 8, device="cuda")
    y = torch.tensor([0, 1, 2, 3], device="cuda")
    net(x)  # first call: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        F.cross_entropy(net(x), y).backward()
        with torch.no_grad():
            net.eval()(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bad_accelerator_options_are_clear_errors():
    with pytest.raises(ValueError, match="checkpoint_sweeps"):
        df.compile(GRAPHS["chain"](), checkpoint_sweeps=-1)
    with pytest.raises(ValueError, match="checkpoint_sweeps"):
        df.compile(GRAPHS["chain"](), checkpoint_sweeps="yes")
    with pytest.raises(ValueError, match="torch_compile"):
        df.compile(GRAPHS["chain"](), torch_compile="inductor")
