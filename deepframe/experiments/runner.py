"""Train and attack one model of a reproduction; resumable at every stage.

Layout of a run folder::

    models/<name>/train/checkpoint.pt   training state (resumable; not exported)
    models/<name>/log.jsonl             per-epoch log (Fig. 7)
    models/<name>/model.pt              weights-only checkpoint, df.load_model reads it
    models/<name>/result.json           accuracies (clean, FGSM, PGD) and the training curve
    models/<name>/measure.json          pursuit trace (Fig. 8) and geometry (Figs. 9, 10)
    selection/<arch>.json               minimum deep frame potential (model selection)

A stage whose output records the same configuration is never recomputed:
``result.json`` is keyed by a hash of everything that decides the training
and the attacks; ``measure.json`` and ``selection/`` belong to
:mod:`.measure`, which keys them by what decides them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from .._io import json_hash, read_json, write_json
from ..attacks import parse_eps
from .datasets import load_data
from .profiles import ModelSpec, Profile, build_graph

__all__ = ["config_hash", "run_model"]


# --------------------------------------------------------------------------- settings


def _train_settings(profile: Profile, spec: ModelSpec) -> dict:
    eps = parse_eps(profile.eps)
    return {
        "epochs": profile.epochs,
        "batch_size": profile.batch_size,
        "optimizer": profile.optimizer,
        "lr": profile.lr,
        "momentum": profile.momentum,
        "weight_decay": profile.weight_decay,
        "schedule": profile.schedule,
        "seed": spec.seed,
        "fgsm_eps": eps,
        "adversarial": {"eps": eps, "alpha": 1.25 * eps} if spec.adversarial else None,
    }


def _config(spec: ModelSpec, profile: Profile) -> dict:
    """What determines a model's training and attacks; a change retrains it."""
    return {
        "model": dataclasses.asdict(spec),
        "dataset": profile.dataset,
        "train_images": profile.train_images,
        "eval_images": profile.eval_images,
        "val_images": profile.val_images,
        "widths": list(profile.widths),
        "batchnorm": profile.batchnorm,
        "augment": profile.augment,
        "pgd_steps": profile.pgd_steps,
        "curve_pgd_images": profile.curve_pgd_images if spec.curve else 0,
        **_train_settings(profile, spec),
    }


def config_hash(spec: ModelSpec, profile: Profile) -> str:
    """The key of a model's ``result.json``: the hash of everything that decides its
    training and attacks. A result recorded under another hash is not this model's."""
    return json_hash(_config(spec, profile))


def _pgd_settings(profile: Profile) -> dict:
    eps = parse_eps(profile.eps)
    steps = profile.pgd_steps
    return {"steps": steps, "step_size": 2.5 * eps / steps, "random_start": True}


def _extra_metrics(spec: ModelSpec, profile: Profile, val_set):
    """The per-epoch extras: the pursuit objective, and PGD accuracy for Fig. 7 models."""
    from ..attacks import robust_accuracy
    from ..train import pursuit_objective

    if not spec.curve or profile.curve_pgd_images <= 0:
        return pursuit_objective
    eps = parse_eps(profile.eps)
    subset = torch.utils.data.Subset(val_set, range(min(profile.curve_pgd_images, len(val_set))))

    def metrics(model, val_data):
        out = dict(pursuit_objective(model, val_data))
        acc = robust_accuracy(model, subset, [eps], "pgd", seed=spec.seed, **_pgd_settings(profile))
        out["val_pgd_acc"] = acc[eps]
        return out

    return metrics


def _weights_only(path: Path, model, history: list[dict], metadata: dict, config: dict) -> None:
    """A checkpoint without optimizer state that :func:`deepframe.load_model` reads."""
    from ..checkpoints import save_checkpoint

    save_checkpoint(
        path,
        {
            "epoch": int(history[-1]["epoch"]),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": None,
            "scheduler": None,
            "config": config,
            "history": history,
            "metadata": metadata,
        },
    )


# --------------------------------------------------------------------------- one model


