"""``deepframe describe``: nodes, shapes, edges, the size and block map of D.

Optionally writes the graph (``--out``) as node-link JSON, GraphML or DOT
(:mod:`.graph_files`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .errors import EXIT_OK, CommandError
from .graph_files import FORMATS, write_graph
from .options import (
    ARCH_HELP,
    add_arch,
    add_command,
    add_from_torch,
    add_input_shape,
    add_memory_budget,
)
from .outputs import _check_output_file
from .runtime import _graph, _say, _torch_model

__all__ = ["BLOCK_MAP_NODES", "add_parser", "describe"]

#: Nodes beyond which ``describe`` leaves out the block map unless asked.
BLOCK_MAP_NODES = 60


def describe(args) -> int:
    """Print nodes, shapes, edges, D's size and its block map; optionally write the graph."""
    out = Path(args.out) if args.out else None
    fmt = args.format
    if out is not None:
        fmt = fmt or FORMATS.get(out.suffix.lower())
        if fmt is None:
            raise CommandError(
                f"--out {out}: cannot tell the format from the suffix {out.suffix!r}: use .json, "
                ".graphml or .dot, or pass --format"
            )
        inputs = [args.arch] if args.arch else []
        out = _check_output_file(out, "--out", inputs=inputs, force=args.force)  # links followed
    elif fmt:
        raise CommandError("--format needs --out (the file to write)")

    import torch

    from ..dictionary import GlobalDictionary, random_weights
    from ..graph import activation_nodes, input_node, output_node
    from ..terms import parameter_shapes

    if args.from_torch or args.weights or args.arch is None:  # a user's own PyTorch model
        g = _torch_model(args)[0]
    else:
        g = _graph(args.arch, args.input_shape)
    D = GlobalDictionary(g, random_weights(g, dtype=torch.float32))  # memory checked first
    _say(args, "device cpu")
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
    from ..ops import DEFAULT_EDGE_KIND

    column = {j: i for i, j in enumerate(activation_nodes(g))}
    for k, j, a in sorted(g.edges(data=True), key=lambda e: (column[e[1]], str(e[0]))):
        detail = {
            key: a[key]
            for key in ("kernel_size", "stride", "padding", "dilation", "groups")
            if key in a
        }
        op = a.get("op", DEFAULT_EDGE_KIND)
        print(
            f"  {str(k):>12} -> {str(j):<12} {op:<9} {tuple(a['in_shape'])} -> "
            f"{tuple(a['out_shape'])} {detail if detail else ''}"
        )
    print(f"output  {output_node(g)} -> global average pooling -> linear")
    n, big_n = D.shape
    params = sum(math.prod(s) for s, _ in parameter_shapes(g).values())
    print(
        f"global dictionary D: {n} rows x {big_n} atoms, {len(D.terms)} terms, "
        f"{params} learned weights"
    )
    nodes = len(D.nodes)
    if args.block_map or nodes <= BLOCK_MAP_NODES:
        print("block map (rows: terms, columns: nodes):")
        print(D.block_map())
    else:
        print(f"block map left out ({nodes} nodes > {BLOCK_MAP_NODES}): --block-map prints it")
    if out is not None:
        write_graph(g, out, fmt)
        _say(args, f"wrote {out} ({fmt})")
    return EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``deepframe describe`` and its options to the program's ``subparsers``."""
    p = add_command(
        subparsers, "describe", "nodes, shapes, edges and the block map of D", describe, ARCH_HELP
    )
    add_arch(p, optional=True)
    add_from_torch(p)
    add_input_shape(p)
    p.add_argument(
        "--out",
        metavar="FILE",
        help="also write the graph: .json (node-link, editable and readable as ARCH), "
        ".graphml or .dot, for graph tools (default: write nothing)",
    )
    p.add_argument(
        "--format",
        choices=["json", "graphml", "dot"],
        help="format of --out (default: from its suffix)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument(
        "--block-map",
        action="store_true",
        help=f"print the block map also for graphs of more than {BLOCK_MAP_NODES} nodes",
    )
    add_memory_budget(p)
    return p
