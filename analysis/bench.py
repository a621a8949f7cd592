"""One benchmark for deepframe: solver time, throughput, memory, geometry, GPU options.

    python analysis/bench.py [--quick] [--device cpu|cuda] [--out bench.json]
                             [--section NAME ...] [--repeats 3] [--threads N]
                             [--torch-compile] [--clock wall|cpu] [--memory-budget 8G]

Prints one table per section and writes every figure, with the device it ran
on, to a JSON file (``--out``). Nothing is asserted: the targets of
docs/performance.md are evaluated from the measured figures and printed.
Random inputs, no data needed.

Sections (``--section``, repeatable; default all, in the order memory, geometry,
options, solvers, batchnorm, bounds; ``--graph``, ``--batch``, ``--iterations`` restrict the solvers
grid, ``--iterations`` the memory section's T too):

``solvers``
    One training step (forward + backward, train mode) of DP (deep pursuit on
    the chain twin), DP-res (deep pursuit on the ResNet) and L-BP (layered
    pursuit on the chain twin) for T in {0, 1, 5, 10}, on the CIFAR ResNet-8 and
    ResNet-20 graphs (``df.resnet((3, 32, 32), n)``, n = 1, 3), batch 32 and
    128. In the same process and interleaved with it: the *floor*, a minimal
    hand-written solver with the same parameters and arithmetic (Gauss-Seidel
    that keeps ``B w`` between updates, 2 convolution calls per conv edge and
    sweep; for L-BP the local steps), and the *plain* network of the same graph
    (ordinary conv/ReLU, no pursuit). Reported: best seconds, ratios to floor
    and plain, training and inference throughput (images/s). Seconds and
    images/s are of the best round; every ratio (here and in the other sections)
    is the median over the rounds of the two calls' ratio within a round
    (:func:`paired_ratio`; the JSON keeps the ratio of best times as ``*_best``).
``memory``
    Peak memory of one DP-res training step on ResNet-8, batch 64, for T in
    {0, 1, 5, 10, 20}, with and without ``checkpoint_sweeps`` (``True``; ``--segment k``,
    repeatable, adds segments of ``k`` sweeps, marked explicit: the targets read
    the ``True`` rows). CPU: each case in its
    own subprocess (``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave
    the resident set at once), peak RSS (``VmHWM``, reset just before the step)
    above the resident set just before the step,
    and the peak of live tensors from the torch profiler's memory timeline;
    CUDA: ``torch.cuda.max_memory_allocated`` above the level before the step.
    The time ratio (recomputed / stored) is measured in this process,
    interleaved.
``geometry``
    Exact mutual coherence + frame potential (``gram_metrics``): time and peak
    memory against the number of atoms, up to ResNet-18 widths at 224x224
    (27 million atoms), and the dense reference where it fits (each case in its
    own subprocess, with the allocator's defaults, as analysis/bench_geometry.py
    runs them). ``--memory-budget`` (default
    ``DEEPFRAME_MEMORY_BUDGET``, else 8 GiB): the library's 2 GiB default refuses
    the 224x224 case.
``options``
    The accelerator options on DP-res T = 10 (quick: T = 5; ``--options-iterations``),
    ResNet-20 batch 128 (quick: ResNet-8, 32; ``--options-batch``, repeatable): default,
    ``channels_last``, ``schedule="jacobi"`` (one grouped pass), bf16 autocast
    (the forward pass under ``torch.autocast``), TF32 on/off, ``channels_last``
    with TF32 or bf16 and CUDA-graph inference (CUDA only), ``torch_compile``
    (with ``--torch-compile``); ``--variant`` (repeatable) keeps only the named
    ones. Training and inference images/s against the plain network with the
    same options and against the op-count floor ``plain / (1 + 2 T)``.

``batchnorm``
    One training step of the feed-forward network (T = 0) with batch norm on
    every node, as ``deepframe reproduce`` trains it, against the plain network
    with ``F.batch_norm`` (same weights), ResNet-8 and ResNet-20 (quick:
    ResNet-8) at stage widths 12/24/48 and 16/32/64, batch 128.

``bounds``
    What the step sizes ``L_j`` cost in training, where the weights change at
    every step: ``--steps`` (default 20) real training steps (SGD, lr 0.1 or
    ``--lr``, momentum 0.9, weight decay 5e-4, as ``deepframe.train``'s defaults;
    from the compiled initial weights, on one random batch) of DP,
    DP-res and L-BP at T in {1, 5}, batch 32, ResNet-8 and ResNet-20 (quick:
    ResNet-8, DP, T = 5), three ways, interleaved in one process, each training
    its own copy of the same weights: *exact* (``lipschitz_tolerance = 0``: the
    exact bound of every operator at every step, as before issue 23),
    *default* (reference bounds plus the perturbation bound, recomputed when the
    slack passes the tolerance or every ``lipschitz_every`` steps) and the
    *floor* (the hand-written solver with step sizes fixed once: no bound at
    all). Reported per step: seconds, the bounds' own seconds
    (``_node_lipschitz``, timed inside the step) and their share of the step,
    ``x floor``, and the exact recomputations per operator and step.

``--quick``: ResNet-8, batch 32, T in {0, 1, 5}, the small geometry cases, two
repeats (a few minutes on 2 CPU cores).

On a machine shared with other jobs, ``--threads 1 --clock cpu`` times the CPU
seconds of this process instead of wall-clock seconds: the work done, not the
time spent waiting for a core (CPU only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run from a checkout: benchmark this tree's deepframe
    sys.path.insert(0, ROOT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import deepframe as df  # noqa: E402

SECTIONS = ("memory", "geometry", "options", "solvers", "batchnorm", "bounds")
METHODS = {  # label: (skip edges, compile method)
    "DP": (False, "deep"),
    "DP-res": (True, "deep"),
    "L-BP": (False, "layered"),
}
ARCHS = {"ResNet-8": 1, "ResNet-20": 3}


# --------------------------------------------------------------------------- devices


def device_name(device: str) -> str:
    """What the figure ran on, in words: GPU model, or CPU model and threads."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads of {os.cpu_count()} CPUs"


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- networks


