"""Compile a small ResNet graph, run deep pursuit for T = 10 iterations and plot
the objective and every layer's reconstruction error per iteration (the seed
paper's Fig. 8, here on random weights and random images).

    python examples/solve_and_trace.py [--out trace.png]
"""

import argparse

import torch

import deepframe as df


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="trace.png")
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()

    graph = df.resnet((3, 16, 16), blocks_per_stage=1, widths=(8, 16, 32), bias=0.02)
    net = df.compile(
        graph, method="deep", iterations=args.iterations, beta=1.0, dtype=torch.float64
    ).eval()
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        _, trace = net.encode(x, trace=True)

    objective = trace.objective.mean(1)
    print("iteration  objective  " + "  ".join(f"{str(j):>8}" for j in net.nodes))
    for t in range(objective.shape[0]):
        errors = "  ".join(f"{float(trace.node_errors[j][t].mean()):8.4f}" for j in net.nodes)
        print(f"{t:9d}  {float(objective[t]):9.3f}  {errors}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(objective.numpy(), marker="o")
    ax1.set(xlabel="iteration t (0 = feed-forward)", ylabel="F(w)", title="objective")
    for j in net.nodes:
        ax2.plot(trace.node_errors[j].mean(1).numpy(), marker=".", label=str(j))
    ax2.set(
        xlabel="iteration t",
        ylabel="||r||^2 / ||target||^2",
        yscale="log",
        title="reconstruction error per layer",
    )
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
