"""Forward + backward time of the pursuit solvers on a CIFAR-size ResNet graph.

For T in {0, 1, 5, 10} and each method (L-TP, L-BP, DP), the time of one
training step's forward and backward pass on a batch of 32x32 images, and its
ratio to a plain feed-forward network (ordinary torch convolutions with the same
weights), all measured in this process.

    python analysis/bench_solvers.py [--batch 32] [--blocks 1] [--repeats 3] [--device cpu]

No data is needed (random images). Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

import deepframe as df


class PlainResNet(torch.nn.Module):
    """The ordinary network of the same graph: conv/identity/shortcut sums and ReLU."""

    def __init__(self, net: df.PursuitNet):
        super().__init__()
        self.net = net  # borrows the weights, lambdas and head

    def forward(self, x):
        net, g = self.net, self.net.graph
        weights, lambdas = net.weight_dict(), net.lambdas()
        h = {net.input: net.normalize(x)}
        for j in net.nodes:
            a = 0
            for k in sorted(g.predecessors(j), key=str):
                e = g.edges[k, j]
                if e["op"] == "conv":
                    a = a + F.conv2d(
                        h[k],
                        weights[f"{k}->{j}"],
                        stride=e.get("stride", 1),
                        padding=e["kernel_size"] // 2,
                    )
                elif e["op"] == "identity":
                    a = a + h[k]
                else:  # option-A shortcut
                    s = e["stride"]
                    pad = g.nodes[j]["shape"][0] - g.nodes[k]["shape"][0]
                    a = a + F.pad(h[k][:, :, ::s, ::s], (0, 0, 0, 0, pad // 2, pad - pad // 2))
            h[j] = F.relu(a - lambdas[j].reshape(-1, 1, 1))
        return net.head(h[net.output].mean((2, 3)))


def time_step(model, x, y, repeats: int) -> float:
    """Median seconds of forward + backward (after one warm-up step)."""
    times = []
    for r in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=1, help="blocks per stage (ResNet 6n+2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", default="0,1,5,10")
    args = parser.parse_args()

    graph = df.resnet((3, 32, 32), blocks_per_stage=args.blocks)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(args.device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(args.device)
    print(
        f"# ResNet-{6 * args.blocks + 2}, batch {args.batch}, device {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    ff = df.compile(graph, method="feedforward", device=args.device).train()
    plain = PlainResNet(ff).train()
    base = time_step(plain, x, y, args.repeats)
    print(f"{'method':<12} {'T':>3} {'seconds':>9} {'x plain':>8}")
    print(f"{'plain':<12} {0:>3} {base:9.4f} {1.0:8.2f}")
    for method in ("feedforward", "layered", "deep"):
        for t in [int(v) for v in args.iterations.split(",")]:
            if method == "feedforward" and t:
                continue
            net = df.compile(graph, method=method, iterations=t, device=args.device).train()
            sec = time_step(net, x, y, args.repeats)
            label = {"feedforward": "L-TP", "layered": "L-BP", "deep": "DP-res"}[method]
            print(f"{label:<12} {t:>3} {sec:9.4f} {sec / base:8.2f}")


if __name__ == "__main__":
    main()