def _graph(arch: str, skips: bool):
    return df.resnet((3, 32, 32), blocks_per_stage=ARCHS[arch], skips=skips)


def _edges(net: df.PursuitNet):
    """Per activation node: its incoming edges ``(source, attributes, weight key)``."""
    g = net.graph
    out = {}
    for j in net.nodes:
        out[j] = []
        for k in sorted(g.predecessors(j), key=str):
            e = g.edges[k, j]
            if e["op"] not in ("conv", "identity", "shortcut"):
                raise ValueError(f"the hand-written networks know conv/identity/shortcut, not {e}")
            out[j].append((k, e, f"{k}->{j}"))
    return out


def _conv(h, w, e):
    return F.conv2d(h, w, stride=e.get("stride", 1), padding=e["kernel_size"] // 2)


def _conv_t(r, w, e, shape):
    """Adjoint of :func:`_conv` onto a source of spatial ``shape``."""
    s, p, k = e.get("stride", 1), e["kernel_size"] // 2, e["kernel_size"]
    h_out = (shape[1] + 2 * p - k) // s + 1
    pad = shape[1] + 2 * p - k - (h_out - 1) * s
    return F.conv_transpose2d(r, w, stride=s, padding=p, output_padding=pad)


def _shortcut(h, channels, s):
    pad = channels - h.shape[1]
    return F.pad(h[:, :, ::s, ::s], (0, 0, 0, 0, pad // 2, pad - pad // 2))


def _shortcut_t(y, c_in, s, shape):
    pad = (y.shape[1] - c_in) // 2
    kept = y[:, pad : pad + c_in]
    if s == 1:
        return kept
    out = y.new_zeros((y.shape[0], *shape))
    out[:, :, ::s, ::s] = kept
    return out


def _analysis(h, weights, e, shape):
    """``A_e h`` of an edge into a node of ``shape``."""
    if e["op"] == "conv":
        return _conv(h, weights, e)
    if e["op"] == "identity":
        return h
    return _shortcut(h, shape[0], e["stride"])


def _synthesis(w, weights, e, shape):
    """``B_e w = A_e^T w`` onto a source of ``shape``."""
    if e["op"] == "conv":
        return _conv_t(w, weights, e, shape)
    if e["op"] == "identity":
        return w
    return _shortcut_t(w, shape[0], e["stride"], shape)


class PlainNet(nn.Module):
    """The ordinary network of the same graph: sum of conv/identity/shortcut edges,
    batch norm where the graph's node asks for it (``F.batch_norm``, bias
    ``-lambda_j``, its own scale and running statistics), ReLU."""

    def __init__(self, net: df.PursuitNet):
        super().__init__()
        self.net = net  # borrows the weights, lambdas and head
        self.edges = _edges(net)
        g = net.graph
        self.bn = {}
        for j in net.nodes:
            if g.nodes[j].get("batchnorm"):
                c = g.nodes[j]["shape"][0]
                like = {"device": net.head.weight.device, "dtype": net.head.weight.dtype}
                ones, zeros = torch.ones(c, **like), torch.zeros(c, **like)
                self.bn[j] = (nn.Parameter(ones.clone()), zeros, ones)
        self.bn_scale = nn.ParameterList([scale for scale, _, _ in self.bn.values()])

    def forward(self, x):
        net, g = self.net, self.net.graph
        weights, lambdas = net.weight_dict(), net.lambdas()
        h = {net.input: net.normalize(x)}
        for j in net.nodes:
            shape = g.nodes[j]["shape"]
            a = 0
            for k, e, key in self.edges[j]:
                a = a + _analysis(h[k], weights.get(key), e, shape)
            if j in self.bn:
                scale, mean, var = self.bn[j]
                h[j] = F.relu(F.batch_norm(a, mean, var, scale, -lambdas[j], self.training))
            else:
                h[j] = F.relu(a - lambdas[j].reshape(-1, 1, 1))
        return net.head(h[net.output].mean((2, 3)))


class Floor(nn.Module):
    """The minimal hand-written solver of a compiled net (same parameters, same arithmetic).

    ``deep``: feed-forward initialisation, then T Gauss-Seidel sweeps; a sweep
    starts from ``B_e w_j`` of every edge ``k -> j`` and updates every node

        w_j <- ReLU(w_j - s_j (sum_{k->j} -A_e (w_k - B_e w_j)
                               + sum_{j->m} (w_j - B_e w_m) + lambda_j)),  s_j = 1/(beta_j L_j)

    ``layered``: node by node, T local steps on the node's incoming edges,
    ``s_j = 1 / (beta_j L_local_j)``. Edge-centric CIFAR ResNets and chains,
    alpha = 0, no batch norm.
    """

    def __init__(self, net: df.PursuitNet, lipschitz: dict | None = None):
        super().__init__()
        self.fixed_lipschitz = lipschitz  # step sizes fixed once (no bound per step)
        if net.method not in ("deep", "layered", "feedforward") or any(net.alphas):
            raise ValueError("the floor is written for alpha = 0 deep / layered pursuit")
        if len(net.bn_scale):
            raise ValueError("the floor is written without batch norm")
        self.net = net
        self.edges = _edges(net)
        g = net.graph
        self.shape = {j: tuple(g.nodes[j]["shape"]) for j in g.nodes}
        self.outgoing = {j: [m for m in net.nodes if g.has_edge(j, m)] for j in net.nodes}

    def forward(self, x):
        net = self.net
        weights, lam, beta = net.weight_dict(), net.lambdas(), net.betas()
        lam = {j: v.reshape(-1, 1, 1) for j, v in lam.items()}
        h = {net.input: net.normalize(x)}
        for j in net.nodes:
            a = 0
            for k, e, key in self.edges[j]:
                a = a + _analysis(h[k], weights.get(key), e, self.shape[j])
            h[j] = F.relu(a - lam[j])
        if net.iterations and net.method == "deep":
            lip = self.fixed_lipschitz or net.lipschitz()
            step = {j: 1.0 / (beta[j] * lip[j]) for j in net.nodes}
            for _ in range(net.iterations):
                synth = {
                    key: _synthesis(h[j], weights.get(key), e, self.shape[k])
                    for j in net.nodes
                    for k, e, key in self.edges[j]
                }
                for j in net.nodes:
                    grad = 0
                    for k, e, key in self.edges[j]:
                        grad = grad - _analysis(
                            h[k] - synth[key], weights.get(key), e, self.shape[j]
                        )
                    for m in self.outgoing[j]:
                        grad = grad + (h[j] - synth[f"{j}->{m}"])
                    h[j] = F.relu(h[j] - step[j] * (grad + lam[j]))
        elif net.iterations and net.method == "layered":
            local = self.fixed_lipschitz or net.lipschitz()  # layered: the node's own terms
            h = {net.input: h[net.input]}
            for j in net.nodes:
                a = 0
                for k, e, key in self.edges[j]:
                    a = a + _analysis(h[k], weights.get(key), e, self.shape[j])
                w = F.relu(a - lam[j])
                step = 1.0 / (beta[j] * local[j])
                for _ in range(net.iterations):
                    grad = 0
                    for k, e, key in self.edges[j]:
                        r = h[k] - _synthesis(w, weights.get(key), e, self.shape[k])
                        grad = grad - _analysis(r, weights.get(key), e, self.shape[j])
                    w = F.relu(w - step * (grad + lam[j]))
                h[j] = w
        return net.head(h[net.output].mean((2, 3)))


# --------------------------------------------------------------------------- timing


def _train_step(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _infer(model, x):
    with torch.no_grad():
        model(x)


# What a timing reads: wall-clock seconds (``--clock wall``, the default) or the CPU
# seconds of this process (``--clock cpu``): with one torch thread on a machine other
# jobs share, CPU time counts the work done and not the time spent waiting for a core.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]


def time_interleaved(calls: dict, repeats: int, device: str, rounds: dict | None = None) -> dict:
    """Best (least) seconds of each callable, run in turn ``repeats`` times after one
    warm-up round.

    Interleaving spreads a shared machine's load evenly over the callables, the
    order rotates from round to round (none always runs first), and the least time
    is the estimate: other jobs only ever add time. ``rounds``, if given, receives
    every timed round's seconds per callable (for :func:`paired_ratio`).
    """
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = calls[name]
            _sync(device)
            start = CLOCK()
            fn()
            _sync(device)
            if r:
                times[name].append(CLOCK() - start)
    if rounds is not None:
        rounds.update(times)
    return {name: min(v) for name, v in times.items()}


def paired_ratio(rounds: dict, a, b) -> float:
    """Median over the timed rounds of ``a``'s seconds over ``b``'s in the same round.

    The ratio of two best times compares each callable's luckiest moment, and on a
    machine whose load comes and goes (another job on the sibling core) those
    moments differ: one callable may catch a quiet spell the other never sees. Two
    calls of one round run back to back under nearly the same load, so their
    ratio, and the median of it over the rounds, is the steadier estimate.
    """
    return statistics.median(x / y for x, y in zip(rounds[a], rounds[b], strict=True))


def _data(batch: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return x, y


# --------------------------------------------------------------------------- sections


def bench_solvers(args, out: list) -> None:
    archs = args.graph or (["ResNet-8"] if args.quick else list(ARCHS))
    batches = args.batch or ([32] if args.quick else [32, 128])
    iterations = args.iterations or ([0, 1, 5] if args.quick else [0, 1, 5, 10])
    name = device_name(args.device)
    print(f"\n## solvers: one training step (forward + backward), {name}")
    head = (
        f"{'graph':<10} {'batch':>5} {'method':<7} {'T':>3} {'seconds':>8} {'x floor':>8} "
        f"{'x plain':>8} {'train img/s':>12} {'infer img/s':>12}"
    )
    print(head)
    for arch in archs:
        for batch in batches:
            x, y = _data(batch, args.device)
            for label, (skips, method) in METHODS.items():
                graph = _graph(arch, skips)
                for t in iterations:
                    net = df.compile(graph, method=method, iterations=t, device=args.device)
                    net.train()
                    floor, plain = Floor(net).train(), PlainNet(net).train()
                    rounds = {}
                    times = time_interleaved(
                        {
                            "net": partial(_train_step, net, x, y),
                            "floor": partial(_train_step, floor, x, y),
                            "plain": partial(_train_step, plain, x, y),
                        },
                        args.repeats,
                        args.device,
                        rounds,
                    )
                    net.eval()
                    infer = time_interleaved(
                        {"net": partial(_infer, net, x)}, args.repeats, args.device
                    )["net"]
                    row = {
                        "section": "solvers",
                        "device": name,
                        "graph": arch,
                        "batch": batch,
                        "method": label,
                        "T": t,
                        "seconds": times["net"],
                        "floor_s": times["floor"],
                        "plain_s": times["plain"],
                        "x_floor": paired_ratio(rounds, "net", "floor"),
                        "x_plain": paired_ratio(rounds, "net", "plain"),
                        "x_floor_best": times["net"] / times["floor"],
                        "x_plain_best": times["net"] / times["plain"],
                        # throughput over the op-count floor plain / (1 + 2 T)
                        "x_op_floor": (1 + 2 * t) / paired_ratio(rounds, "net", "plain"),
                        "train_images_per_s": batch / times["net"],
                        "infer_s": infer,
                        "infer_images_per_s": batch / infer,
                    }
                    out.append(row)
                    print(
                        f"{arch:<10} {batch:>5} {label:<7} {t:>3} {row['seconds']:8.4f} "
                        f"{row['x_floor']:8.3f} {row['x_plain']:8.2f} "
                        f"{row['train_images_per_s']:12.1f} {row['infer_images_per_s']:12.1f}",
                        flush=True,
                    )


def bench_batchnorm(args, out: list) -> None:
    """T = 0 with batch norm (the feed-forward models of ``deepframe reproduce``)
    against the plain network with batch norm, one training step each."""
    archs = args.graph or (["ResNet-8"] if args.quick else list(ARCHS))
    batches = args.batch or [128]
    name = device_name(args.device)
    print(f"\n## batchnorm: one training step of T = 0 with batch norm, {name}")
    print(f"{'graph':<10} {'widths':<10} {'batch':>5} {'seconds':>8} {'plain s':>8} {'x plain':>8}")
    for arch in archs:
        for widths in ((12, 24, 48), (16, 32, 64)):
            graph = df.resnet(
                (3, 32, 32), blocks_per_stage=ARCHS[arch], widths=widths, batchnorm=True
            )
            net = df.compile(graph, method="feedforward", device=args.device).train()
            plain = PlainNet(net).train()
            for batch in batches:
                x, y = _data(batch, args.device)
                rounds = {}
                times = time_interleaved(
                    {
                        "net": partial(_train_step, net, x, y),
                        "plain": partial(_train_step, plain, x, y),
                    },
                    args.repeats,
                    args.device,
                    rounds,
                )
                row = {
                    "section": "batchnorm",
                    "device": name,
                    "graph": arch,
                    "widths": list(widths),
                    "batch": batch,
                    "method": "L-TP",
                    "T": 0,
                    "seconds": times["net"],
                    "plain_s": times["plain"],
                    "x_plain": paired_ratio(rounds, "net", "plain"),
                    "x_plain_best": times["net"] / times["plain"],
                }
                out.append(row)
                print(
                    f"{arch:<10} {'/'.join(map(str, widths)):<10} {batch:>5} "
                    f"{row['seconds']:8.4f} {row['plain_s']:8.4f} {row['x_plain']:8.3f}",
                    flush=True,
                )


class _BoundClock:
    """Seconds a net spends in its step-size bounds (``_node_lipschitz``), summed."""

    def __init__(self, net: df.PursuitNet, device: str):
        self.seconds, original = 0.0, net._node_lipschitz

        def timed(*args):
            _sync(device)
            start = CLOCK()
            out = original(*args)
            _sync(device)
            self.seconds += CLOCK() - start
            return out

        net._node_lipschitz = timed


def _training_steps(model, opt, x, y, steps: int, counter=None) -> None:
    """``steps`` optimizer steps; ``counter`` (a net, a list) counts exact recomputations."""
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if counter is not None:
            net, seen = counter
            fresh = [r for r in net._references().values() if r.steps == 1]
            seen.append(len(fresh))


def _sgd(model, lr: float = 0.1):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def bench_bounds(args, out: list) -> None:
    """The step-size bounds' share of a training step whose weights change."""
    import copy

    archs = args.graph or (["ResNet-8"] if args.quick else list(ARCHS))
    batches = args.batch or [32]
    iterations = args.iterations or ([5] if args.quick else [1, 5])
    methods = ["DP"] if args.quick else list(METHODS)
    steps, lr = args.steps, args.lr
    name = device_name(args.device)
    print(f"\n## bounds: {steps} SGD training steps per call, lr {lr}, {name}")
    print(
        f"{'graph':<10} {'batch':>5} {'method':<7} {'T':>3} {'variant':<8} {'s/step':>8} "
        f"{'bound ms':>9} {'share':>7} {'x floor':>8} {'exact/op/step':>14}"
    )
    for arch in archs:
        for batch in batches:
            x, y = _data(batch, args.device)
            for label in methods:
                skips, method = METHODS[label]
                for t in iterations:
                    base = df.compile(
                        _graph(arch, skips), method=method, iterations=t, device=args.device
                    )
                    nets = {"exact": copy.deepcopy(base), "default": copy.deepcopy(base)}
                    nets["exact"].lipschitz_tolerance = 0
                    floor_net = copy.deepcopy(base).eval()
                    floor = Floor(floor_net, lipschitz=floor_net.lipschitz()).train()
                    floor_net.train()
                    clocks = {k: _BoundClock(net, args.device) for k, net in nets.items()}
                    fresh: list = []
                    calls = {
                        "exact": partial(
                            _training_steps,
                            nets["exact"].train(),
                            _sgd(nets["exact"], lr),
                            x,
                            y,
                            steps,
                        ),
                        "default": partial(
                            _training_steps,
                            nets["default"].train(),
                            _sgd(nets["default"], lr),
                            x,
                            y,
                            steps,
                            (nets["default"], fresh),
                        ),
                        "floor": partial(_training_steps, floor, _sgd(floor_net, lr), x, y, steps),
                    }
                    rounds: dict = {}
                    times = time_interleaved(calls, args.repeats, args.device, rounds)
                    total_steps = steps * (args.repeats + 1)
                    operators = max(len(nets["default"]._references()), 1)
                    for variant in ("exact", "default"):
                        bound_s = clocks[variant].seconds / total_steps
                        step_s = statistics.median(rounds[variant]) / steps
                        row = {
                            "section": "bounds",
                            "device": name,
                            "graph": arch,
                            "batch": batch,
                            "method": label,
                            "T": t,
                            "variant": variant,
                            "steps_per_call": steps,
                            "optimizer": f"sgd lr {lr} momentum 0.9 weight_decay 5e-4",
                            "seconds_per_step": times[variant] / steps,
                            "median_seconds_per_step": step_s,
                            "bound_s_per_step": bound_s,
                            "bound_share": bound_s / step_s,
                            "floor_s_per_step": times["floor"] / steps,
                            "x_floor": paired_ratio(rounds, variant, "floor"),
                            "x_floor_best": times[variant] / times["floor"],
                            "exact_per_operator_step": (
                                1.0 if variant == "exact" else sum(fresh) / len(fresh) / operators
                            ),
                            "lipschitz_tolerance": nets[variant].lipschitz_tolerance,
                            "lipschitz_every": nets[variant].lipschitz_every,
                        }
                        out.append(row)
                        print(
                            f"{arch:<10} {batch:>5} {label:<7} {t:>3} {variant:<8} "
                            f"{row['seconds_per_step']:8.4f} {1000 * bound_s:9.2f} "
                            f"{100 * row['bound_share']:6.2f}% {row['x_floor']:8.3f} "
                            f"{row['exact_per_operator_step']:14.3f}",
                            flush=True,
                        )
                    same = paired_ratio(rounds, "default", "exact")
                    print(f"{'':<31} default / exact step time {same:.3f}", flush=True)
                    out[-1]["x_exact"] = same


def _memory_child(arch: str, t: int, segment: int, batch: int, device: str) -> dict:
    """One DP-res training step: peak memory above the level just before it."""
    net = df.compile(_graph(arch, True), method="deep", iterations=t, device=device)
    net.checkpoint_sweeps = segment  # same weights for both cases: set after compile
    net.train()
    x, y = _data(batch, device)
    row = {}
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _train_step(net, x, y)
        torch.cuda.synchronize()
        row["peak_tensors_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return row
    row["peak_rss_mib"] = _peak_rss_above_now(lambda: _train_step(net, x, y))
    row["peak_tensors_mib"] = _profiled_peak(lambda: _train_step(net, x, y))
    return row


def _peak_rss_above_now(fn) -> float | None:
    """Peak resident set size during ``fn()`` above the resident set just before, MiB.

    Resets the kernel's peak (``VmHWM``) first by writing 5 to
    ``/proc/self/clear_refs`` (Linux); ``None`` where that is not possible.
    """
    import bench_geometry as geo

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = geo._status_mib("VmRSS")
    fn()
    return geo._status_mib("VmHWM") - before


def _profiled_peak(fn) -> float | None:
    """Peak of live CPU tensors during ``fn()`` (torch profiler memory timeline), MiB."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=True,
            with_stack=True,
        ) as prof:
            fn()
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = os.path.join(folder, "timeline.json")
            prof.export_memory_timeline(path, device="cpu")
            with open(path) as f:
                _, sizes = json.load(f)
    except Exception as exc:  # the memory timeline is a deprecated profiler feature
        print(f"# profiler memory timeline unavailable: {exc!r}", file=sys.stderr)
        return None
    return max(sum(at) for at in sizes) / 2**20 if sizes else None


def bench_memory(args, out: list) -> None:
    arch, batch = "ResNet-8", 64
    iterations = args.iterations or ([0, 5] if args.quick else [0, 1, 5, 10, 20])
    name = device_name(args.device)
    print(f"\n## memory: one DP-res training step, {arch}, batch {batch}, {name}")
    # recompute: sweeps per recomputed segment ("-": stored; "auto": checkpoint_sweeps=True)
    print(
        f"{'T':>3} {'recompute':>9} {'peak RSS MiB':>13} {'peak tensors MiB':>17} "
        f"{'seconds':>8} {'x stored':>9}"
    )
    x, y = _data(batch, args.device)
    for t in iterations:
        # (choice, iterations per recomputed segment): stored, what checkpoint_sweeps=True
        # picks, and the --segment lengths asked for
        auto = max(1, round(math.sqrt(t / 3))) if t else 0
        cases = [("stored", 0), ("auto", auto)]
        cases += [("explicit", k) for k in args.segment or () if 0 < k < t and k != auto]
        rows = {}
        for choice, segment in cases:
            if torch.device(args.device).type == "cuda":
                rows[choice, segment] = _memory_child(arch, t, segment, batch, args.device)
            else:
                rows[choice, segment] = _run_child(
                    ["memory", arch, str(t), str(segment), str(batch)], args
                )
        nets = {
            case: df.compile(
                _graph(arch, True),
                method="deep",
                iterations=t,
                checkpoint_sweeps=case[1],
                device=args.device,
            ).train()
            for case in cases
        }
        rounds = {}
        times = time_interleaved(
            {case: partial(_train_step, n, x, y) for case, n in nets.items()},
            args.repeats,
            args.device,
            rounds,
        )
        for case in cases:
            choice, segment = case
            row = {
                "section": "memory",
                "device": name,
                "graph": arch,
                "batch": batch,
                "method": "DP-res",
                "T": t,
                "checkpoint_sweeps": segment,
                "explicit": choice == "explicit",
                "peak_rss_mib": rows[case].get("peak_rss_mib"),
                "peak_tensors_mib": rows[case].get("peak_tensors_mib"),
                "seconds": times[case],
                "x_stored_time": paired_ratio(rounds, case, cases[0]),
                "x_stored_time_best": times[case] / times[cases[0]],
            }
            out.append(row)
            rss = "-" if row["peak_rss_mib"] is None else f"{row['peak_rss_mib']:.0f}"
            ten = "-" if row["peak_tensors_mib"] is None else f"{row['peak_tensors_mib']:.0f}"
            label = {"stored": "-", "auto": f"{segment} auto"}.get(choice, str(segment))
            print(
                f"{t:>3} {label:>9} {rss:>13} {ten:>17} "
                f"{row['seconds']:8.3f} {row['x_stored_time']:9.2f}",
                flush=True,
            )


def bench_geometry(args, out: list) -> None:
    import bench_geometry as geo

    cases = ["chain-small", "resnet-1"] if args.quick else list(geo.CASES)
    name = device_name(args.device)
    budget = geo.memory_budget(args.memory_budget)
    print(
        f"\n## geometry: exact coherence + frame potential, {name}, memory budget "
        f"{budget / 2**30:.3g} GiB"
    )
    print(
        f"{'case':<16} {'atoms':>10} {'structured s':>13} {'peak RSS MiB':>13} "
        f"{'dense s':>8} {'dense peak MiB':>15}"
    )
    for case in cases:
        row = _run_child(["geometry", case], args)
        row.update(section="geometry", device=name)
        out.append(row)
        dense = f"{row['dense_s']:8.2f}" if "dense_s" in row else f"{'-':>8}"
        dense_peak = f"{row['peak_dense_mib']:15.0f}" if "peak_dense_mib" in row else f"{'-':>15}"
        print(
            f"{case:<16} {row['atoms']:>10} {row['structured_s']:13.3f} "
            f"{row['peak_structured_mib']:13.0f} {dense} {dense_peak}",
            flush=True,
        )


def _autocast_train_step(model, x, y, device_type: str):
    """:func:`_train_step` with the forward pass under bf16 autocast (backward outside it)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(device_type, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()


def _autocast_infer(model, x, device_type: str):
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16):
        model(x)


def option_variants(cuda: bool, torch_compile) -> dict:
    """The variants of the options section: ``label: (compile options, tf32, bf16 autocast)``.

    ``tf32`` is None (leave the setting alone), True or False; TF32, the
    combination with ``channels_last`` and CUDA-graph inference (measured with
    the default row) apply on CUDA only; bf16 autocast runs on both devices.
    ``torch_compile`` (False, True or a dict of ``torch.compile`` options, as
    :func:`deepframe.compile` takes it) adds the ``torch.compile`` variant.
    """
    variants = {
        "default": ({}, None, False),
        "channels_last": ({"channels_last": True}, None, False),
        "jacobi (grouped)": ({"schedule": "jacobi"}, None, False),
    }
    if cuda:
        variants["tf32 off"] = ({}, False, False)
        variants["tf32 on"] = ({}, True, False)
        variants["channels_last + tf32"] = ({"channels_last": True}, True, False)
    variants["bf16 autocast"] = ({}, None, True)
    if cuda:
        variants["channels_last + bf16"] = ({"channels_last": True}, None, True)
    if torch_compile:
        variants["torch.compile"] = ({"torch_compile": torch_compile}, None, False)
    return variants


def bench_options(args, out: list) -> None:
    """The accelerator options on DP-res: training and inference images/s against the
    plain network with the same options and the op-count floor ``plain / (1 + 2 T)``.

    ``args.options_graph``, ``args.options_batch`` (a list) and
    ``args.options_iterations`` choose the case (default ResNet-20, batch 128,
    T = 10; quick: ResNet-8, 32, 5); ``args.variant`` (a list of labels of
    :func:`option_variants`), if set, runs only those variants.
    """
    from deepframe import accel

    device_type = torch.device(args.device).type
    cuda = device_type == "cuda"
    arch = getattr(args, "options_graph", None) or ("ResNet-8" if args.quick else "ResNet-20")
    batches = getattr(args, "options_batch", None) or ([32] if args.quick else [128])
    t = getattr(args, "options_iterations", None)
    t = (5 if args.quick else 10) if t is None else t
    variants = option_variants(cuda, args.torch_compile)
    wanted = getattr(args, "variant", None)
    if wanted:
        unknown = sorted(set(wanted) - set(variants))
        if unknown:
            raise ValueError(f"options: unknown variant(s) {unknown}; here: {sorted(variants)}")
        variants = {label: v for label, v in variants.items() if label in wanted}
    name = device_name(args.device)
    graph = _graph(arch, True)
    for batch in batches:
        print(f"\n## options: DP-res T={t}, {arch}, batch {batch}, {name}")
        print(
            f"{'variant':<22} {'train img/s':>12} {'x plain':>8} {'x op floor':>11} "
            f"{'infer img/s':>12} {'x plain':>8}"
        )
        x, y = _data(batch, args.device)
        for label, (options, tf32, autocast) in variants.items():
            row = _option_row(
                args, accel, graph, x, y, t, options, tf32, autocast, label == "default"
            )
            row.update(section="options", device=name, graph=arch, variant=label)
            out.append(row)
            print(
                f"{label:<22} {row['train_images_per_s']:12.1f} {row['x_plain_train']:8.3f} "
                f"{row['x_op_floor_train']:11.2f} {row['infer_images_per_s']:12.1f} "
                f"{row['x_plain_infer']:8.3f}",
                flush=True,
            )
            if "cuda_graph_infer_images_per_s" in row:
                print(
                    f"{'  + CUDA graph infer':<22} {'':>12} {'':>8} {'':>11} "
                    f"{row['cuda_graph_infer_images_per_s']:12.1f}"
                )


def _option_row(args, accel, graph, x, y, t, options, tf32, autocast, graphed) -> dict:
    """One variant of :func:`bench_options`: DP-res and the plain network, timed interleaved."""
    device_type = torch.device(args.device).type
    batch = x.shape[0]
    context = accel.tf32(tf32) if tf32 is not None else nullcontext()
    if autocast:
        step = partial(_autocast_train_step, device_type=device_type)
        infer = partial(_autocast_infer, device_type=device_type)
    else:
        step, infer = _train_step, _infer
    with context:
        net = df.compile(graph, method="deep", iterations=t, device=args.device, **options)
        plain_options = {"channels_last": True} if options.get("channels_last") else {}
        ff = df.compile(graph, method="feedforward", device=args.device, **plain_options)
        plain = PlainNet(ff)
        xs = x.contiguous(memory_format=torch.channels_last) if options.get("channels_last") else x
        rounds = {}
        train = time_interleaved(
            {
                "net": partial(step, net.train(), xs, y),
                "plain": partial(step, plain.train(), xs, y),
            },
            args.repeats,
            args.device,
            rounds,
        )
        calls = {"net": partial(infer, net.eval(), xs), "plain": partial(infer, plain.eval(), xs)}
        if device_type == "cuda" and graphed:
            cuda_graph = accel.CudaGraphInference(net, xs)
            calls["cuda graph"] = partial(cuda_graph, xs)
        infer_rounds = {}
        infer_s = time_interleaved(calls, args.repeats, args.device, infer_rounds)
    plain_rate = batch / train["plain"]
    x_plain_train = paired_ratio(rounds, "plain", "net")  # throughput: net over plain
    row = {
        "batch": batch,
        "method": "DP-res",
        "T": t,
        "options": {k: v for k, v in options.items()},
        "tf32": tf32,
        "bf16_autocast": autocast,
        "train_images_per_s": batch / train["net"],
        "plain_train_images_per_s": plain_rate,
        "x_plain_train": x_plain_train,
        # images/s over the op-count floor plain / (1 + 2 T)
        "x_op_floor_train": x_plain_train * (1 + 2 * t),
        "x_op_floor_train_best": (batch / train["net"]) / (plain_rate / (1 + 2 * t)),
        "infer_images_per_s": batch / infer_s["net"],
        "plain_infer_images_per_s": batch / infer_s["plain"],
        "x_plain_infer": paired_ratio(infer_rounds, "plain", "net"),
    }
    if "cuda graph" in infer_s:
        row["cuda_graph_infer_images_per_s"] = batch / infer_s["cuda graph"]
    return row


# --------------------------------------------------------------------------- targets


def targets(rows: list) -> list[dict]:
    """The targets of docs/performance.md, evaluated from the measured rows."""
    found = []
    solver = [r for r in rows if r["section"] == "solvers"]
    deep = [r for r in solver if r["method"] in ("DP", "DP-res") and r["T"] > 0]
    if deep:
        worst = max(deep, key=lambda r: r["x_floor"])
        found.append(
            {
                "target": "DP and DP-res at most 1.05x the hand-written floor",
                "measured": round(worst["x_floor"], 3),
                "where": (
                    f"{worst['graph']} batch {worst['batch']} {worst['method']} T={worst['T']}"
                ),
                "met": worst["x_floor"] <= 1.05,
            }
        )
    zero = [r for r in solver if r["T"] == 0]
    normed = [r for r in rows if r["section"] == "batchnorm"]
    for group, label in ((zero, ""), (normed, ", with batch norm")):
        if group:
            worst = max(group, key=lambda r: r["x_plain"])
            found.append(
                {
                    "target": f"T = 0 at most 1.02x the plain network{label}",
                    "measured": round(worst["x_plain"], 3),
                    "where": f"{worst['graph']} batch {worst['batch']} {worst['method']}",
                    "met": worst["x_plain"] <= 1.02,
                }
            )
    memory = {
        (r["T"], bool(r["checkpoint_sweeps"])): r
        for r in rows
        if r["section"] == "memory" and not r.get("explicit")  # the default choice only
    }
    # the case is T = 10; --quick measures up to T = 5
    t = 10 if (10, True) in memory else max((k[0] for k in memory), default=None)
    if t and (t, True) in memory and (t, False) in memory:
        stored, recomputed = memory[(t, False)], memory[(t, True)]
        for key, label in (("peak_tensors_mib", "live tensors"), ("peak_rss_mib", "RSS")):
            if stored.get(key) and recomputed.get(key):
                cut = stored[key] / recomputed[key]
                found.append(
                    {
                        "target": f"checkpoint_sweeps cuts the peak ({label}) >= 3x "
                        "for <= 1.4x the time",
                        "measured": (
                            f"{cut:.2f}x less memory, {recomputed['x_stored_time']:.2f}x time"
                        ),
                        "where": f"DP-res T={t} {stored['graph']} batch {stored['batch']}",
                        "met": cut >= 3.0 and recomputed["x_stored_time"] <= 1.4,
                    }
                )
    for r in rows:
        if r["section"] == "options" and r["variant"] == "default" and "CUDA" in r["device"]:
            found.append(
                {
                    "target": "GPU: DP-res T=10 training throughput >= 0.8x plain / (1 + 2T)",
                    "measured": round(r["x_op_floor_train"], 3),
                    "where": f"{r['graph']} batch {r['batch']} T={r['T']}",
                    "met": r["x_op_floor_train"] >= 0.8,
                }
            )
    return found


# --------------------------------------------------------------------------- driver


def _child_env(task: list) -> dict:
    """Environment of a measurement's interpreter.

    A memory child (which times nothing) gets ``MALLOC_MMAP_THRESHOLD_=65536``:
    every allocation above 64 KiB is its own mapping, so a freed tensor leaves the
    resident set at once and the peak RSS is the live memory. A geometry child
    keeps the allocator's defaults: it is timed, and returning every large
    temporary to the kernel made the structured geometry about 1.8x slower
    (ResNet-18 widths at 32x32: 7.6 s against 4.1-4.4 s, one thread).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if task[0] == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def _run_child(task: list, args) -> dict:
    """Run one measurement in a fresh interpreter (its peak memory is its own)."""
    env = _child_env(task)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *task]
    cmd += ["--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    cmd += ["--clock", args.clock]
    if args.memory_budget is not None:
        cmd += ["--memory-budget", args.memory_budget]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {task} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(task: list, args) -> dict:
    if task[0] == "memory":
        _, arch, t, segment, batch = task
        return _memory_child(arch, int(t), int(segment), int(batch), args.device)
    if task[0] == "geometry":
        import bench_geometry as geo

        geo.CLOCK = CLOCK
        return geo.run_case(task[1], args.repeats, device=args.device, budget=args.memory_budget)
    raise ValueError(f"unknown child task {task}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (minutes)")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda"
    )
    parser.add_argument("--out", default="bench.json", help="JSON file for every figure")
    parser.add_argument("--section", action="append", choices=SECTIONS, help="repeatable")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (best of)")
    parser.add_argument(
        "--graph", action="append", choices=sorted(ARCHS), help="solvers: only these graphs"
    )
    parser.add_argument("--batch", action="append", type=int, help="solvers: only these batches")
    parser.add_argument(
        "--iterations",
        action="append",
        type=int,
        help="solvers and memory: only these T (repeatable)",
    )
    parser.add_argument(
        "--segment",
        action="append",
        type=int,
        help="memory: also recompute in segments of this many sweeps (repeatable)",
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="bounds: training steps per timed call"
    )
    parser.add_argument(
        "--lr", type=float, default=0.1, help="bounds: the SGD learning rate (default 0.1)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--torch-compile", action="store_true", help="add the torch.compile variant (slow to build)"
    )
    parser.add_argument(
        "--options-batch", action="append", type=int, help="options: these batches (repeatable)"
    )
    parser.add_argument("--options-iterations", type=int, help="options: T (default 10)")
    parser.add_argument(
        "--variant", action="append", help="options: only these variants (repeatable)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall-clock seconds, or this process's CPU seconds (CPU only; use with "
        "--threads 1 on a shared machine)",
    )
    parser.add_argument(
        "--memory-budget",
        help="geometry: memory budget of every call (default: $DEEPFRAME_MEMORY_BUDGET, else 8G)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clock == "cpu" and torch.device(args.device).type != "cpu":
        parser.error("--clock cpu measures CPU work; GPU timings need --clock wall")
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 3
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(_child(args.child, args)))
        return 0

    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    started = time.time()
    meta = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "device": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "clock": args.clock,
        "load_average_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "quick": args.quick,
    }
    print(
        f"# {meta['command']}\n# {meta['device']}, torch {meta['torch']}, "
        f"{args.clock}-clock seconds, load average {meta['load_average_start']}"
    )
    rows: list = []
    sections = {
        "solvers": bench_solvers,
        "memory": bench_memory,
        "geometry": bench_geometry,
        "options": bench_options,
        "batchnorm": bench_batchnorm,
        "bounds": bench_bounds,
    }
    for section in args.section or SECTIONS:
        sections[section](args, rows)
        with open(args.out, "w") as f:  # what is measured so far survives an interruption
            json.dump({"meta": meta, "rows": rows, "targets": targets(rows)}, f, indent=1)
    meta["load_average_end"] = os.getloadavg()
    meta["wall_s"] = round(time.time() - started, 1)
    found = targets(rows)
    print("\n## targets (measured, not asserted)")
    for item in found:
        mark = "met" if item["met"] else "NOT met"
        print(f"- {item['target']}: {item['measured']} ({item['where']}) -- {mark}")
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows, "targets": found}, f, indent=1)
    print(
        f"\n# wrote {args.out}; load average at end {meta['load_average_end']}, {meta['wall_s']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
