"""``deepframe train``: train a compiled solver; log per epoch, checkpoint, resume.

Rerunning the same command resumes after the last finished epoch; a finished
run says so and trains nothing; other settings are refused (``--restart``
starts over). ``--out`` is locked while the command runs (a second writer is
refused, :func:`.outputs._run_lock`); a diverging run ends in one line naming
the epoch and what to lower. The loop itself is :func:`deepframe.train.train`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .arguments import DATASET_EPS, _alpha, _beta, _eps_text, _integer, _real
from .errors import EXIT_FAILURE, EXIT_OK, CommandError
from .options import add_arch, add_command, add_device, add_memory_budget
from .outputs import TRAIN_MARKERS, _check_output_folder, _run_lock
from .runtime import _device, _graph, _number, _say

__all__ = ["METHOD_ITERATIONS", "add_parser", "train_command"]

#: The methods of ``deepframe.compile`` and the default T of each.
METHOD_ITERATIONS = {"feedforward": 0, "layered": 3, "deep": 3}


def _iterations(args) -> tuple[int, str]:
    """T and how it was chosen; ``--iterations`` with ``feedforward`` is a contradiction."""
    if args.iterations is None:
        t = METHOD_ITERATIONS[args.method]
        return t, f"T={t} (the default for {args.method})"
    if args.method == "feedforward" and args.iterations > 0:
        raise CommandError(
            f"--iterations {args.iterations} has no effect with --method feedforward (T = 0 "
            "by definition): drop it, or choose --method layered or deep"
        )
    note = ""
    if args.iterations == 0 and args.method != "feedforward":
        note = f" (with T=0, {args.method} pursuit is the feed-forward network)"
    return args.iterations, f"T={args.iterations}{note}"


def _check_input_shape(args, given: tuple, data: tuple) -> None:
    """The data set decides the input shape; a builder spec that names another is refused
    (its default, e.g. resnet's 3x32x32, is replaced silently, as documented)."""
    name, colon, options = args.arch.partition(":")
    explicit = colon and not Path(args.arch).exists() and "input_shape=" in options
    if explicit and given != data:
        raise CommandError(
            f"{args.arch!r} names input_shape={'x'.join(map(str, given))}, but --dataset "
            f"{args.dataset} has {'x'.join(map(str, data))} inputs: drop input_shape (train "
            "takes it from the data set) or choose another --dataset"
        )


def _resume(args, out: Path, metadata: dict, settings: dict):
    """The state to resume from (``None``: start), or a CommandError naming what differs."""
    from ..checkpoints import CHECKPOINT_NAME
    from ..train import ResumeMismatchError, resume_state

    if args.restart:
        return None
    checkpoint = out / CHECKPOINT_NAME
    try:
        return resume_state(out, metadata=metadata, **settings)
    except ResumeMismatchError as exc:
        shown = "; ".join(exc.differences[:6])
        more = f"; and {len(exc.differences) - 6} more" if len(exc.differences) > 6 else ""
        raise CommandError(
            f"{checkpoint} was trained with other settings ({shown}{more}): pass "
            "--restart to start over (replaces its checkpoint and log), or use another --out"
        ) from None
    except ValueError as exc:
        if not checkpoint.exists():
            raise
        raise CommandError(
            f"{exc}: pass --restart to replace it with a new run, or use another --out"
        ) from None


def train_command(args) -> int:
    """Train a compiled solver on a dataset; log per epoch, checkpoint, resume."""
    from ..checkpoints import CHECKPOINT_NAME

    iterations, t_text = _iterations(args)
    if args.dataset != "cifar10" and (args.data_dir or args.augment):
        flag = "--data-dir" if args.data_dir else "--augment"
        raise CommandError(f"{flag} applies to --dataset cifar10 only, not {args.dataset}")
    out = Path(args.out)
    _check_output_folder(
        out, "--out", (CHECKPOINT_NAME, "log.jsonl"), TRAIN_MARKERS, "a run of deepframe train"
    )
    with _run_lock(args, out, "--out"):
        return _train(args, out, iterations, t_text)


def _train(args, out: Path, iterations: int, t_text: str) -> int:
    """:func:`train_command` once ``--out`` is checked and locked."""
    fgsm_eps = args.fgsm_eps or DATASET_EPS[args.dataset]

    import torch

    from ..checkpoints import model_metadata
    from ..data import DATASETS, load_dataset
    from ..graph import input_node, validate
    from ..memory import check_memory
    from ..pursuit import compile
    from ..train import train

    device = _device(args)
    info = DATASETS[args.dataset]
    g = _graph(args.arch)
    _check_input_shape(args, tuple(g.nodes[input_node(g)]["shape"]), tuple(info.input_shape))
    g.nodes[input_node(g)]["shape"] = tuple(info.input_shape)
    g = validate(g)
    solver = "pursuit" if args.method != "feedforward" and iterations else "weights"
    check_memory(g, solver, dtype=torch.float32)  # before any work (compile checks again)
    options = {
        "method": args.method,
        "iterations": iterations,
        "alpha": args.alpha,
        "beta": args.beta,
        **info.compile_options(),
        "seed": args.seed,
    }
    metadata = model_metadata(g, dataset=args.dataset, **options)
    settings = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "schedule": None if args.schedule == "none" else args.schedule,
        "seed": args.seed,
        "fgsm_eps": fgsm_eps,
        "adversarial": {"eps": args.adversarial_eps} if args.adversarial_eps else None,
    }
    state = _resume(args, out, metadata, settings)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if state is not None and state["epoch"] >= args.epochs:
        last = state["history"][-1] if state["history"] else {}
        if rank0:
            _report_train(args, last, out, complete=True)
        return EXIT_OK

    resuming = f"; resuming after epoch {state['epoch']}" if state is not None else ""
    if rank0:
        _say(
            args,
            f"{args.arch} as {args.method} pursuit, {t_text}, on {args.dataset}, "
            f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}, {args.optimizer} lr "
            f"{args.lr:g}, FGSM eps {fgsm_eps}, "
            f"device {device}{resuming}",
        )
    model = compile(g, **options)
    train_set, val_set = load_dataset(
        args.dataset, data_dir=args.data_dir, seed=args.seed, augment=args.augment
    )
    finished = [0 if state is None else state["epoch"]]  # the last finished epoch
    try:
        # the loop's line per epoch is a status line (stderr), like its progress bar:
        # stdout holds the result alone, printed once below (--json: one JSON object)
        with contextlib.redirect_stdout(sys.stderr):
            history = train(
                model,
                train_set,
                val_set,
                **settings,
                log_path=out / "log.jsonl",
                checkpoint_dir=out,
                resume=not args.restart,
                progress=not args.quiet,
                device=device,
                metadata=metadata,
                on_epoch_end=lambda record: finished.append(record["epoch"]),
            )
    except FloatingPointError as exc:
        raise _diverged(args, out, finished[-1] + 1, exc) from None
    if rank0:  # under torchrun, rank 0 reports
        _report_train(args, history[-1] if history else {}, out, complete=False)
    return EXIT_OK


