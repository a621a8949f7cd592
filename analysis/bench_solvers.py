"""Forward + backward time of the pursuit solvers on one CIFAR-size ResNet graph.

For T in {0, 1, 5, 10} and each method (L-TP, L-BP, DP) on the ResNet graph
itself, the time of one training step's forward and backward pass (best of the
repeats) on a batch of 32x32 images, and its ratio to the plain network (ordinary torch convolutions
with the same weights), measured in this process.

    python analysis/bench_solvers.py [--batch 32] [--blocks 1] [--repeats 3] [--device cpu]

A thin wrapper over analysis/bench.py (its networks and its timing), kept for
the figures of docs/solvers.md; ``python analysis/bench.py --section solvers``
is the full comparison (DP / DP-res / L-BP, floor and plain ratios,
throughput). No data is needed (random images). Prints a table; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from bench import PlainNet, _data, _train_step, device_name, time_interleaved  # noqa: E402

import deepframe as df  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=1, help="blocks per stage (ResNet 6n+2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", default="0,1,5,10")
    args = parser.parse_args(argv)

    graph = df.resnet((3, 32, 32), blocks_per_stage=args.blocks)
    x, y = _data(args.batch, args.device)
    print(
        f"# ResNet-{6 * args.blocks + 2}, batch {args.batch}, {device_name(args.device)}, "
        f"torch {torch.__version__}"
    )
    ff = df.compile(graph, method="feedforward", device=args.device).train()
    plain = PlainNet(ff).train()
    print(f"{'method':<12} {'T':>3} {'seconds':>9} {'x plain':>8}")
    for method in ("feedforward", "layered", "deep"):
        for t in [int(v) for v in args.iterations.split(",")]:
            if method == "feedforward" and t:
                continue
            net = df.compile(graph, method=method, iterations=t, device=args.device).train()
            times = time_interleaved(
                {
                    "net": partial(_train_step, net, x, y),
                    "plain": partial(_train_step, plain, x, y),
                },
                args.repeats,
                args.device,
            )
            label = {"feedforward": "L-TP", "layered": "L-BP", "deep": "DP-res"}[method]
            sec = times["net"]
            print(f"{label:<12} {t:>3} {sec:9.4f} {sec / times['plain']:8.2f}", flush=True)


if __name__ == "__main__":
    main()
