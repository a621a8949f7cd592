"""Training loop: SGD/Adam, schedules, FGSM monitoring, resume, distributed.

One function, :func:`train`, runs on one process or under ``torchrun`` with
:class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, nccl on
CUDA). It writes a JSON-lines log (one record per epoch, the data of the seed
paper's Fig. 7) and an atomically replaced checkpoint from which a run
resumes to exactly the weights an uninterrupted run reaches (on CPU). The
checkpoint format, its safe loading and :func:`load_model` live in
:mod:`deepframe.checkpoints`; their names are re-exported here.

Reproducibility without stored RNG state: every random stream of epoch ``e``
(the shuffling, the CIFAR-10 augmentation, the random starts of adversarial
training, the global torch RNG a model may use for dropout) is seeded from
``(seed, e)`` (and the rank) at the start of the epoch. Resuming after epoch
``e`` therefore needs only the weights, the optimizer and the scheduler. The
caller's global RNG state is saved and restored around the whole run.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from ._device import check_device
from ._io import atomic_write
from .attacks import eval_mode, evaluate, model_device, parse_eps, pgd
from .checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    architecture_differences,
    check_storable,
    load_checkpoint,
    load_model,
    model_metadata,
    save_checkpoint,
    state_dict_mismatch,
)
from .data import derive_seed, make_loader

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

_RECORD_KEYS = (
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
# settings that change the trajectory: a resumed run must use the same ones
_RESUME_KEYS = (
    "seed",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "adversarial",
)


# --------------------------------------------------------------------------- optimizers, schedules


def _sgd(groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def _adam(groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr)  # Adam has no momentum setting


def _cosine(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)


def _step(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    milestones = sorted({m for m in (epochs // 2, (3 * epochs) // 4) if m > 0})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


#: The optimizers of :func:`train`: name -> ``build(parameter_groups, lr, momentum)``.
#: SGD with momentum (no Nesterov); Adam with torch's default betas (no momentum).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam}
#: The learning-rate schedules of :func:`train`, stepped once per epoch: name ->
#: ``build(optimizer, epochs)``. ``"cosine"``: ``CosineAnnealingLR`` with
#: ``T_max = epochs``; ``"step"``: x0.1 after 1/2 and 3/4 of the epochs. ``None``
#: (not a key) keeps the rate constant.
SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": _cosine,
    "step": _step,
}


def _check_name(what: str, name: Any, table: Mapping[str, Any], *, none_ok: bool) -> None:
    """The one check of an optimizer or schedule name against its table."""
    if (name is None and none_ok) or (isinstance(name, str) and name in table):
        return
    names = [repr(k) for k in table] + (["None"] if none_ok else [])
    raise ValueError(f"unknown {what} {name!r}; choose {', '.join(names[:-1])} or {names[-1]}")


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight matrices and kernels (>= 2 dimensions) decayed; everything else not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}] if decay else []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# --------------------------------------------------------------------------- settings


def _training_config(
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    schedule: str | None,
    seed: int,
    fgsm_eps: float | str | None,
    adversarial: Mapping[str, float | str] | None,
) -> dict:
    """The settings of :func:`train`, checked up front, as stored in the checkpoint.

    No defaults here: :func:`train`'s signature holds them (:func:`_with_defaults`).
    """

    def integer(name, value, minimum):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    def real(name, value, *, positive):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            relation = ">" if positive else ">="
            raise ValueError(f"{name} must be a finite number {relation} 0, got {value!r}")
        return float(value)

    config = {
        "seed": integer("seed", seed, 0),
        "epochs": integer("epochs", epochs, 1),
        "batch_size": integer("batch_size", batch_size, 1),
        "optimizer": optimizer,
        "lr": real("lr", lr, positive=True),
        "momentum": real("momentum", momentum, positive=False),
        "weight_decay": real("weight_decay", weight_decay, positive=False),
        "schedule": schedule,
        "adversarial": _adversarial_config(adversarial),
        "fgsm_eps": None if fgsm_eps is None else parse_eps(fgsm_eps),
    }
    _check_name("optimizer", optimizer, OPTIMIZERS, none_ok=False)
    _check_name("schedule", schedule, SCHEDULES, none_ok=True)
    return config


def _with_defaults(settings: Mapping[str, Any]) -> dict:
    """``settings`` completed with :func:`train`'s defaults for the others."""
    names = inspect.signature(_training_config).parameters
    defaults = {
        name: p.default
        for name, p in inspect.signature(train).parameters.items()
        if name in names and p.default is not inspect.Parameter.empty
    }
    return {**defaults, **settings}


