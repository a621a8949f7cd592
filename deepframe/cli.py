"""The ``deepframe`` command (also ``python -m deepframe``).

Subcommands: ``describe``, ``metrics``, ``train``, ``attack``, ``reproduce``.
An architecture argument is a builder spec (``resnet:blocks_per_stage=1``,
``chain:input_shape=1x8x8,widths=8x16``) or a node-link JSON file.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def _graph(spec: str):
    from .graph import from_spec

    return from_spec(spec)


def describe(args) -> int:
    """Print nodes, shapes, edges, D's size and its block map."""
    from .dictionary import GlobalDictionary, parameter_shapes, random_weights
    from .graph import activation_nodes, input_node, output_node

    g = _graph(args.arch)
    src = input_node(g)
    print(f"input   {src}: shape {tuple(g.nodes[src]['shape'])}")
    print("nodes (column order):")
    for j in activation_nodes(g):
        a = g.nodes[j]
        extra = []
        if a.get("merge", "edge") == "input":
            extra.append(f"merge=input op={a['op']} z{tuple(a['input_shape'])}")
        if a.get("bias"):
            extra.append(f"bias={a['bias']}")
        if a.get("batchnorm"):
            extra.append("batchnorm")
        print(f"  {str(j):>12}  {str(tuple(a['shape'])):>14}  {' '.join(extra)}")
    print("edges:")
    column = {j: i for i, j in enumerate(activation_nodes(g))}
    for k, j, a in sorted(g.edges(data=True), key=lambda e: (column[e[1]], str(e[0]))):
        detail = {key: a[key] for key in ("kernel_size", "stride", "padding") if key in a}
        op = a.get("op", "identity")
        print(f"  {str(k):>12} -> {str(j):<12} {op:<9} {tuple(a['in_shape'])} -> "
              f"{tuple(a['out_shape'])} {detail if detail else ''}")
    print(f"output  {output_node(g)} -> global average pooling -> linear")
    D = GlobalDictionary(g, random_weights(g))
    n, big_n = D.shape
    params = sum(__import__("math").prod(s) for s, _ in parameter_shapes(g).values())
    print(f"global dictionary D: {n} rows x {big_n} atoms, {len(D.terms)} terms, "
          f"{params} learned weights")
    print("block map (rows: terms, columns: nodes):")
    print(D.block_map())
    return 0


def metrics(args) -> int:
    """Geometry of the global dictionary (issue 4)."""
    import torch

    from .geometry import metrics_report

    g = _graph(args.arch)
    if args.input_shape:
        from .graph import input_node, validate

        g.nodes[input_node(g)]["shape"] = tuple(int(s) for s in args.input_shape.split("x"))
        g = validate(g)
    if args.checkpoint:
        from .train import load_model

        D = load_model(args.checkpoint).dictionary()
    else:
        from .dictionary import dictionary

        D = dictionary(g, seed=args.seed, dtype=torch.float64)
    report = metrics_report(D, method=args.method)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>28}: {value}")
    return 0


def _add_arch(p):
    p.add_argument("arch", help="builder spec (e.g. resnet:blocks_per_stage=1) or a .json file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepframe",
        description="Global dictionaries, deep pursuit and their geometry.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("describe", help="nodes, shapes, edges and the block map of D")
    _add_arch(p)
    p.set_defaults(func=describe)

    p = sub.add_parser("metrics", help="Welch bounds, coherence, frame potentials of D")
    _add_arch(p)
    p.add_argument("--input-shape", help="override the input shape, e.g. 3x32x32")
    p.add_argument("--checkpoint", help="measure a trained model's dictionary")
    p.add_argument("--method", default="structured", choices=["structured", "dense"])
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=metrics)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    from .graph import ArchitectureError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ArchitectureError, FileNotFoundError, ValueError) as exc:
        print(f"deepframe {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