def _diverged(args, out: Path, epoch: int, exc: FloatingPointError) -> CommandError:
    """The run diverged in ``epoch``: say where, what went non-finite and what to lower."""
    from ..checkpoints import CHECKPOINT_NAME

    reason = str(exc).strip().rstrip(".") or "the loss is not finite"
    kept = (
        f"; {out / CHECKPOINT_NAME} still holds epoch {epoch - 1}"
        if epoch > 1 and (out / CHECKPOINT_NAME).is_file()
        else ""
    )
    suggestion = 0.01 if args.lr > 0.01 else args.lr / 10  # 0.01: the default
    lower = f"lower --lr (now {args.lr:g}, e.g. to {suggestion:g})"
    if args.adversarial_eps:
        lower += " or --adversarial-eps"
    return CommandError(
        f"the run diverged in epoch {epoch} of {args.epochs} ({reason}): {lower}, then rerun "
        f"with --restart{kept}",
        code=EXIT_FAILURE,
    )


def _report_train(args, last: dict, out: Path, *, complete: bool) -> None:
    """Print the last epoch's record (``--json``: as JSON) and where the run is."""
    keys = ("epoch", "train_acc", "val_acc", "fgsm_eps", "val_fgsm_acc")
    result = {k: last.get(k) for k in keys}
    result.update(
        {
            "already_complete": complete,
            "checkpoint": str(out / "checkpoint.pt"),
            "log": str(out / "log.jsonl"),
        }
    )
    if complete:
        _say(
            args,
            f"{out} already holds a complete run ({last.get('epoch')}/{args.epochs} epochs): "
            "nothing to train; its last epoch is below (--restart trains it again)",
        )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"epoch {result['epoch']}: train acc {_number(result['train_acc'])}, val acc "
        f"{_number(result['val_acc'])}, FGSM acc {_number(result['val_fgsm_acc'])} "
        f"at eps {_number(result['fgsm_eps'])}"
    )
    print(f"checkpoint: {result['checkpoint']}  log: {result['log']}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``deepframe train`` and its options to the program's ``subparsers``."""
    p = add_command(
        subparsers,
        "train",
        "train a compiled solver (log, checkpoints, resume)",
        train_command,
        "Rerunning the same command resumes after the last finished epoch; a finished run\n"
        "says so and trains nothing; other settings are refused (--restart starts over).\n"
        "Guide: docs/cli.md and docs/training.md.",
    )
    add_arch(p)
    p.add_argument(
        "--method",
        default="deep",
        choices=list(METHOD_ITERATIONS),
        help="feedforward: the plain network (L-TP); layered: local iterations (L-BP); deep: "
        "global iterations (DP, DP-res with skips)",
    )
    p.add_argument(
        "--iterations",
        type=_integer(0),
        default=None,
        metavar="T",
        help="unrolled pursuit iterations (default: "
        + ", ".join(f"{t} for {m}" for m, t in METHOD_ITERATIONS.items())
        + ")",
    )
    p.add_argument(
        "--alpha",
        type=_alpha,
        default=0.0,
        help="extrapolation: a number in [0, 1) or 'fista' (the FISTA schedule)",
    )
    p.add_argument(
        "--beta",
        type=_beta,
        default="learned",
        help="step size factor: 'learned' (per node) or a number in (0, 1]",
    )
    p.add_argument("--dataset", default="digits", choices=list(DATASET_EPS), help="data set")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder of cifar-10-batches-py (default: none; required for cifar10, only there)",
    )
    p.add_argument("--augment", action="store_true", help="random crop + flip (cifar10)")
    p.add_argument("--epochs", type=_integer(1), default=10, help="epochs in total")
    p.add_argument("--batch-size", type=_integer(1), default=128, help="global batch size")
    p.add_argument("--optimizer", default="adam", choices=["sgd", "adam"], help="optimizer")
    p.add_argument("--lr", type=_real(strict=True), default=1e-2, help="learning rate (> 0)")
    p.add_argument("--momentum", type=_real(), default=0.9, help="SGD momentum (>= 0)")
    p.add_argument(
        "--weight-decay", type=_real(), default=5e-4, help="L2 on weights and kernels (>= 0)"
    )
    p.add_argument(
        "--schedule",
        default="cosine",
        choices=["cosine", "step", "none"],
        help="learning-rate schedule per epoch",
    )
    p.add_argument(
        "--fgsm-eps",
        type=_eps_text,
        default=None,
        metavar="EPS",
        help="eps of the per-epoch FGSM accuracy, a number or a fraction such as 8/255 "
        "(default: the data set's: " + ", ".join(f"{d} {e}" for d, e in DATASET_EPS.items()) + ")",
    )
    p.add_argument(
        "--adversarial-eps",
        type=_eps_text,
        default=None,
        metavar="EPS",
        help="FGSM adversarial training (random start) at this eps (default: none)",
    )
    p.add_argument("--seed", type=_integer(0), default=0, help="seed of weights, data and order")
    add_device(p, "training")
    p.add_argument(
        "--out", default="runs/train", metavar="DIR", help="folder of log.jsonl and checkpoint.pt"
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: replace the checkpoint and log in --out",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final record as JSON")
    add_memory_budget(p)
    return p