def _train_model(
    spec, profile, train_set, val_set, info, folder: Path, *, resume, progress, num_workers=0
):
    """Compile the spec's solver and train it (resuming a checkpoint when ``resume``).

    Returns ``(model, metadata, history)``.
    """
    from ..checkpoints import model_metadata
    from ..pursuit import compile
    from ..train import train

    graph = build_graph(spec, profile, info.input_shape)
    options = {
        "method": spec.method,
        "iterations": spec.iterations,
        **info.compile_options(),
        "seed": spec.seed,
    }
    model = compile(graph, **options)
    metadata = model_metadata(graph, dataset=profile.dataset, **options)
    history = train(
        model,
        train_set,
        val_set,
        **_train_settings(profile, spec),
        log_path=folder / "log.jsonl",
        checkpoint_dir=folder / "train",
        resume=resume,
        progress=progress,
        metadata=metadata,
        extra_metrics=_extra_metrics(spec, profile, val_set),
        num_workers=num_workers,
    )
    return model.eval(), metadata, history


def _attack(model, eval_set, spec: ModelSpec, profile: Profile) -> dict:
    """Clean, FGSM (Eq. 19) and PGD accuracy at ``profile.eps`` on the evaluation subset."""
    from ..attacks import evaluate

    eps = parse_eps(profile.eps)
    clean_and_fgsm = evaluate(model, eval_set, [eps], "fgsm")
    pgd = evaluate(model, eval_set, [eps], "pgd", seed=spec.seed, **_pgd_settings(profile))
    return {
        "clean_acc": clean_and_fgsm.accuracy,
        "fgsm_acc": clean_and_fgsm.robust_accuracy[eps],
        "pgd_acc": pgd.robust_accuracy[eps],
    }


def run_model(
    spec: ModelSpec,
    profile: Profile,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    progress: bool = False,
    num_workers: int = 0,
) -> tuple[dict, bool]:
    """Train (or resume) one model and attack it; ``(result, trained_now)``.

    The final accuracies are measured on the profile's evaluation subset:
    clean, FGSM (Eq. 19) and PGD (L-inf, random start, ``profile.pgd_steps``
    steps of ``2.5 eps / steps``), all at ``profile.eps``, white-box through
    every pursuit iteration. ``num_workers`` data-loader processes prepare the
    training batches (:func:`deepframe.train.train`); the augmentation draws
    depend on the image, epoch and seed alone, so the result does not depend
    on it (it is not part of the configuration).
    """
    folder = Path(out_dir) / "models" / spec.name
    config = _config(spec, profile)
    key = config_hash(spec, profile)
    old = read_json(folder / "result.json")
    if isinstance(old, dict) and old.get("config_hash") == key and (folder / "model.pt").is_file():
        return old, False

    started = time.perf_counter()
    train_set, eval_set, info = load_data(profile, data_dir, spec.seed)
    val_set = torch.utils.data.Subset(eval_set, range(min(profile.val_images, len(eval_set))))
    model, metadata, history = _train_model(
        spec,
        profile,
        train_set,
        val_set,
        info,
        folder,
        resume=not isinstance(old, dict),  # a result of another configuration: start over
        progress=progress,
        num_workers=num_workers,
    )
    attack_started = time.perf_counter()
    accuracies = _attack(model, eval_set, spec, profile)
    attack_seconds = time.perf_counter() - attack_started
    _weights_only(folder / "model.pt", model, history, metadata, config)
    curve_keys = ("epoch", "train_loss", "train_acc", "val_acc", "val_fgsm_acc", "val_pgd_acc")
    result = {
        "name": spec.name,
        "config_hash": key,
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_acc": history[-1]["train_acc"],
        **accuracies,
        "pgd": _pgd_settings(profile),
        "train_images": len(train_set),
        "eval_images": len(eval_set),
        "val_images": len(val_set),
        "curve": [{k: r.get(k) for k in curve_keys if k in r} for r in history],
        "train_seconds": math.fsum(r.get("time", 0.0) for r in history),
        "attack_seconds": attack_seconds,
        "wall_seconds_this_call": time.perf_counter() - started,
    }
    write_json(folder / "result.json", result)
    return result, True
