"""The ``deepframe`` command (also ``python -m deepframe``).

Subcommands: ``describe``, ``metrics``, ``train``, ``attack``, ``reproduce``.
An architecture argument is a builder spec (``resnet:blocks_per_stage=1``,
``chain:input_shape=1x8x8,widths=8x16``) or a node-link JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
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
        print(
            f"  {str(k):>12} -> {str(j):<12} {op:<9} {tuple(a['in_shape'])} -> "
            f"{tuple(a['out_shape'])} {detail if detail else ''}"
        )
    print(f"output  {output_node(g)} -> global average pooling -> linear")
    D = GlobalDictionary(g, random_weights(g))
    n, big_n = D.shape
    params = sum(__import__("math").prod(s) for s, _ in parameter_shapes(g).values())
    print(
        f"global dictionary D: {n} rows x {big_n} atoms, {len(D.terms)} terms, "
        f"{params} learned weights"
    )
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
    if args.checkpoint:  # the trained weights (and stored architecture), in float64
        from .train import load_model

        D = load_model(args.checkpoint).dictionary().to(torch.float64)
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


def train_command(args) -> int:
    """Train a compiled solver on a dataset; log per epoch, checkpoint, resume."""
    from pathlib import Path

    from .data import DATASETS, load_dataset
    from .graph import input_node, validate
    from .pursuit import compile
    from .train import model_metadata, train

    info = DATASETS[args.dataset]
    g = _graph(args.arch)
    g.nodes[input_node(g)]["shape"] = tuple(info.input_shape)
    g = validate(g)
    options = {
        "method": args.method,
        "iterations": args.iterations,
        "alpha": args.alpha,
        "beta": args.beta,
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "seed": args.seed,
    }
    model = compile(g, **options)
    train_set, val_set = load_dataset(
        args.dataset, data_dir=args.data_dir, seed=args.seed, augment=args.augment
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = model_metadata(g, **options)
    metadata["dataset"] = args.dataset
    adversarial = {"eps": args.adversarial_eps} if args.adversarial_eps else None
    history = train(
        model,
        train_set,
        val_set,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule or None,
        seed=args.seed,
        fgsm_eps=args.fgsm_eps,
        adversarial=adversarial,
        log_path=out / "log.jsonl",
        checkpoint_dir=out,
        resume=not args.restart,
        progress=not args.quiet,
        device=args.device,
        metadata=metadata,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    last = history[-1] if history else {}
    print(
        json.dumps(
            {k: last.get(k) for k in ("epoch", "train_acc", "val_acc", "fgsm_eps", "val_fgsm_acc")}
        )
    )
    print(f"checkpoint: {out / 'checkpoint.pt'}  log: {out / 'log.jsonl'}")
    return 0


def attack_command(args) -> int:
    """Accuracy of a trained checkpoint under FGSM or PGD for each eps."""
    from pathlib import Path

    from .attacks import accuracy, parse_eps_list, robust_accuracy
    from .data import load_dataset
    from .train import load_checkpoint, load_model

    model = load_model(args.checkpoint, map_location=args.device or "cpu")
    dataset = args.dataset or (load_checkpoint(args.checkpoint).get("metadata") or {}).get(
        "dataset"
    )
    if dataset is None:
        raise ValueError(f"{args.checkpoint} does not record its dataset: pass --dataset")
    _, val_set = load_dataset(dataset, data_dir=args.data_dir, seed=args.seed)
    if args.limit:
        import torch

        val_set = torch.utils.data.Subset(val_set, range(min(args.limit, len(val_set))))
    eps = parse_eps_list(args.eps)
    clean = accuracy(model, val_set)
    accs = robust_accuracy(model, val_set, eps, args.attack, steps=args.steps, seed=args.seed)
    result = {
        "checkpoint": str(args.checkpoint),
        "attack": args.attack,
        "dataset": dataset,
        "samples": len(val_set),
        "clean": clean,
        "accuracy": {f"{e:.6g}": a for e, a in accs.items()},
    }
    print(f"clean accuracy: {clean:.4f}")
    for (text, e), a in zip(zip(args.eps.split(","), eps), accs.values()):
        print(f"{args.attack} eps={text.strip()} ({e:.5f}): {a:.4f}")
    out = (
        Path(args.out)
        if args.out
        else Path(args.checkpoint).with_name(f"attack_{args.attack}.json")
    )
    from ._io import atomic_write

    atomic_write(out, lambda f: f.write(json.dumps(result, indent=2).encode()))
    print(f"wrote {out}")
    return 0


def reproduce_command(args) -> int:
    """The seed paper's Figs. 5-10 and claims end to end: train, attack, measure, report."""
    from .experiments import merge, reproduce

    seeds = None if args.seeds is None else tuple(int(v) for v in args.seeds.split(","))
    if args.merge:
        summary = merge(
            args.merge,
            args.out,
            profile=args.profile,
            data_dir=args.data_dir,
            seeds=seeds,
            jobs=args.jobs,
            progress=not args.quiet,
        )
        print(f"merged {len(summary['models'])} models; report: {args.out}/report.md")
        return 0
    result = reproduce(
        args.out,
        profile=args.profile,
        data_dir=args.data_dir,
        seeds=seeds,
        shard=args.shard,
        only=args.only,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    done = len(result["models"])
    if result["results"] is None:
        print(
            f"{done} models ({result['trained_now']} trained now) in {args.out}; "
            "no report for a part of the profile: merge the parts with "
            f"deepframe reproduce --profile {args.profile} --merge DIR... --out DEST"
        )
    else:
        print(
            f"{done} models ({result['trained_now']} trained now); "
            f"report: {args.out}/report.md, numbers: {args.out}/results.json"
        )
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
    p.add_argument(
        "--checkpoint", help="measure a trained model's dictionary (its stored architecture)"
    )
    p.add_argument("--method", default="structured", choices=["structured", "dense"])
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=metrics)

    p = sub.add_parser("train", help="train a compiled solver (log, checkpoints, resume)")
    _add_arch(p)
    p.add_argument("--method", default="deep", choices=["feedforward", "layered", "deep"])
    p.add_argument("--iterations", type=int, default=0, help="T, unrolled iterations")
    p.add_argument("--alpha", default=0.0, type=lambda v: v if v == "fista" else float(v))
    p.add_argument("--beta", default="learned", type=lambda v: v if v == "learned" else float(v))
    p.add_argument("--dataset", default="digits", choices=["digits", "synthetic", "cifar10"])
    p.add_argument("--data-dir", help="folder of cifar-10-batches-py (cifar10 only)")
    p.add_argument("--augment", action="store_true", help="random crop + flip (cifar10)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", ""])
    p.add_argument("--fgsm-eps", default="8/255", help="eps of the per-epoch FGSM accuracy")
    p.add_argument(
        "--adversarial-eps",
        type=float,
        default=None,
        help="FGSM adversarial training (random init) at this eps",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="runs/train", help="folder of log.jsonl and checkpoint.pt")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=train_command)

    p = sub.add_parser("attack", help="accuracy of a checkpoint under FGSM or PGD")
    p.add_argument("checkpoint")
    p.add_argument("--attack", default="fgsm", choices=["fgsm", "pgd"])
    p.add_argument("--eps", default="1/255,2/255,4/255,8/255")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--dataset", default=None, help="default: the one the model was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="attack the first N samples only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="JSON result (default beside the checkpoint)")
    p.set_defaults(func=attack_command)

    p = sub.add_parser(
        "reproduce",
        help="the seed paper's Figs. 5-10 and a verdict per claim (docs/results.md)",
    )
    p.add_argument(
        "--profile",
        default="quick",
        choices=["quick", "cifar-small", "full", "test"],
        help="quick: digits, 3 seeds, minutes on a CPU (default); cifar-small: CIFAR-10 "
        "subset, about 2 hours on 2 CPU cores; full: the paper's scale, for a GPU; "
        "test: a seconds-long smoke test",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR-10 folder (cifar-10-batches-py layout) for cifar-small and full",
    )
    p.add_argument("--out", default="runs/reproduce", help="run folder (resumable)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the profile's)")
    p.add_argument("--shard", default=None, help="train only shard i of n, e.g. 1/3")
    p.add_argument(
        "--only", default=None, help="train only models whose names match these patterns"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="join the models of these run folders into --out and write the report",
    )
    p.add_argument(
        "--jobs", type=int, default=2, help="models trained at once, one process each (default 2)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=reproduce_command)
    return parser


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
