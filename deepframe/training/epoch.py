"""One epoch of :func:`deepframe.train.train`: seed its streams, train, step, validate.

Reproducibility without stored RNG state: every random stream of epoch ``e``
(the shuffling, the CIFAR-10 augmentation, the random starts of adversarial
training, the global torch RNG a model may use for dropout) is seeded from
``(seed, e)`` (and the rank) at its start (:func:`run_epoch`), so resuming
after epoch ``e`` needs only the weights, the optimizer and the scheduler.

The epoch's record holds the keys of :data:`RECORD_KEYS` and whatever the
``extra_metrics`` of the run adds (by default :func:`pursuit_objective`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..attacks import eval_mode, evaluate, model_device, pgd
from ..data import derive_seed, make_loader
from .distributed import Process, all_reduce, shard

__all__ = [
    "RECORD_KEYS",
    "Run",
    "pursuit_objective",
    "run_epoch",
    "train_epoch",
    "validation_metrics",
]

#: The keys of every epoch's record; ``extra_metrics`` may not override them.
RECORD_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "fgsm_eps",
    "val_fgsm_acc",
    "lr",
    "time",
)

ExtraMetrics = Callable[[nn.Module, Dataset | None], Mapping[str, float]]


@dataclass(frozen=True)
class Run:
    """One training run: what every epoch reads, and where rank 0 writes after it.

    Attributes
    ----------
    model : nn.Module
        The plain module (hooks, attacks, evaluation: rank-local work).
    train_model : nn.Module
        What the optimizer steps through (``model`` in DDP when distributed).
    train_data, val_data : Dataset
        ``(x, y)`` datasets; ``val_data`` may be None.
    optimizer : torch.optim.Optimizer
        The optimizer.
    scheduler : LRScheduler or None
        The learning-rate schedule, stepped once per epoch.
    config : dict
        The checked settings (:func:`.config.training_config`).
    process : Process
        This process of the run.
    eval_batch_size, num_workers : int
        Batch size of the evaluation; DataLoader worker processes.
    extra_metrics : callable or None
        ``extra_metrics(model, val_data) -> {name: float}``.
    progress : bool
        Show a tqdm progress bar and a line per epoch (rank 0).
    metadata : dict or None
        Stored as is in the checkpoint.
    log_path, checkpoint_path : Path or None
        The JSON-lines log and ``checkpoint.pt`` (:mod:`.log`).
    on_epoch_end : callable or None
        ``on_epoch_end(record)``, on every rank after the log and the checkpoint.
    """

    model: nn.Module
    train_model: nn.Module
    train_data: Dataset
    val_data: Dataset | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    config: dict
    process: Process
    eval_batch_size: int
    num_workers: int
    extra_metrics: ExtraMetrics | None
    progress: bool
    metadata: Mapping[str, Any] | None
    log_path: Path | None
    checkpoint_path: Path | None
    on_epoch_end: Callable[[dict], None] | None


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed torch's global CPU generator (and that of ``device`` if CUDA), nothing else."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index].manual_seed(seed)


def _refresh(model: nn.Module) -> None:
    """``model.refresh_lipschitz()`` when the model has it (the pursuit solvers)."""
    refresh = getattr(model, "refresh_lipschitz", None)
    if callable(refresh):
        refresh()


def run_epoch(epoch: int, run: Run) -> dict:
    """Epoch ``epoch`` (0-based): seed its streams, train, step the schedule, validate.

    Returns
    -------
    dict
        The epoch's record (the keys are listed in :func:`deepframe.train.train`).

    Raises
    ------
    FloatingPointError
        The loss or the weights are no longer finite (the run diverged).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    config, process, model = run.config, run.process, run.model
    seed, rank, device = config["seed"], process.rank, process.device
    _seed_global_rng(derive_seed(seed, epoch, rank, 0), device)
    if callable(getattr(run.train_data, "set_epoch", None)):
        run.train_data.set_epoch(epoch)
    loader = make_loader(
        run.train_data,
        config["batch_size"] // process.world_size,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=process.world_size,
        num_workers=run.num_workers,
        pin_memory=device.type == "cuda",
    )
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config['epochs']}",
        disable=not run.progress or rank != 0,
        leave=False,
    )
    attack_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, rank, 1))
    record = {"epoch": epoch + 1}
    try:
        record.update(
            train_epoch(
                run.train_model,
                model,
                bar,
                run.optimizer,
                config["adversarial"],
                attack_generator,
                process,
            )
        )
        if run.scheduler is not None:
            run.scheduler.step()
        _refresh(model)
        record.update(
            validation_metrics(
                model, run.val_data, run.eval_batch_size, config["fgsm_eps"], process
            )
        )
    except torch.linalg.LinAlgError as exc:  # a solver's Lipschitz bound of non-finite weights
        if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise
        raise FloatingPointError("training diverged: the weights are no longer finite") from exc
    record.update(_extra_record(run.extra_metrics, model, run.val_data))
    record["time"] = time.perf_counter() - started
    return record


