"""Benchmark: the structured geometry's measured peak memory against its estimate.

``deepframe.dictionary.estimate_memory(g).bytes("metrics")`` is what
``metrics_report`` checks against the memory budget before it allocates. This
script measures the real peak (``getrusage(RUSAGE_SELF).ru_maxrss`` growth
during ``metrics_report``, each case in its own subprocess) and prints one
line per case with the ratio measured / estimate, which should stay below 1.

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

_CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
import deepframe as df
from deepframe.dictionary import estimate_memory
from deepframe.graph import from_spec
g = from_spec(sys.argv[1])
D = df.dictionary(g, seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
df.metrics_report(D, memory_budget="64G")
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
print(json.dumps({"spec": sys.argv[1], "atoms": D.shape[1], "measured": peak,
                  "estimate": estimate_memory(g).bytes("metrics")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small cases only")
    args = parser.parse_args()
    for spec in QUICK if args.quick else CASES:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, spec], capture_output=True, text=True, check=True
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['spec']:45s} {r['atoms']:>11,} atoms  measured {r['measured'] / 2**20:8.1f} MiB  "
            f"estimate {r['estimate'] / 2**20:8.1f} MiB  ratio {r['measured'] / r['estimate']:.2f}"
        )


if __name__ == "__main__":
    main()
