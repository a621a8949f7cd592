"""Benchmark: measured peak memory against deepframe's estimates.

``deepframe.memory.estimate_memory(g)`` is what ``metrics_report`` and
``compile`` check against the memory budget before they allocate. This script
measures the real peak (``getrusage(RUSAGE_SELF).ru_maxrss`` growth, each case
in its own subprocess) of the structured geometry (``metrics_report``,
estimate ``bytes("metrics")``) and of a deep pursuit solver's Lipschitz
bounds (``net.lipschitz()``, computed at every forward pass; estimate
``MemoryEstimate.bound``), and prints one line per case with the ratio
measured / estimate, which should stay below 1.

    python analysis/bench_memory_estimate.py            # all cases, a few minutes
    python analysis/bench_memory_estimate.py --quick    # the small ones
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    args = parser.parse_args()
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
