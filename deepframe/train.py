"""Training loop: SGD/Adam, schedules, FGSM monitoring, resume, distributed.

One function, :func:`train`, runs on one process or under ``torchrun`` with
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on
CUDA). It writes a JSON-lines log (one record per epoch, the data of the seed
paper's Fig. 7) and an atomically replaced checkpoint from which a run
resumes to exactly the weights an uninterrupted run reaches (on CPU): every
random stream of epoch ``e`` is seeded from ``(seed, e)`` (and the rank), so
resuming needs only the weights, the optimizer and the scheduler. The
caller's global RNG state is saved and restored around the whole run.

This module holds the public names; the machinery behind them lives in
:mod:`deepframe.training`, one idea per module (settings, resume, processes,
the epoch, the log). The checkpoint format, its safe loading and
:func:`load_model` live in :mod:`deepframe.checkpoints`. Their public names
are re-exported here: ``from deepframe.train import ...`` is the one way in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    check_storable,
    load_checkpoint,
    load_model,
    model_metadata,
    save_checkpoint,
)
from .training.config import OPTIMIZERS, SCHEDULES, parameter_groups, training_config
from .training.distributed import check_batch_size, process_group, wrap
from .training.epoch import Run, pursuit_objective, run_epoch
from .training.log import save_epoch, write_log
from .training.resume import (
    ResumeMismatchError,
    checked_checkpoint,
    load_resumed,
    resume_differences,
)

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "ResumeMismatchError",
    "pursuit_objective",
    "resume_differences",
    "resume_state",
    "train",
    # re-exported from deepframe.checkpoints, where they are documented
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "load_model",
    "model_metadata",
    "save_checkpoint",
]


def _with_defaults(settings: Mapping[str, Any]) -> dict:
    """``settings`` completed with :func:`train`'s defaults for the others."""
    names = inspect.signature(training_config).parameters
    defaults = {
        name: p.default
        for name, p in inspect.signature(train).parameters.items()
        if name in names and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **settings}


