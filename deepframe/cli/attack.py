"""``deepframe attack``: accuracy of a trained checkpoint under FGSM or PGD for each eps.

The result is also written as JSON (``--out``, by default beside the
checkpoint); an existing file is never replaced without ``--force``, and
never the checkpoint. The attacks are :mod:`deepframe.attacks`'.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import DATASET_EPS, _eps_ladder, _eps_text, _integer
from .errors import EXIT_OK, CommandError
from .options import add_command, add_device, add_memory_budget
from .outputs import _check_output_file
from .runtime import _device, _say

__all__ = ["add_parser", "attack_command"]


def _checkpoint_file(args) -> Path:
    """``CHECKPOINT`` as an existing file (a folder holding one is named in the error)."""
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        raise CommandError(
            f"{checkpoint} is a folder: give the checkpoint file"
            + (" (its checkpoint.pt?)" if (checkpoint / "checkpoint.pt").is_file() else "")
        )
    if not checkpoint.is_file():
        raise CommandError(f"checkpoint not found: {checkpoint}")
    return checkpoint


def _dataset(args, checkpoint: Path) -> str:
    """``--dataset``, else the data set the checkpoint records; one of :data:`DATASET_EPS`."""
    from ..checkpoints import load_checkpoint

    stored = (load_checkpoint(checkpoint, training=False).get("metadata") or {}).get("dataset")
    dataset = args.dataset or stored
    if dataset is None:
        raise CommandError(f"{checkpoint} does not record its dataset: pass --dataset")
    if dataset not in DATASET_EPS:
        raise CommandError(
            f"{checkpoint} records the dataset {dataset!r}, which is not one of "
            f"{', '.join(DATASET_EPS)}: pass --dataset"
        )
    return dataset


def attack_command(args) -> int:
    """Accuracy of a trained checkpoint under FGSM or PGD for each eps."""
    checkpoint = _checkpoint_file(args)
    out = Path(args.out) if args.out else checkpoint.with_name(f"attack_{args.attack}.json")
    _check_output_file(out, "--out", inputs=[checkpoint], force=args.force)

    import torch
    from tqdm.auto import tqdm

    from .._io import write_json
    from ..attacks import evaluate, parse_eps_list
    from ..checkpoints import load_model
    from ..data import load_dataset

    device = _device(args)
    model = load_model(checkpoint, map_location=device)
    dataset = _dataset(args, checkpoint)
    eps_text = args.eps or _eps_ladder(DATASET_EPS[dataset])
    eps = parse_eps_list(eps_text)
    if args.data_dir and dataset != "cifar10":
        raise CommandError(f"--data-dir applies to cifar10 only, not {dataset}")
    _, val_set = load_dataset(dataset, data_dir=args.data_dir, seed=args.seed)
    if args.limit is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(args.limit, len(val_set))))
    steps = f", {args.steps} steps" if args.attack == "pgd" else ""
    _say(
        args,
        f"{args.attack}{steps} at eps {eps_text} on {len(val_set)} {dataset} samples, "
        f"device {device}",
    )
    batches = torch.utils.data.DataLoader(val_set, batch_size=256, shuffle=False)
    bar = tqdm(batches, desc=f"{args.attack} x {len(eps)} eps", disable=args.quiet, leave=False)
    measured = evaluate(model, bar, eps, args.attack, steps=args.steps, seed=args.seed)
    clean, accs = measured.accuracy, measured.robust_accuracy
    result = {
        "checkpoint": str(checkpoint),
        "attack": args.attack,
        "steps": args.steps if args.attack == "pgd" else None,
        "dataset": dataset,
        "samples": len(val_set),
        "device": str(device),
        "clean": clean,
        "accuracy": {f"{e:.6g}": a for e, a in accs.items()},
    }
    write_json(out, result, indent=2)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"clean accuracy: {clean:.4f}")
        for text, (e, a) in zip(eps_text.split(","), accs.items()):
            print(f"{args.attack} eps={text.strip()} ({e:.5f}): {a:.4f}")
    _say(args, f"wrote {out}")
    return EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``deepframe attack`` and its options to the program's ``subparsers``."""
    p = add_command(
        subparsers,
        "attack",
        "accuracy of a checkpoint under FGSM or PGD",
        attack_command,
        "The result is also written as JSON (--out); an existing file is never replaced\n"
        "without --force, and never the checkpoint. Units of eps: docs/robustness.md.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.pt of deepframe train")
    p.add_argument("--attack", default="fgsm", choices=["fgsm", "pgd"], help="the attack")
    p.add_argument(
        "--eps",
        type=_eps_text,
        default=None,
        help="comma-separated radii in pixel units, e.g. 1/255,2/255 or 0.05,0.1 (default: "
        "eps/8, eps/4, eps/2, eps with the data set's eps: "
        + ", ".join(f"{d} {e}" for d, e in DATASET_EPS.items())
        + ")",
    )
    p.add_argument("--steps", type=_integer(1), default=10, help="PGD steps")
    p.add_argument(
        "--dataset",
        default=None,
        choices=list(DATASET_EPS),
        help="data set (default: the one the model was trained on)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder of cifar-10-batches-py (default: none; required for cifar10, only there)",
    )
    p.add_argument(
        "--limit",
        type=_integer(1),
        default=None,
        metavar="N",
        help="attack the first N validation samples only (default: all)",
    )
    p.add_argument("--seed", type=_integer(0), default=0, help="seed of PGD's random starts")
    add_device(p, "the attack")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="JSON result (default: attack_fgsm.json or attack_pgd.json beside the checkpoint)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_memory_budget(p)
    return p
