"""Benchmark: the structured geometry of this checkout against a baseline revision, in one process.

On a shared machine the load moves between runs, so a change to the
structured engine is timed against the code before it *in the same
process*, interleaved: the baseline revision's ``deepframe`` package is
exported (``git archive``) into a temporary folder under the name
``deepframe_baseline`` (the package imports itself relatively, so it runs
there unchanged), both packages build the same graph with the same seed, and
each round times both (alternating which goes first) on the cases of
:mod:`bench_geometry` (``gram_metrics(D, deep=False)``: coherence and FP,
float64; then ``GramPlan.build`` + ``structural_nonzeros``). The metrics of
both must agree exactly (the script stops otherwise). Prints the best time
of each and the ratio ``after / before`` per case.

Usage::

    python analysis/bench_geometry_against.py --baseline main [--case resnet-1 ...]
                                              [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("chain-small", "ratio-chain", "resnet-1", "resnet-3", "resnet18-width")
BUDGET = "8G"


def _graph(df, name: str):
    return {
        "chain-small": lambda: df.chain((3, 8, 8), (16, 16)),
        "ratio-chain": lambda: df.chain((3, 16, 16), (16, 16)),
        "resnet-1": lambda: df.resnet((3, 32, 32), 1),
        "resnet-3": lambda: df.resnet((3, 32, 32), 3),
        "resnet18-width": lambda: df.resnet((3, 32, 32), 2, widths=(64, 128, 256, 512)),
    }[name]()


def _export(revision: str, folder: str) -> None:
    """``deepframe/`` of ``revision`` as ``folder/deepframe_baseline``."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", revision, "deepframe"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "deepframe"), os.path.join(folder, "deepframe_baseline"))


def _load(name: str):
    package = importlib.import_module(name)
    importlib.import_module(f"{name}.geometry.structured")
    return package


def _time(package, d) -> tuple:
    start = time.perf_counter()
    m = package.geometry.gram_metrics(d, deep=False, memory_budget=BUDGET)
    metrics = time.perf_counter() - start
    start = time.perf_counter()
    plan = package.geometry.structured.GramPlan.build(d, memory_budget=BUDGET)
    nnz = plan.structural_nonzeros()
    return metrics, time.perf_counter() - start, (m.coherence, m.frame_potential, nnz)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--case", action="append", choices=CASES, help="repeatable")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per package")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="deepframe-baseline-") as folder:
        _export(args.baseline, folder)
        sys.path.insert(0, folder)
        sys.path.insert(0, ROOT)
        before, after = _load("deepframe_baseline"), _load("deepframe")
        return _compare(args, before, after)


def _compare(args, before, after) -> int:
    print(f"# baseline {args.baseline}; load average at start {os.getloadavg()}", flush=True)
    for name in args.case or CASES:
        dictionaries = {
            "before": (before, before.dictionary(_graph(before, name), seed=0)),
            "after": (after, after.dictionary(_graph(after, name), seed=0)),
        }
        best = {(tag, part): float("inf") for tag in dictionaries for part in (0, 1)}
        results = {}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for tag in order:
                package, d = dictionaries[tag]
                *seconds, results[tag] = _time(package, d)
                for part in (0, 1):
                    best[tag, part] = min(best[tag, part], seconds[part])
        if results["before"] != results["after"]:
            print(f"{name}: the metrics differ: {results}", file=sys.stderr)
            return 1
        print(
            f"{name:15s} metrics {best['before', 0]:7.3f} s -> {best['after', 0]:7.3f} s "
            f"(x{best['after', 0] / best['before', 0]:.3f})   plan + N_nz "
            f"{best['before', 1]:7.3f} s -> {best['after', 1]:7.3f} s "
            f"(x{best['after', 1] / best['before', 1]:.3f})   identical metrics",
            flush=True,
        )
    print(f"# load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