def train_epoch(
    train_model: nn.Module,
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    adversarial: dict | None,
    attack_generator: torch.Generator,
    process: Process,
) -> dict:
    """One pass over this rank's batches; loss and accuracy summed over all ranks.

    ``train_model`` is what the optimizer steps through (the DDP wrapper when
    distributed), ``model`` the plain module (hooks, attacks: rank-local work
    that must not trigger DDP's gradient synchronisation). With
    ``adversarial`` each batch is first replaced by its FGSM example with a
    random start (Wong et al. 2020).

    Raises
    ------
    FloatingPointError
        The epoch's loss is not finite (the run diverged).
    """
    device = process.device
    train_model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    lr = optimizer.param_groups[0]["lr"]
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        _refresh(model)
        if adversarial is not None:  # FGSM with random start (Wong et al. 2020)
            x = pgd(
                model,
                x,
                y,
                adversarial["eps"],
                steps=1,
                step_size=adversarial["alpha"],
                random_start=True,
                generator=attack_generator,
            )
        optimizer.zero_grad(set_to_none=True)
        logits = train_model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().to(torch.float64) * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        count += y.shape[0]
    total_loss, total_correct, total = all_reduce(
        [float(loss_sum), float(correct), float(count)], process
    )
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"training diverged: the epoch's loss is {total_loss}")
    return {"train_loss": total_loss / total, "train_acc": total_correct / total, "lr": lr}


def validation_metrics(
    model: nn.Module,
    val_data: Dataset | None,
    batch_size: int,
    fgsm_eps: float | None,
    process: Process,
) -> dict:
    """Validation loss, accuracy and FGSM accuracy, each rank on its shard, summed.

    One pass of :func:`deepframe.attacks.evaluate` (FGSM, Eq. 19, at
    ``fgsm_eps``) per rank; the sums are added over the ranks.

    Raises
    ------
    ValueError
        ``val_data`` is empty.
    """
    record = {"val_loss": None, "val_acc": None, "fgsm_eps": fgsm_eps, "val_fgsm_acc": None}
    if val_data is None:
        return record
    result = evaluate(
        model,
        shard(val_data, process),
        [] if fgsm_eps is None else [fgsm_eps],
        "fgsm",
        loss=True,
        batch_size=batch_size,
        device=process.device,
    )
    robust = sum(result.robust_correct.values())
    loss, correct, robust, count = all_reduce(
        [result.loss_sum, result.correct, robust, result.count], process
    )
    if count == 0:
        raise ValueError("val_data is empty")
    record["val_loss"] = loss / count
    record["val_acc"] = correct / count
    if fgsm_eps is not None:
        record["val_fgsm_acc"] = robust / count
    return record


def pursuit_objective(
    model: nn.Module, val_data: Dataset | None, *, max_samples: int = 256
) -> dict[str, float]:
    """The pursuit objective ``F(w^[T])`` after the last iteration, for the epoch log.

    The default ``extra_metrics`` of :func:`deepframe.train.train`. For a
    model with ``encode(x, trace=True) -> (codes, trace)`` (the solvers of
    :func:`deepframe.compile`), returns ``{"objective": mean over samples of
    trace.objective[-1]}`` on the first ``max_samples`` validation images, in
    eval mode; for any other model, or without validation data, ``{}``.
    """
    encode = getattr(model, "encode", None)
    if val_data is None or not callable(encode) or len(val_data) == 0:
        return {}
    x = torch.stack([val_data[i][0] for i in range(min(max_samples, len(val_data)))])
    with eval_mode(model), torch.no_grad():
        _, trace = encode(x.to(model_device(model)), trace=True)
    objective = getattr(trace, "objective", None)
    if objective is None:
        return {}
    return {"objective": float(objective[-1].mean())}


def _extra_record(extra_metrics: ExtraMetrics | None, model: nn.Module, val_data) -> dict:
    """What ``extra_metrics`` adds to the epoch's record (floats or None, no key of its own)."""
    if extra_metrics is None:
        return {}
    record = {}
    for key, value in dict(extra_metrics(model, val_data)).items():
        if key in RECORD_KEYS:
            raise ValueError(f"extra_metrics may not override {key!r}")
        record[key] = value if value is None else float(value)
    return record