def _adversarial_config(adversarial: Mapping | None) -> dict | None:
    """``{"eps", "alpha"}`` of FGSM adversarial training (alpha default 1.25 eps), or None."""
    if adversarial is None:
        return None
    unknown = set(adversarial) - {"eps", "alpha"}
    if unknown or "eps" not in adversarial:
        raise ValueError(
            f"adversarial must be a dict with 'eps' and optional 'alpha', got {dict(adversarial)}"
        )
    eps = parse_eps(adversarial["eps"])
    alpha = parse_eps(adversarial.get("alpha", 1.25 * eps))
    return {"eps": eps, "alpha": alpha}


# --------------------------------------------------------------------------- resume


class ResumeMismatchError(ValueError):
    """An existing checkpoint was trained with other settings than a resumed run asks for.

    Attributes
    ----------
    path : Path
        The checkpoint.
    differences : list of str
        One ``"name: stored -> requested"`` entry per setting that differs.
    """

    def __init__(self, path: Path, differences: list[str]):
        self.path = Path(path)
        self.differences = list(differences)
        shown = "; ".join(self.differences[:6])
        if len(self.differences) > 6:
            shown += f"; and {len(self.differences) - 6} more"
        super().__init__(
            f"cannot resume from {path}: it was trained with other settings ({shown}); use "
            "the same settings, another checkpoint_dir, or resume=False to start over"
        )


def resume_differences(state: Mapping, config: Mapping, metadata: Mapping | None) -> list[str]:
    """What a run with ``config`` and ``metadata`` changes against a checkpoint's ``state``.

    Compared: the settings that change the trajectory (seed, epochs, batch
    size, optimizer, lr, momentum, weight decay, schedule, adversarial
    training) and, when both the checkpoint and the run carry metadata, every
    metadata entry: the architecture (node-link text, compared node by node),
    the options of :func:`deepframe.compile` (method, iterations, ...) and
    anything else (e.g. the dataset).

    Returns
    -------
    list of str
        ``"name: stored -> requested"`` per difference; empty when resuming is safe.
    """
    stored = state.get("config") or {}
    out = [
        f"{k}: {stored.get(k)!r} -> {config[k]!r}"
        for k in _RESUME_KEYS
        if stored.get(k) != config[k]
    ]
    old = state.get("metadata")
    if not isinstance(old, Mapping) or metadata is None:
        return out
    for key in sorted(set(old) | set(metadata), key=str):
        a, b = old.get(key), metadata.get(key)
        if a == b:
            continue
        if key == "graph" and isinstance(a, str) and isinstance(b, str):
            out.extend(architecture_differences(a, b))
        elif key == "compile" and isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(
                f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b), key=str)
                if a.get(k) != b.get(k)
            )
        else:
            out.append(f"{key}: {a!r:.60} -> {b!r:.60}")
    return out


def resume_state(
    checkpoint_dir: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    **settings: Any,
) -> dict | None:
    """The checkpoint a :func:`train` call would resume from, checked, before any work.

    ``settings`` are :func:`train`'s keyword arguments that matter here
    (``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``momentum``,
    ``weight_decay``, ``schedule``, ``seed``, ``fgsm_eps``, ``adversarial``).
    Compare ``state["epoch"]`` with ``epochs`` to see whether the run is
    already complete.

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
    config = _training_config(**_with_defaults(settings))
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = load_checkpoint(path)
    differences = resume_differences(state, config, metadata)
    if differences:
        raise ResumeMismatchError(path, differences)
    return state


def _resume(
    path: Path,
    config: dict,
    metadata: Mapping | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> tuple[int, list[dict]]:
    """Load a checkpoint into model, optimizer and scheduler; return (epoch, history)."""
    state = load_checkpoint(path)
    differences = resume_differences(state, config, metadata)
    problem = state_dict_mismatch(model, state["model"])
    if problem:
        differences.append(f"model: the stored weights do not fit this model ({problem})")
    if differences:
        raise ResumeMismatchError(path, differences)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), [dict(record) for record in state["history"]]


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class _Process:
    """This process of a (possibly distributed) run: its rank, the world size, its device."""

    rank: int
    world_size: int
    device: torch.device


def _distributed_setup(device: torch.device | str | None) -> tuple[_Process, bool]:
    """This process, and whether the process group was created here (to destroy it)."""
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if env_world > 1 else torch.cuda.current_device())
    created = False
    if dist.is_available() and not dist.is_initialized() and env_world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return _Process(dist.get_rank(), dist.get_world_size(), device), created
    return _Process(0, 1, device), created


def _all_reduce(values: list[float], process: _Process) -> list[float]:
    """``values`` summed over the processes (returned as they are on a single process)."""
    if process.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=process.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _shard(dataset: Dataset, process: _Process) -> Dataset:
    """Every ``world_size``-th sample from ``rank``: disjoint shards, no padding."""
    if process.world_size == 1:
        return dataset
    return Subset(dataset, range(process.rank, len(dataset), process.world_size))


def _seed_global_rng(seed: int, device: torch.device) -> None:
    """Seed torch's global CPU generator (and that of ``device`` if CUDA), nothing else."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index].manual_seed(seed)


