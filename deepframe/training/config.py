"""The settings of :func:`deepframe.train.train`, checked before any work.

:func:`training_config` turns the keyword arguments that change the
trajectory into the ``config`` dict a checkpoint stores (and a resumed run is
compared against); :data:`OPTIMIZERS` and :data:`SCHEDULES` are the
string-keyed tables of the optimizer and schedule names it accepts. The
defaults are not here: :func:`deepframe.train.train`'s signature holds them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..attacks import parse_eps

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "adversarial_config",
    "check_name",
    "parameter_groups",
    "training_config",
]


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


#: The optimizers of :func:`deepframe.train.train`: name ->
#: ``build(parameter_groups, lr, momentum)``. SGD with momentum (no Nesterov);
#: Adam with torch's default betas (no momentum).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam}
#: The learning-rate schedules of :func:`deepframe.train.train`, stepped once per
#: epoch: name -> ``build(optimizer, epochs)``. ``"cosine"``: ``CosineAnnealingLR`` with
#: ``T_max = epochs``; ``"step"``: x0.1 after 1/2 and 3/4 of the epochs. ``None``
#: (not a key) keeps the rate constant.
SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler]] = {
    "cosine": _cosine,
    "step": _step,
}


def check_name(what: str, name: Any, table: Mapping[str, Any], *, none_ok: bool) -> None:
    """The one check of an optimizer or schedule name against its table.

    Raises
    ------
    ValueError
        ``name`` is not a key of ``table`` (nor None where ``none_ok``).
    """
    if (name is None and none_ok) or (isinstance(name, str) and name in table):
        return
    names = [repr(k) for k in table] + (["None"] if none_ok else [])
    raise ValueError(f"unknown {what} {name!r}; choose {', '.join(names[:-1])} or {names[-1]}")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight matrices and kernels (>= 2 dimensions) decayed; everything else not.

    Raises
    ------
    ValueError
        The model has no trainable parameters.
    """
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


def training_config(
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
    """The settings of :func:`deepframe.train.train`, checked, as the checkpoint stores them.

    ``epochs`` and ``batch_size`` integers >= 1, ``seed`` an integer >= 0,
    ``lr`` finite and > 0, ``momentum`` and ``weight_decay`` finite and >= 0,
    a known optimizer and schedule, eps values that parse. No defaults here:
    :func:`deepframe.train.train`'s signature holds them.

    Raises
    ------
    ValueError
        A setting is invalid (the message names it and its value).
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
        "adversarial": adversarial_config(adversarial),
        "fgsm_eps": None if fgsm_eps is None else parse_eps(fgsm_eps),
    }
    check_name("optimizer", optimizer, OPTIMIZERS, none_ok=False)
    check_name("schedule", schedule, SCHEDULES, none_ok=True)
    return config


def adversarial_config(adversarial: Mapping | None) -> dict | None:
    """``{"eps", "alpha"}`` of FGSM adversarial training (alpha default 1.25 eps), or None.

    Raises
    ------
    ValueError
        ``adversarial`` lacks ``"eps"``, has other keys, or an eps does not parse.
    """
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
