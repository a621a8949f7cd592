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


def _bn(net, j, a):
    """An nn.BatchNorm2d with the net's running statistics, scale and -lambda shift."""
    name = net._names[j]
    bn = torch.nn.BatchNorm2d(a.shape[1]).to(a.dtype).eval()
    with torch.no_grad():
        bn.running_mean.copy_(getattr(net, f"bn_mean_{name}"))
        bn.running_var.copy_(getattr(net, f"bn_var_{name}"))
        bn.weight.copy_(net.bn_scale[name])
        bn.bias.copy_(-net.lambdas()[j])
    return bn(a)


def _act(net, j, a, batchnorm):
    return F.relu(_bn(net, j, a) if batchnorm else a - _lam(net, j, a.dim()))


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
    # Running statistics and power-iteration vectors were updated exactly once: a
    # second update (by a recomputation) would move them further.
    for (name, buf), (_, other) in zip(plain.named_buffers(), recomputed.named_buffers()):
        assert torch.equal(buf, other), name


def test_checkpoint_sweeps_recomputes_in_backward_and_stores_less(monkeypatch):
    """The sweeps run again in the backward pass, the state updates do not, and the
    tensors autograd keeps outside the recomputed segments shrink."""
    from deepframe.pursuit import PursuitNet

    calls = {"sweep": 0, "power": 0}
    sweep, power = PursuitNet._gauss_seidel_sweep, PursuitNet._power_step

    def counted_sweep(self, *args):
        calls["sweep"] += 1
        return sweep(self, *args)

    def counted_power(self, *args):
        calls["power"] += 1
        return power(self, *args)

    monkeypatch.setattr(PursuitNet, "_gauss_seidel_sweep", counted_sweep)
    monkeypatch.setattr(PursuitNet, "_power_step", counted_power)
    g = _bn_graph(True)
    x, y = _x((3, 8, 8), batch=4, seed=2), torch.tensor([0, 1, 2, 3])
    stored = {}
    for segment in (0, 1):
        net = df.compile(g, method="deep", iterations=6, checkpoint_sweeps=segment, dtype=f64)
        net.train()
        calls.update(sweep=0, power=0)
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
        assert calls["power"] == 1
        stored[segment] = sum(kept.values())
    # stored: feed-forward + 6 sweeps; recomputed: feed-forward + the last sweep
    assert stored[1] < stored[0] / 3, stored


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
