"""Benchmark: measured peak memory against deepframe's estimates.

``deepframe.memory.estimate_memory(g)`` is what ``metrics_report``,
``compile``, ``train`` and the attacks check against the memory budget before
they allocate. This script measures the real peak
(``getrusage(RUSAGE_SELF).ru_maxrss`` growth, each case in its own subprocess)
of the structured geometry (``metrics_report``, estimate ``bytes("metrics")``),
of a deep pursuit solver's Lipschitz bounds (``net.lipschitz()``, computed at
every forward pass; estimate ``MemoryEstimate.bound``) and of the unrolled
solvers run with autograd (``--section unroll``): one Adam training step
(estimate ``bytes("training")``, what :func:`deepframe.train.train` checks)
and one FGSM gradient (``bytes("attack")``, what the attacks check), the
peak resident set (``VmHWM``) from before ``compile`` to the end of the step
after a warm-up step of the same model at T <= 2 (so that the process's
one-time start, about 90 MiB of lazy imports and first kernels, is not
counted), over T, the batch, the methods,
``checkpoint_sweeps``, extrapolation and batch norm. It prints one line per
case with the ratio measured / estimate, which should stay below 1 (and not
far below: the estimate refuses what would fit otherwise).

    python analysis/bench_memory_estimate.py            # all cases, a few minutes
    python analysis/bench_memory_estimate.py --quick    # the small ones
    python analysis/bench_memory_estimate.py --section unroll [--device cuda]

On CPU the unroll children run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed tensors leave the resident set at once; on CUDA the measure is
``torch.cuda.max_memory_allocated`` (tensors only, exact).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = [
    "chain:input_shape=3x512x512",
    "chain:input_shape=3x1024x1024",
    "chain:input_shape=3x512x512,widths=64x64",
    "chain:input_shape=3x512x512,kernel_size=1",
    "chain:input_shape=3x512x512,kernel_size=5",
    "chain:input_shape=3x512x512,kernel_size=7",
    "resnet:input_shape=3x256x256",
    "densenet:input_shape=3x128x128",
    "chain:input_shape=4000,widths=2000x1000",
]
QUICK = [
    "chain:input_shape=3x256x256",
    "resnet:input_shape=3x128x128",
    "chain:input_shape=1000,widths=500x500",
]
BOUND_CASES = [
    "chain:input_shape=3x256x256",
    "chain:input_shape=3x512x512",
    "chain:input_shape=3x1024x1024",
    "resnet:input_shape=3x256x256",
]
BOUND_QUICK = ["chain:input_shape=3x128x128", "resnet:input_shape=3x64x64"]

_CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
import deepframe as df
from deepframe.memory import estimate_memory
from deepframe.graph import from_spec
g = from_spec(sys.argv[1])
D = df.dictionary(g, seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
df.metrics_report(D, memory_budget="64G")
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"spec": sys.argv[1], "atoms": D.shape[1], "measured": peak,
                  "estimate": estimate_memory(g).bytes("metrics")}))
"""

_BOUND_CHILD = """
import json, os, resource, sys, torch
torch.set_num_threads(1)
os.environ["DEEPFRAME_MEMORY_BUDGET"] = "64G"
import deepframe as df
from deepframe.memory import estimate_memory
from deepframe.graph import from_spec
g = from_spec(sys.argv[1])
net = df.compile(g, method="deep", iterations=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
net.lipschitz()
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"spec": sys.argv[1], "atoms": estimate_memory(g).atoms, "measured": peak,
                  "estimate": estimate_memory(g).bound}))
"""


# (spec, what, method, T, batch, checkpoint_sweeps, options): one unrolled step each
_CHAIN = "chain:input_shape=1x8x8,widths=8x16"  # what `deepframe train chain` builds
_RESNET = "resnet:input_shape=3x16x16,widths=8x16x32"
UNROLL_CASES = [
    (_CHAIN, "training", "deep", 0, 128, 0, {}),
    (_CHAIN, "training", "deep", 10, 128, 0, {}),
    (_CHAIN, "training", "deep", 50, 128, 0, {}),
    (_CHAIN, "training", "deep", 200, 128, 0, {}),
    (_CHAIN, "training", "deep", 200, 32, 0, {}),
    (_CHAIN, "training", "deep", 200, 128, True, {}),
    (_CHAIN, "training", "deep", 200, 128, 0, {"alpha": "fista"}),
    (_CHAIN, "training", "deep", 200, 128, 0, {"schedule": "jacobi"}),
    (_CHAIN, "training", "deep", 200, 128, 0, {"beta": 1.0}),
    (_CHAIN, "training", "layered", 200, 128, 0, {}),
    (_CHAIN, "training", "layered", 200, 128, True, {}),
    (_CHAIN, "training", "deep", 2000, 1, 0, {}),
    (_RESNET, "training", "deep", 0, 64, 0, {}),
    (_RESNET, "training", "deep", 10, 64, 0, {}),
    (_RESNET, "training", "deep", 40, 64, 0, {}),
    (_RESNET + ",batchnorm=true", "training", "deep", 10, 64, 0, {}),
    (_RESNET, "training", "deep", 10, 64, 0, {"schedule": "jacobi"}),
    (_RESNET, "training", "deep", 20, 64, True, {}),
    (_CHAIN, "attack", "deep", 200, 256, 0, {}),
    (_RESNET, "attack", "deep", 10, 128, 0, {}),
    (_RESNET + ",batchnorm=true", "attack", "layered", 10, 128, True, {}),
]
UNROLL_QUICK = [UNROLL_CASES[i] for i in (1, 3, 5, 9, 14, 19)]