def resume_state(
    checkpoint_dir: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict | None:
    """The checkpoint a :func:`train` call would resume from, checked, before any work.

    ``settings`` are :func:`train`'s keyword arguments that matter here
    (``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``momentum``,
    ``weight_decay``, ``schedule``, ``seed``, ``fgsm_eps``, ``adversarial``);
    those not given take :func:`train`'s defaults. Compare ``state["epoch"]``
    with ``epochs`` to see whether the run is already complete.

    Returns
    -------
    dict or None
        The checkpoint (see :func:`load_checkpoint`), or None when
        ``checkpoint_dir`` holds none.

    Raises
    ------
    ValueError
        A setting is invalid, or the checkpoint is not a deepframe checkpoint.
    ResumeMismatchError
        The checkpoint was trained with other settings or another model
        (the message lists every difference).
    """
    config = training_config(**_with_defaults(settings))
    return checked_checkpoint(checkpoint_dir, config, metadata)


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None = None,
    *,
    epochs: int,
    batch_size: int = 128,
    optimizer: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str | None = "cosine",
    seed: int = 0,
    fgsm_eps: float | str | None = None,
    adversarial: Mapping[str, float | str] | None = None,
    log_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    device: torch.device | str | None = None,
    extra_metrics: Callable[[nn.Module, Dataset | None], Mapping[str, float]]
    | None = pursuit_objective,
    on_epoch_end: Callable[[dict], None] | None = None,
    metadata: Mapping[str, Any] | None = None,
    eval_batch_size: int = 512,
    num_workers: int = 0,
    memory_budget: int | str | None = None,
) -> list[dict]:
    r"""Train a classifier of [0, 1] images with cross-entropy (docs/training.md).

    Each step minimises ``J = -1/B sum_i log softmax(model(x_i))_{y_i}`` with
    SGD (momentum, no Nesterov) or Adam; weight decay (L2) applies to
    parameters with >= 2 dimensions only (not to biases, ``lambda``, ``beta``
    or normalisation); the rate follows a per-epoch schedule. A model's
    ``refresh_lipschitz()`` (:func:`deepframe.compile`'s solvers) is called
    before every step and evaluation. Adversarial training is FGSM with a
    random start (Wong, Rice & Kolter 2020): each batch becomes
    ``clip_[0,1](Pi_eps(x + u + a sign(grad_x J(x + u, y))))``, ``u ~ U[-e, e]``
    (:func:`deepframe.attacks.pgd`, one step of size ``a``, in eval mode).

    After every epoch a JSON record is appended to ``log_path``: ``epoch``
    (1-based), ``train_loss``, ``train_acc`` (on the batches the optimizer
    saw), ``val_loss``, ``val_acc``, ``fgsm_eps``, ``val_fgsm_acc`` (FGSM,
    Eq. 19; None when not measured), ``lr``, ``time`` (seconds) and what
    ``extra_metrics`` returns. ``checkpoint_dir/checkpoint.pt`` is replaced
    atomically after every epoch; with ``resume=True`` a run continues after
    its epoch, bit for bit as an uninterrupted run on CPU, and other
    settings, metadata or weights are refused (:mod:`deepframe.training.resume`;
    :func:`resume_state` checks without training). Under ``torchrun`` the
    model runs in DDP, ``batch_size`` is global, metrics are summed over
    ranks and rank 0 writes (:mod:`deepframe.training.distributed`).

    Parameters
    ----------
    model : nn.Module
        Classifier of [0, 1] images (normalisation inside), trained in place on ``device``.
    train_data, val_data : Dataset
        ``(x, y)`` datasets; ``val_data`` may be None. A dataset with a
        ``set_epoch(epoch)`` method (augmentation) is told the epoch.
    epochs, batch_size : int
        Total epochs (a resumed run counts the finished ones); global batch size.
    optimizer : {"sgd", "adam"}
    lr, momentum, weight_decay : float
        Learning rate, SGD momentum (ignored by Adam), L2 weight decay.
    schedule : {"cosine", "step", None}
    seed : int
        Seed of every random stream.
    fgsm_eps : float or str, optional
        eps of the per-epoch FGSM validation accuracy (``"8/255"`` accepted).
    adversarial : dict, optional
        ``{"eps": e, "alpha": a}`` for FGSM adversarial training (``a``
        default ``1.25 e``).
    log_path, checkpoint_dir : str or Path, optional
        JSON-lines log; folder of ``checkpoint.pt`` (rank 0 writes both).
    resume, progress : bool
        Continue from an existing checkpoint (else start over and overwrite);
        show a tqdm progress bar (rank 0).
    device : torch.device or str, optional
        Default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    extra_metrics : callable, optional
        ``extra_metrics(model, val_data) -> {name: float}`` on every rank after
        each epoch (model in training mode), joins the record. Default
        :func:`pursuit_objective`; None for none.
    on_epoch_end : callable, optional
        ``on_epoch_end(record)`` on every rank after the log and checkpoint.
    metadata : dict, optional
        Stored as is in the checkpoint (plain values: e.g. what rebuilds the model).
    eval_batch_size, num_workers : int
        Batch size of the evaluation; DataLoader worker processes.
    memory_budget : int or str, optional
        The memory one training step (and the FGSM validation) may take, e.g.
        ``"16G"``; default ``DEEPFRAME_MEMORY_BUDGET``, else 2 GiB
        (:mod:`deepframe.memory`). Checked before the first step.

    Returns
    -------
    list of dict
        The per-epoch records of the whole run (including resumed epochs).

    Raises
    ------
    ValueError
        An invalid setting (:func:`deepframe.training.config.training_config`)
        or device, before any work, or a checkpoint that is not deepframe's.
    ResumeMismatchError
        ``resume=True`` and the checkpoint was trained with other settings,
        metadata or model.
    MemoryBudgetError
        Before the first step: a training step of a compiled solver at this
        batch size (the activations autograd keeps of every unrolled
        iteration, the weights, their gradients and the optimizer's state),
        or its FGSM validation at ``eval_batch_size``, would exceed the
        memory budget (:func:`deepframe.memory.check_model_memory`).
    FloatingPointError
        The loss of an epoch is not finite (the run diverged).
    """
    config = training_config(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
        fgsm_eps=fgsm_eps,
        adversarial=adversarial,
    )
    if metadata is not None:
        check_storable(dict(metadata), "metadata")
    with process_group(device) as process:
        check_batch_size(batch_size, process)
        _check_step_memory(
            model, config, process.world_size, val_data, eval_batch_size, memory_budget
        )
        model.to(process.device)
        optim = OPTIMIZERS[optimizer](parameter_groups(model, weight_decay), lr, momentum)
        scheduler = None if schedule is None else SCHEDULES[schedule](optim, epochs)
        checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        log_file = None if log_path is None else Path(log_path)
        start_epoch, history = load_resumed(
            checkpoint_path if resume else None, config, metadata, model, optim, scheduler
        )
        if process.rank == 0 and log_file is not None:
            write_log(log_file, history)
        run = Run(
            model=model,
            train_model=wrap(model, process),
            train_data=train_data,
            val_data=val_data,
            optimizer=optim,
            scheduler=scheduler,
            config=config,
            process=process,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            extra_metrics=extra_metrics,
            progress=progress,
            metadata=metadata,
            log_path=log_file,
            checkpoint_path=checkpoint_path,
            on_epoch_end=on_epoch_end,
        )
        return _run_epochs(run, start_epoch, history)


