"""``deepframe attack``: accuracy of a trained checkpoint under FGSM or PGD for each eps.

The result is also written as JSON (``--out``, by default beside the
checkpoint), whose folder is locked while the command runs; a rerun replaces
its own earlier result (the same checkpoint's), any other existing file only
with ``--force``, and never the checkpoint or a run's files. The validation
split is the one the model was trained with. The attacks are
:mod:`deepframe.attacks`'.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import DATASET_EPS, _eps_ladder, _eps_text, _integer
from .errors import EXIT_OK, CommandError
from .options import add_command, add_device, add_memory_budget
from .outputs import _check_not_being_written, _check_output_file, _run_lock, _same_file
from .runtime import _device, _say

__all__ = ["PGD_STEPS", "add_parser", "attack_command"]

#: PGD's steps when ``--steps`` is not given.
PGD_STEPS = 10


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


def _split_seed(state: dict, default: int) -> int:
    """The seed of the train/validation split the model was trained with (``train --seed``).

    Attacking the validation samples of another split would attack images the
    model was trained on. ``default`` where the checkpoint does not record it.
    """
    for seed in (
        (state.get("config") or {}).get("seed"),
        ((state.get("metadata") or {}).get("compile") or {}).get("seed"),
    ):
        if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
            return seed
    return default


def _dataset(args, checkpoint: Path, state: dict) -> str:
    """``--dataset``, else the data set the checkpoint records; one of :data:`DATASET_EPS`."""
    stored = (state.get("metadata") or {}).get("dataset")
    if args.dataset and stored and args.dataset != stored:
        raise CommandError(
            f"--dataset {args.dataset}: {checkpoint} was trained on {stored}; attacking it on "
            "other data measures nothing: drop --dataset (it is for checkpoints that do not "
            "record their data set)"
        )
    dataset = args.dataset or stored
    if dataset is None:
        raise CommandError(f"{checkpoint} does not record its dataset: pass --dataset")
    if dataset not in DATASET_EPS:
        raise CommandError(
            f"{checkpoint} records the dataset {dataset!r}, which is not one of "
            f"{', '.join(DATASET_EPS)}: pass --dataset"
        )
    return dataset


#: The keys by which an existing file is recognised as an earlier result of ``attack``.
_RESULT_KEYS = {"checkpoint", "attack", "clean", "accuracy"}


def _earlier_result(out: Path, checkpoint: Path) -> bool:
    """Whether ``out`` holds an earlier result of ``deepframe attack`` on ``checkpoint``.

    Such a file is the command's own output: a rerun replaces it without ``--force``.
    Its ``checkpoint`` is read as written (from the current folder) or beside ``out``.
    """
    import json

    try:
        if out.stat().st_size > 1 << 20:
            return False
        result = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(result, dict) or not _RESULT_KEYS <= set(result):
        return False
    stored = result.get("checkpoint")
    if not isinstance(stored, str):
        return False
    candidates = [Path(stored), out.parent / Path(stored).name]
    return any(_same_file(candidate, checkpoint) for candidate in candidates)


def attack_command(args) -> int:
    """Accuracy of a trained checkpoint under FGSM or PGD for each eps."""
    checkpoint = _checkpoint_file(args)
    if args.attack == "fgsm" and args.steps is not None:
        raise CommandError(
            f"--steps {args.steps} has no effect with --attack fgsm (one step by definition): "
            "drop it, or choose --attack pgd"
        )
    out = Path(args.out) if args.out else checkpoint.with_name(f"attack_{args.attack}.json")
    rerun = out.is_file() and _earlier_result(out, checkpoint)
    out = _check_output_file(out, "--out", inputs=[checkpoint], force=args.force or rerun)
    if not _same_file(out.parent, checkpoint.parent):
        _check_not_being_written(checkpoint.parent, f"checkpoint {checkpoint}")
    with _run_lock(args, out.parent, "--out"):
        return _attack(args, checkpoint, out, rerun)


def _attack(args, checkpoint: Path, out: Path, rerun: bool) -> int:
    """:func:`attack_command` once the output is checked and its folder locked."""
    import torch
    from tqdm.auto import tqdm

    from .._io import write_json
    from ..attacks import evaluate, parse_eps_list, pgd_step_size
    from ..checkpoints import load_checkpoint, load_model
    from ..data import load_dataset

    device = _device(args)
    model = load_model(checkpoint, map_location=device)
    state = load_checkpoint(checkpoint, training=False)
    dataset = _dataset(args, checkpoint, state)
    eps_text = args.eps or _eps_ladder(DATASET_EPS[dataset])
    eps = parse_eps_list(eps_text)
    if args.data_dir and dataset != "cifar10":
        raise CommandError(f"--data-dir applies to cifar10 only, not {dataset}")
    split = _split_seed(state, args.seed)
    _, val_set = load_dataset(dataset, data_dir=args.data_dir, seed=split)
    if args.limit is not None:
        val_set = torch.utils.data.Subset(val_set, range(min(args.limit, len(val_set))))
    pgd = args.attack == "pgd"
    steps = (args.steps or PGD_STEPS) if pgd else 1
    how = f"pgd, {steps} steps, seed {args.seed}" if pgd else "fgsm"
    _say(
        args,
        f"{how} at eps {eps_text} on {len(val_set)} {dataset} validation samples (the split "
        f"of training seed {split}), device {device}",
    )
    batches = torch.utils.data.DataLoader(val_set, batch_size=256, shuffle=False)
    bar = tqdm(batches, desc=f"{args.attack} x {len(eps)} eps", disable=args.quiet, leave=False)
    measured = evaluate(model, bar, eps, args.attack, steps=steps, seed=args.seed)
    clean, accs = measured.accuracy, measured.robust_accuracy
    result = {
        "checkpoint": str(checkpoint),
        "epoch": state.get("epoch") if isinstance(state.get("epoch"), int) else None,
        "attack": args.attack,
        "steps": steps if pgd else None,
        # pgd's default step size, 2.5 eps / steps (deepframe.attacks.pgd), per eps
        "step_size": {f"{e:.6g}": pgd_step_size(e, steps) for e in eps} if pgd else None,
        "random_start": True if pgd else None,
        "seed": args.seed,
        "split_seed": split,
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
    _say(args, f"{'replaced its earlier result in' if rerun else 'wrote'} {out}")
    return EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``deepframe attack`` and its options to the program's ``subparsers``."""
    p = add_command(
        subparsers,
        "attack",
        "accuracy of a checkpoint under FGSM or PGD",
        attack_command,
        "The result is also written as JSON (--out). A rerun replaces its own earlier\n"
        "result (the same checkpoint's); any other existing file needs --force, and the\n"
        "checkpoint and the run's files are never replaced. Units of eps:\n"
        "docs/robustness.md.",
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
    p.add_argument(
        "--steps",
        type=_integer(1),
        default=None,
        help=f"PGD steps (default: {PGD_STEPS}; FGSM is one step and refuses --steps)",
    )
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
    p.add_argument(
        "--seed",
        type=_integer(0),
        default=0,
        help="seed of PGD's random starts (the validation split is always the one the model "
        "was trained with)",
    )
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