# --------------------------------------------------------------------------- one epoch


def _train_epoch(
    train_model: nn.Module,
    model: nn.Module,
    batches,
    optimizer: torch.optim.Optimizer,
    adversarial: dict | None,
    attack_generator: torch.Generator,
    process: _Process,
) -> dict:
    """One pass over this rank's batches; loss and accuracy summed over all ranks.

    ``train_model`` is what the optimizer steps through (the DDP wrapper when
    distributed), ``model`` the plain module (hooks, attacks: rank-local work
    that must not trigger DDP's gradient synchronisation).
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
    total_loss, total_correct, total = _all_reduce(
        [float(loss_sum), float(correct), float(count)], process
    )
    if not math.isfinite(total_loss):
        raise FloatingPointError(f"training diverged: the epoch's loss is {total_loss}")
    return {"train_loss": total_loss / total, "train_acc": total_correct / total, "lr": lr}


def _validation_metrics(
    model: nn.Module,
    val_data: Dataset | None,
    batch_size: int,
    fgsm_eps: float | None,
    process: _Process,
) -> dict:
    """Validation loss, accuracy and FGSM accuracy, each rank on its shard, summed.

    One pass of :func:`deepframe.attacks.evaluate` (FGSM, Eq. 19, at
    ``fgsm_eps``) per rank; the sums are added over the ranks.
    """
    record = {"val_loss": None, "val_acc": None, "fgsm_eps": fgsm_eps, "val_fgsm_acc": None}
    if val_data is None:
        return record
    result = evaluate(
        model,
        _shard(val_data, process),
        [] if fgsm_eps is None else [fgsm_eps],
        "fgsm",
        loss=True,
        batch_size=batch_size,
        device=process.device,
    )
    robust = sum(result.robust_correct.values())
    loss, correct, robust, count = _all_reduce(
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

    The default ``extra_metrics`` of :func:`train`. For a model with
    ``encode(x, trace=True) -> (codes, trace)`` (the solvers of
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


def _extra_record(
    extra_metrics: Callable[[nn.Module, Dataset | None], Mapping[str, float]] | None,
    model: nn.Module,
    val_data: Dataset | None,
) -> dict:
    """What ``extra_metrics`` adds to the epoch's record (floats or None, no key of its own)."""
    if extra_metrics is None:
        return {}
    record = {}
    for key, value in dict(extra_metrics(model, val_data)).items():
        if key in _RECORD_KEYS:
            raise ValueError(f"extra_metrics may not override {key!r}")
        record[key] = value if value is None else float(value)
    return record


def _refresh(model: nn.Module) -> None:
    """``model.refresh_lipschitz()`` when the model has it (the pursuit solvers)."""
    refresh = getattr(model, "refresh_lipschitz", None)
    if callable(refresh):
        refresh()