def _check_step_memory(
    model: nn.Module,
    config: dict,
    world_size: int,
    val_data: Dataset | None,
    eval_batch_size: int,
    memory_budget: int | str | None,
) -> None:
    """Refuse, before the first step, a run whose step would exceed the memory budget.

    A training step at this process's share of the batch (the optimizer's
    state: 2 tensors per weight for Adam, 1 for SGD with momentum), with
    ``adversarial`` the FGSM example of each batch and, with ``fgsm_eps``, the
    FGSM validation at ``eval_batch_size``
    (:func:`deepframe.memory.check_model_memory`; other models pass).
    """
    from .memory import MemoryBudgetError, check_model_memory

    states = 2 if config["optimizer"] == "adam" else int(config["momentum"] > 0)
    batch = config["batch_size"] // world_size
    check_model_memory(
        model, "training", batch, optimizer_states=states, memory_budget=memory_budget
    )
    if config["adversarial"] is not None:  # each batch's FGSM example, crafted in eval mode
        check_model_memory(model, "attack", batch, memory_budget=memory_budget)
    if config["fgsm_eps"] is None or val_data is None:
        return
    samples = len(val_data) if hasattr(val_data, "__len__") else eval_batch_size
    batch = max(1, min(eval_batch_size, -(-samples // world_size)))
    try:
        check_model_memory(model, "attack", batch, memory_budget=memory_budget)
    except MemoryBudgetError as exc:
        raise MemoryBudgetError(
            f"the FGSM validation after each epoch (fgsm_eps, eval_batch_size={eval_batch_size}): "
            f"{exc}"
        ) from None


def _run_epochs(run: Run, start_epoch: int, history: list[dict]) -> list[dict]:
    """Epochs ``start_epoch`` to the last, each followed by rank 0's log line and checkpoint.

    The caller's global RNG state is saved and restored around them (each
    epoch reseeds it, :func:`deepframe.training.epoch.run_epoch`).
    """
    device = run.process.device
    with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
        for epoch in range(start_epoch, run.config["epochs"]):
            history.append(run_epoch(epoch, run))
            if run.process.rank == 0:
                save_epoch(history, run)
            if run.on_epoch_end is not None:
                run.on_epoch_end(history[-1])
    return history