_UNROLL_CHILD = """
import gc, json, os, sys, torch
import torch.nn.functional as F
torch.set_num_threads(1)
os.environ["DEEPFRAME_MEMORY_BUDGET"] = "64G"
import deepframe as df
from deepframe.graph import from_spec
from deepframe.memory import check_model_memory
spec, what, method, t, batch, segment, options, device = json.loads(sys.argv[1])
g = from_spec(spec)
cuda = device == "cuda"
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
gen = torch.Generator().manual_seed(0)
x = torch.rand((batch, *g.nodes["x"]["shape"]), generator=gen).to(device)
y = (torch.arange(batch) % 10).to(device)
def step(iterations):
    net = df.compile(g, method=method, iterations=iterations, checkpoint_sweeps=segment,
                     device=device, **options)
    if what == "training":
        net.train()
        estimate = check_model_memory(net, "training", batch, optimizer_states=2)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    else:
        net.eval()
        estimate = check_model_memory(net, "attack", batch)
        df.fgsm(net, x, y, 0.1)
    return estimate
step(min(t, 2))  # warm-up: lazy imports, kernels, the allocator's first arenas
gc.collect()
if cuda:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from now
    base = status("VmRSS")
estimate = step(t)
peak = (torch.cuda.max_memory_allocated() if cuda else status("VmHWM")) - base
print(json.dumps({"measured": peak, "estimate": estimate}))
"""


def _unroll_case(case, device: str) -> dict:
    import os

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(
        [sys.executable, "-c", _UNROLL_CHILD, json.dumps([*case, device])],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _saved_bytes(spec: str, method: str, t: int, batch: int, options: dict) -> int:
    """Bytes of the tensors autograd saves for the backward pass in one training forward
    (each storage counted once, the parameters' own storages left out)."""
    import torch
    import torch.nn.functional as F

    import deepframe as df
    from deepframe.graph import from_spec

    g = from_spec(spec)
    net = df.compile(g, method=method, iterations=t, **options).train()
    own = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.rand((batch, *g.nodes["x"]["shape"]), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.cross_entropy(net(x), torch.arange(batch) % 10)
    del loss
    return sum(seen.values())


def bench_saved(cases) -> None:
    """What one more iteration makes autograd save, against ``iteration_entries``."""
    from deepframe.graph import from_spec
    from deepframe.memory import Unroll, estimate_memory

    print("\n## saved for backward per iteration (T = 10 -> 20, training mode, float32)")
    print(f"{'architecture':56s} {'method':7s} {'options':20s} {'measured':>10} {'estimate':>10} "
          f"{'ratio':>5}")  # fmt: skip
    done = set()
    for spec, what, method, _, _, segment, options in cases:
        key = (spec, method, tuple(sorted(options.items())))
        if what != "training" or segment or key in done:
            continue
        done.add(key)
        batch = 16
        per = (_saved_bytes(spec, method, 20, batch, options) -
               _saved_bytes(spec, method, 10, batch, options)) / 10  # fmt: skip
        est = estimate_memory(from_spec(spec))
        import deepframe as df

        net = df.compile(from_spec(spec), method=method, iterations=20, **options)
        estimate = 4 * batch * est.iteration_entries(Unroll.of(net, batch))
        extra = ",".join(f"{k}={v}" for k, v in options.items()) or "-"
        print(f"{spec:56s} {method:7s} {extra:20s} {per / 1024:8.1f}Ki {estimate / 1024:8.1f}Ki "
              f"{per / estimate:5.2f}", flush=True)  # fmt: skip


def bench_unroll(cases, device: str) -> None:
    print(
        f"\n## unrolled solvers with autograd, {device}: peak of a step after a warm-up, "
        "from before compile, MiB"
    )
    print(
        f"{'architecture':56s} {'step':8s} {'method':7s} {'T':>4} {'batch':>5} {'ckpt':>4} "
        f"{'options':20s} {'measured':>9} {'estimate':>9} {'ratio':>5}"
    )
    for case in cases:
        spec, what, method, t, batch, segment, options = case
        r = _unroll_case(case, device)
        ckpt = "True" if segment is True else str(segment or "-")
        extra = ",".join(f"{k}={v}" for k, v in options.items()) or "-"
        print(
            f"{spec:56s} {what:8s} {method:7s} "
            f"{t:>4} {batch:>5} {ckpt:>4} {extra:20s} {r['measured'] / 2**20:9.1f} "
            f"{r['estimate'] / 2**20:9.1f} {r['measured'] / r['estimate']:5.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    parser.add_argument(
        "--section",
        choices=["all", "geometry", "unroll"],
        default="all",
        help="geometry: the metrics and Lipschitz-bound estimates; unroll: training steps "
        "and attacks through the unrolled solvers",
    )
    parser.add_argument("--device", default="cpu", help="device of the unroll cases")
    args = parser.parse_args()
    if args.section in ("all", "unroll"):
        unroll_cases = UNROLL_QUICK if args.quick else UNROLL_CASES
        bench_saved(unroll_cases)
        bench_unroll(unroll_cases, args.device)
    if args.section == "unroll":
        return
    runs = [("metrics", _CHILD, QUICK if args.quick else CASES)]
    runs += [("bound", _BOUND_CHILD, BOUND_QUICK if args.quick else BOUND_CASES)]
    for what, child, cases in runs:
        for spec in cases:
            done = subprocess.run(
                [sys.executable, "-c", child, spec], capture_output=True, text=True, check=True
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{what:8s}{r['spec']:45s} {r['atoms']:>11,} atoms  measured "
                f"{r['measured'] / 2**20:8.1f} MiB  estimate {r['estimate'] / 2**20:8.1f} MiB  "
                f"ratio {r['measured'] / r['estimate']:.2f}"
            )


if __name__ == "__main__":
    main()