def _run_epoch(
    epoch: int,
    *,
    model: nn.Module,
    train_model: nn.Module,
    train_data: Dataset,
    val_data: Dataset | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: dict,
    process: _Process,
    eval_batch_size: int,
    num_workers: int,
    extra_metrics: Callable[[nn.Module, Dataset | None], Mapping[str, float]] | None,
    progress: bool,
) -> dict:
    """Epoch ``epoch`` (0-based): seed its streams, train, step the schedule, validate.

    Returns the epoch's record (the keys are listed in :func:`train`).
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    seed, rank, device = config["seed"], process.rank, process.device
    _seed_global_rng(derive_seed(seed, epoch, rank, 0), device)
    if callable(getattr(train_data, "set_epoch", None)):
        train_data.set_epoch(epoch)
    loader = make_loader(
        train_data,
        config["batch_size"] // process.world_size,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=process.world_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{config['epochs']}",
        disable=not progress or rank != 0,
        leave=False,
    )
    attack_generator = torch.Generator(device=device).manual_seed(derive_seed(seed, epoch, rank, 1))
    record = {"epoch": epoch + 1}
    record.update(
        _train_epoch(
            train_model, model, bar, optimizer, config["adversarial"], attack_generator, process
        )
    )
    if scheduler is not None:
        scheduler.step()
    _refresh(model)
    record.update(
        _validation_metrics(model, val_data, eval_batch_size, config["fgsm_eps"], process)
    )
    record.update(_extra_record(extra_metrics, model, val_data))
    record["time"] = time.perf_counter() - started
    return record


# --------------------------------------------------------------------------- log, checkpoint


def _write_log(path: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _save_epoch(
    history: list[dict],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    config: dict,
    metadata: Mapping[str, Any] | None,
    log_path: Path | None,
    checkpoint_path: Path | None,
    progress: bool,
) -> None:
    """Rank 0's end of an epoch: append the log line, replace the checkpoint, print a line."""
    record = history[-1]
    if log_path is not None:
        _append_log(log_path, record)
    if checkpoint_path is not None:
        save_checkpoint(
            checkpoint_path,
            {
                "epoch": record["epoch"],
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "config": config,
                "history": history,
                "metadata": None if metadata is None else dict(metadata),
            },
        )
    if progress:
        from tqdm.auto import tqdm

        summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
        tqdm.write(f"epoch {record['epoch']}/{config['epochs']}: {summary}")


