"""Benchmark: exact mutual coherence + frame potential of global dictionaries.

Runs every case in its own subprocess so that its peak memory is its own, and
prints one line per case plus a JSON summary (``--json``).

Cases (docs/geometry.md, docs/performance.md), in increasing number of atoms:

* ``chain-small``: ``chain((3, 8, 8), (16, 16))``, 2,048 atoms, structured and
  dense;
* ``resnet-1``, ``resnet-3``: ``resnet((3, 32, 32))`` with 1 and 3 basic blocks
  per stage (CIFAR 6n+2 family, widths 16/32/64, option-A shortcuts);
* ``resnet18-width``: ``resnet((3, 32, 32), 2, widths=(64, 128, 256, 512))``,
  a ResNet-18-width graph at 32x32, 557,056 atoms (its dense Gram would take
  557056^2 * 8 bytes = 2.5 TB); target <= 10 s on 2 cores;
* ``ratio-chain``: ``chain((3, 16, 16), (16, 16))``, exactly 8,192 atoms,
  structured and dense (``D.todense()``, normalise, Gram) in the same process;
  target structured/dense speed-up >= 100x. (The dense Gram costs ``2 n N^2``
  flops; a ResNet of that size has ``n > N`` rows, its skips add rows, which
  makes the dense reference slower still.)
* ``resnet18-112``, ``resnet18-224``: the ResNet-18-width graph at 112x112
  (6.8 million atoms) and 224x224 (27.3 million atoms).
* ``resnet50-224``: the layout of ResNet-50 at 224x224 (:func:`bottleneck_resnet`:
  a 7x7 stride-2 stem, bottleneck blocks 3/4/6/3 of widths 64/128/256/512 with
  expansion 4, projection shortcuts where the shape changes), 9.0 million
  atoms; ``resnet50-tiny`` the same layout at 16x16 with widths 2/2/4/4 (not in
  the default list; dense check).

The dense reference runs for every case of at most 8,192 atoms (its Gram takes
``8 N^2`` bytes: 0.5 GiB there).

Memory budget: ``--memory-budget``, else ``DEEPFRAME_MEMORY_BUDGET``, else 8 GiB
(:data:`BENCH_MEMORY_BUDGET`), passed to every call as ``memory_budget=``. The
library's default of 2 GiB refuses ``resnet18-224`` (its structured geometry is
estimated at about 2.14 GiB); the budget also sizes the structured method's
chunks, so it is recorded with every row (``memory_budget``).

What is timed: ``gram_metrics(D, deep=False)``, i.e. coherence (with its
location) and FP in one exact pass, float64, after compiling ``D`` (not timed).
``deep=True`` adds the structural count ``N_nz`` (for the DFP), timed
separately as ``nnz_s``. Structured times are the best of ``--repeat`` runs,
the dense reference runs once (the machine may be shared: the load average is
printed).

Memory: peak resident set size (``VmHWM`` of ``/proc/self/status`` on Linux,
else ``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which sees torch's CPU
allocations (``tracemalloc`` does not);
``rss_before`` is that peak just before the first timed call, so
``peak - rss_before`` is what the computation itself added on top of the
interpreter, torch and the compiled dictionary.

Usage::

    python analysis/bench_geometry.py [--repeat 3] [--threads 2] [--json] [--case NAME ...]
                                      [--memory-budget 8G]

``python analysis/bench.py --section geometry`` runs the same cases as part of
the one benchmark (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = (
    "chain-small",
    "ratio-chain",
    "resnet-1",
    "resnet-3",
    "resnet18-width",
    "resnet18-112",
    "resnet18-224",
    "resnet50-224",
)
#: Cases not in the default list: a small graph of the ResNet-50 layout, with a dense check
#: (analysis/gpu_run.py --dry-run and the tests use it).
EXTRA_CASES = ("resnet50-tiny",)
DENSE_MAX_ATOMS = 8192
#: The budget when neither ``--memory-budget`` nor ``DEEPFRAME_MEMORY_BUDGET`` sets one
#: (the library's 2 GiB default refuses ``resnet18-224``).
BENCH_MEMORY_BUDGET = "8G"


def memory_budget(value: str | int | None = None) -> int:
    """The budget of a case in bytes: ``value``, else ``DEEPFRAME_MEMORY_BUDGET``, else
    :data:`BENCH_MEMORY_BUDGET`."""
    from deepframe.memory import MEMORY_BUDGET_ENV, resolve_memory_budget

    if value is None and not os.environ.get(MEMORY_BUDGET_ENV, "").strip():
        value = BENCH_MEMORY_BUDGET
    return resolve_memory_budget(value)


def _status_mib(field: str) -> float | None:
    """``VmHWM`` (peak) or ``VmRSS`` (current) resident set of this process, MiB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    ``VmHWM`` where Linux has it: unlike ``getrusage(...).ru_maxrss``, which keeps
    the peak of the process that forked this one across ``execve``, it starts
    afresh in a new program, so a child started by a large parent (bench.py)
    reports its own peak.
    """
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bottleneck_resnet(
    input_shape=(3, 224, 224),
    blocks=(3, 4, 6, 3),
    widths=(64, 128, 256, 512),
    *,
    expansion: int = 4,
    stem: int = 64,
):
    """The layout of ResNet-50 (He et al. 2016, Table 1) as a deepframe graph.

    A 7x7 stride-2 stem conv to ``stem`` channels, then one stage per width of
    bottleneck blocks (1x1 reduce to ``width``, 3x3, 1x1 expand to ``expansion
    * width``; the stride on the 3x3 conv, as torchvision's v1.5) whose last
    node adds the block input through an identity edge, or a ``project`` edge
    (1x1 conv with the stride, option B) where the shape changes. The stem's
    3x3 max pooling is not linear and has no edge kind: the first stage's
    first block takes stride 2 in its place, so every stage has ResNet-50's
    shape (56, 28, 14, 7 at 224x224) and its channels. Edge-centric, no batch
    norm (which the structured geometry folds per node anyway).
    """
    import networkx as nx

    import deepframe as df

    g = nx.DiGraph()
    g.add_node("x", kind="input", shape=tuple(input_shape))
    g.add_node("stem", channels=int(stem))
    g.add_edge("x", "stem", op="conv", kernel_size=7, stride=2)
    prev, channels = "stem", int(stem)
    for s, (count, width) in enumerate(zip(blocks, widths, strict=True), start=1):
        for b in range(1, count + 1):
            stride = 2 if b == 1 else 1
            a, m, e = f"s{s}b{b}a", f"s{s}b{b}b", f"s{s}b{b}c"
            g.add_node(a, channels=int(width))
            g.add_node(m, channels=int(width))
            g.add_node(e, channels=int(expansion * width))
            g.add_edge(prev, a, op="conv", kernel_size=1)
            g.add_edge(a, m, op="conv", kernel_size=3, stride=stride)
            g.add_edge(m, e, op="conv", kernel_size=1)
            if stride == 1 and channels == expansion * width:
                g.add_edge(prev, e, op="identity")
            else:
                g.add_edge(prev, e, op="project", stride=stride)
            prev, channels = e, int(expansion * width)
    return df.validate(g)


def _graph(name: str):
    import deepframe as df

    if name == "resnet50-224":
        return bottleneck_resnet()
    if name == "resnet50-tiny":
        return bottleneck_resnet((3, 16, 16), widths=(2, 2, 4, 4), stem=4)

    if name == "resnet-1":
        return df.resnet((3, 32, 32), 1)
    if name == "resnet-3":
        return df.resnet((3, 32, 32), 3)
    if name == "resnet18-width":
        return df.resnet((3, 32, 32), 2, widths=(64, 128, 256, 512))
    if name == "ratio-chain":
        return df.chain((3, 16, 16), (16, 16))
    if name == "chain-small":
        return df.chain((3, 8, 8), (16, 16))
    if name == "resnet18-112":
        return df.resnet((3, 112, 112), 2, widths=(64, 128, 256, 512))
    if name == "resnet18-224":
        return df.resnet((3, 224, 224), 2, widths=(64, 128, 256, 512))
    raise ValueError(f"unknown case {name!r}; expected one of {CASES + EXTRA_CASES}")


CLOCK = time.perf_counter  # analysis/bench.py --clock cpu sets time.process_time


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = CLOCK()
        out = fn()
        best = min(best, CLOCK() - start)
    return best, out


def _peak_mib(device: str) -> float:
    """Peak memory so far: RSS of this process, or CUDA tensors on a GPU."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _maxrss_mib()


def run_case(name: str, repeat: int, device: str = "cpu", budget: str | int | None = None) -> dict:
    """One case in this process: compile, time the structured (and dense) metrics.

    ``budget``: the memory budget of every call (see :func:`memory_budget`). On
    CUDA the peak is ``torch.cuda.max_memory_allocated`` instead of the RSS.
    """
    import torch

    import deepframe as df
    from deepframe import geometry
    from deepframe.geometry.structured import GramPlan

    d = df.dictionary(_graph(name), seed=0)
    if device != "cpu":
        d = d.to(device=device)
    n, big_n = d.shape
    budget = memory_budget(budget)
    row = {"case": name, "atoms": big_n, "rows": n, "threads": torch.get_num_threads()}
    row["memory_budget"] = budget
    row["rss_before_mib"] = round(_peak_mib(device), 1)

    def structured():
        out = geometry.gram_metrics(d, deep=False, memory_budget=budget)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    seconds, m = _best(structured, repeat)
    row.update(
        structured_s=round(seconds, 3),
        coherence=m.coherence,
        frame_potential=m.frame_potential,
        attained_at=[m.attained_at["atoms"][0]["node"], m.attained_at["atoms"][1]["node"]],
    )
    row["peak_structured_mib"] = round(_peak_mib(device), 1)
    start = CLOCK()
    row["structural_nonzeros"] = GramPlan.build(d, memory_budget=budget).structural_nonzeros()
    row["nnz_s"] = round(CLOCK() - start, 3)
    if big_n <= DENSE_MAX_ATOMS:
        seconds, r = _best(
            lambda: geometry.gram_metrics(d, method="dense", deep=False, memory_budget=budget), 1
        )
        row.update(
            dense_s=round(seconds, 3),
            speedup=round(seconds / row["structured_s"], 1),
            max_abs_diff_coherence=abs(r.coherence - m.coherence),
            rel_diff_fp=abs(r.frame_potential - m.frame_potential) / r.frame_potential,
        )
        row["peak_dense_mib"] = round(_peak_mib(device), 1)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case",
        action="append",
        choices=CASES + EXTRA_CASES,
        help="run only these cases (repeatable)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--memory-budget",
        help=f"memory budget of every call (default: $DEEPFRAME_MEMORY_BUDGET, else "
        f"{BENCH_MEMORY_BUDGET})",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.child, args.repeat, budget=args.memory_budget)))
        return 0

    print(
        f"# cpus={os.cpu_count()} torch threads={args.threads} "
        f"load average at start={os.getloadavg()}",
        flush=True,
    )
    rows = []
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for name in args.case or CASES:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            "--repeat",
            str(args.repeat),
            "--threads",
            str(args.threads),
        ]
        if args.memory_budget is not None:
            cmd += ["--memory-budget", args.memory_budget]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr}", file=sys.stderr)
            return 1
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        line = (
            f"{name:15s} N={row['atoms']:>7d} n={row['rows']:>7d}  "
            f"structured {row['structured_s']:7.3f} s  peak RSS "
            f"{row['peak_structured_mib']:7.1f} MiB (+"
            f"{row['peak_structured_mib'] - row['rss_before_mib']:.1f})  "
            f"mu={row['coherence']:.6f} FP={row['frame_potential']:.6g}  "
            f"N_nz={row['structural_nonzeros']} ({row['nnz_s']:.2f} s)"
        )
        if "dense_s" in row:
            line += (
                f"\n{'':15s} dense {row['dense_s']:.3f} s  peak RSS "
                f"{row['peak_dense_mib']:.1f} MiB  speed-up {row['speedup']}x  "
                f"|dmu|={row['max_abs_diff_coherence']:.1e} "
                f"rel dFP={row['rel_diff_fp']:.1e}"
            )
        print(line, flush=True)
    print(f"# load average at end={os.getloadavg()}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