# --------------------------------------------------------------------------- train


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
) -> list[dict]:
    r"""Train a classifier of [0, 1] images with cross-entropy (docs/training.md).

    Each step minimises the mean cross-entropy of a batch,
    ``J = -1/B sum_i log softmax(model(x_i))_{y_i}``, with SGD (momentum, no
    Nesterov) or Adam. Weight decay (an L2 penalty) applies to weight
    matrices and kernels (parameters with >= 2 dimensions) only: biases,
    thresholds ``lambda``, step sizes ``beta`` and normalisation parameters
    are not decayed. The learning rate follows a per-epoch schedule:
    ``"cosine"`` (``CosineAnnealingLR`` with ``T_max = epochs``) or
    ``"step"`` (x0.1 after 1/2 and 3/4 of the epochs).

    If the model has a method ``refresh_lipschitz()`` (the pursuit solvers of
    :func:`deepframe.compile`), it is called before every training step and
    once before each evaluation, so step sizes ``1/L_j`` follow the weights.

    Adversarial training (``adversarial={"eps": e, "alpha": a}``) is FGSM
    with a random start (Wong, Rice & Kolter 2020): each batch is replaced by
    ``clip_[0,1](Pi_eps(x + u + a sign(grad_x J(x + u, y))))`` with
    ``u ~ U[-e, e]``, i.e. :func:`deepframe.attacks.pgd` with one step of
    size ``a`` (default ``1.25 e``), crafted in eval mode.

    After every epoch the validation accuracy, and with ``fgsm_eps`` the
    accuracy under FGSM (Eq. 19) at that eps, are measured. One JSON record
    per epoch is appended to ``log_path`` (JSON lines) with the keys
    ``epoch`` (1-based), ``train_loss``, ``train_acc`` (on the batches the
    optimizer saw, adversarial ones in adversarial training, averaged over
    the epoch), ``val_loss``, ``val_acc``, ``fgsm_eps``, ``val_fgsm_acc``
    (None when not measured), ``lr`` (used during the epoch), ``time``
    (seconds) and whatever ``extra_metrics`` returns (e.g. the pursuit
    ``objective``).

    Checkpoints. With ``checkpoint_dir``, ``checkpoint_dir/checkpoint.pt`` is
    replaced atomically after every epoch (see
    :func:`deepframe.checkpoints.save_checkpoint`). With
    ``resume=True`` an existing checkpoint is loaded and training continues
    after its epoch; the result equals an uninterrupted run bit for bit on
    CPU, because every random stream of an epoch is seeded from
    ``(seed, epoch)``. Resuming with settings that change the trajectory
    (seed, epochs, batch size, optimizer, lr, momentum, weight decay,
    schedule, adversarial training), with other ``metadata`` (architecture,
    compile options, dataset) or with weights that do not fit ``model`` is
    refused with :class:`ResumeMismatchError`, which lists every difference
    (see :func:`resume_differences`; :func:`resume_state` runs the same
    checks without training).

    Every setting is checked before any work: ``epochs`` and ``batch_size``
    integers >= 1, ``seed`` an integer >= 0, ``lr`` finite and > 0,
    ``momentum`` and ``weight_decay`` finite and >= 0, a known optimizer and
    schedule, eps values that parse, and a ``device`` that exists here.

    Distributed. Under ``torchrun`` (environment variable ``WORLD_SIZE > 1``)
    the process group is initialised here (nccl for CUDA devices, gloo
    otherwise) unless it already is, the model is wrapped in
    DistributedDataParallel and each rank reads its shard of every global
    batch: ``batch_size`` is the *global* batch size and must be divisible
    by the number of processes. Metrics are summed over ranks; only rank 0
    writes the log and the checkpoint.

    Parameters
    ----------
    model : nn.Module
        Classifier of images in [0, 1] (normalisation inside), trained in
        place and moved to ``device``.
    train_data, val_data : Dataset
        ``(x, y)`` datasets; ``val_data`` may be None. A dataset with a
        ``set_epoch(epoch)`` method (augmentation) is told the epoch.
    epochs : int
        Total number of epochs (a resumed run counts the finished ones).
    batch_size : int
        Global batch size.
    optimizer : {"sgd", "adam"}
        Optimizer.
    lr, momentum, weight_decay : float
        Learning rate, SGD momentum (ignored by Adam), L2 weight decay.
    schedule : {"cosine", "step", None}
        Learning-rate schedule.
    seed : int
        Seed of every random stream.
    fgsm_eps : float or str, optional
        eps of the per-epoch FGSM validation accuracy (``"8/255"`` accepted).
    adversarial : dict, optional
        ``{"eps": ..., "alpha": ...}`` for FGSM adversarial training.
    log_path : str or Path, optional
        JSON-lines log (rank 0 writes it).
    checkpoint_dir : str or Path, optional
        Folder of ``checkpoint.pt`` (rank 0 writes it).
    resume : bool
        Continue from an existing checkpoint (else start over and overwrite).
    progress : bool
        Show a tqdm progress bar (rank 0).
    device : torch.device or str, optional
        Default ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    extra_metrics : callable, optional
        ``extra_metrics(model, val_data) -> {name: float}``, called on every
        rank after each epoch (model in training mode; put it in eval mode
        yourself if needed); its items join the record. Default
        :func:`pursuit_objective` (the key ``objective`` for pursuit solvers,
        nothing for other models); None for no extra metrics.
    on_epoch_end : callable, optional
        ``on_epoch_end(record)``, called on every rank after the log and the
        checkpoint are written.
    metadata : dict, optional
        Stored as is in the checkpoint (e.g. the architecture and the pursuit
        method, for rebuilding the model); plain values only.
    eval_batch_size : int
        Batch size of the evaluation.
    num_workers : int
        DataLoader worker processes.

    Returns
    -------
    list of dict
        The per-epoch records of the whole run (including resumed epochs).

    Raises
    ------
    ValueError
        An invalid setting or device (before any work), or an existing
        checkpoint that is not a deepframe checkpoint.
    ResumeMismatchError
        ``resume=True`` and the checkpoint was trained with other settings,
        metadata or model.
    FloatingPointError
        The loss of an epoch is not finite (the run diverged).
    """
    config = _training_config(
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

    process, created_group = _distributed_setup(device)
    device = process.device
    try:
        if batch_size < process.world_size or batch_size % process.world_size:
            raise ValueError(
                f"batch_size={batch_size} (global) must be a multiple of the "
                f"{process.world_size} processes"
            )
        model.to(device)
        optim = OPTIMIZERS[optimizer](_parameter_groups(model, weight_decay), lr, momentum)
        scheduler = None if schedule is None else SCHEDULES[schedule](optim, epochs)
        checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        log_file = None if log_path is None else Path(log_path)
        start_epoch, history = 0, []
        if checkpoint_path is not None and resume and checkpoint_path.exists():
            start_epoch, history = _resume(
                checkpoint_path, config, metadata, model, optim, scheduler
            )
        if process.rank == 0 and log_file is not None:
            _write_log(log_file, history)

        train_model: nn.Module = model
        if process.world_size > 1:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            for epoch in range(start_epoch, epochs):
                record = _run_epoch(
                    epoch,
                    model=model,
                    train_model=train_model,
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
                )
                history.append(record)
                if process.rank == 0:
                    _save_epoch(
                        history,
                        model=model,
                        optimizer=optim,
                        scheduler=scheduler,
                        config=config,
                        metadata=metadata,
                        log_path=log_file,
                        checkpoint_path=checkpoint_path,
                        progress=progress,
                    )
                if on_epoch_end is not None:
                    on_epoch_end(record)
        return history
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()
