"""Train, attack and measure one model of a reproduction; resumable at every stage.

Layout of a run folder::

    models/<name>/train/checkpoint.pt   training state (resumable; not exported)
    models/<name>/log.jsonl             per-epoch log (Fig. 7)
    models/<name>/model.pt              weights-only checkpoint, df.load_model reads it
    models/<name>/result.json           accuracies (clean, FGSM, PGD) and the training curve
    models/<name>/measure.json          pursuit trace (Fig. 8) and geometry (Figs. 9, 10)
    selection/<arch>.json               minimum deep frame potential (model selection)

A stage whose output records the same configuration is never recomputed:
``result.json`` is keyed by a hash of everything that decides the training
and the attacks, ``measure.json`` by the hash of ``model.pt`` and
:data:`MEASURE_VERSION`, so a change in the measuring code re-measures the
trained models without training them again.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write
from ..attacks import parse_eps
from .profiles import ModelSpec, Profile

__all__ = [
    "MEASURE_VERSION",
    "load_data",
    "build_graph",
    "run_model",
    "measure_model",
    "select_architecture",
    "write_json",
    "read_json",
]

#: Bump when the trace or geometry code changes what :func:`measure_model` returns
#: (2: the geometry of the batch-norm-folded dictionary the solver solves).
MEASURE_VERSION = 2

# --------------------------------------------------------------------------- files


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=1) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- data


class _Subset(torch.utils.data.Subset):
    """A Subset that passes ``set_epoch`` on to its dataset (augmentation draws)."""

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)


def _labels(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    return np.asarray(dataset.tensors[1])


def stratified_indices(labels: np.ndarray, count: int | None, seed: int) -> list[int]:
    """``count`` indices with the classes as balanced as the data allow, interleaved.

    Each class is permuted with ``default_rng(seed)``; the result takes the
    classes in turn (first image of every class, then the second, ...), so
    every prefix of it is itself (nearly) stratified.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = [
        int(idx[rank]) for rank in range(max(map(len, per_class))) for idx in per_class
        if rank < len(idx)
    ]
    return order if count is None else order[: min(count, len(order))]


_DATA_CACHE: dict = {}


def load_data(profile: Profile, data_dir: str | Path | None, seed: int):
    """``(train, eval, info)`` of a profile; ``seed`` seeds the training augmentation.

    The training subset and the evaluation subset are fixed by the profile
    (class-stratified, seeds 0 and 1), the same for every model and seed.
    """
    from ..data import DATASETS, cifar10, load_dataset

    key = (profile.dataset, str(data_dir))
    if key not in _DATA_CACHE:
        if profile.dataset == "cifar10":
            if data_dir is None:
                raise ValueError(
                    f"profile {profile.name!r} needs CIFAR-10: pass data_dir (a "
                    "cifar-10-batches-py folder; shared/tools/cifar10_batches.py writes one)"
                )
            train = cifar10(data_dir, train=True, augment=profile.augment)
            held = cifar10(data_dir, train=False)
        else:
            train, held = load_dataset(profile.dataset, seed=0)
        _DATA_CACHE[key] = (train, held)
    train, held = _DATA_CACHE[key]
    if hasattr(train, "seed"):
        train = copy.copy(train)
        train.seed = int(seed)
    train_idx = stratified_indices(_labels(train), profile.train_images, seed=0)
    eval_idx = stratified_indices(_labels(held), profile.eval_images, seed=1)
    return _Subset(train, train_idx), _Subset(held, eval_idx), DATASETS[profile.dataset]


# --------------------------------------------------------------------------- models


def build_graph(spec: ModelSpec, profile: Profile, input_shape):
    """The architecture of a model spec."""
    from ..graph import densenet, resnet

    shape = tuple(input_shape)
    if spec.arch == "densenet":
        return densenet(
            shape, spec.depth, widths=profile.widths, batchnorm=profile.batchnorm
        )
    return resnet(
        shape,
        spec.depth,
        widths=profile.widths,
        skips=spec.skips,
        batchnorm=profile.batchnorm,
    )


def _compile_options(spec: ModelSpec, info) -> dict:
    return {
        "method": spec.method,
        "iterations": spec.iterations,
        "num_classes": info.num_classes,
        "mean": [float(v) for v in info.mean],
        "std": [float(v) for v in info.std],
        "seed": spec.seed,
    }


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
        acc = robust_accuracy(
            model, subset, [eps], "pgd", seed=spec.seed, **_pgd_settings(profile)
        )
        out["val_pgd_acc"] = acc[eps]
        return out

    return metrics


def _weights_only(path: Path, model, history: list[dict], metadata: dict, config: dict) -> None:
    """A checkpoint without optimizer state that :func:`deepframe.load_model` reads."""
    from ..train import save_checkpoint

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


def run_model(
    spec: ModelSpec,
    profile: Profile,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    progress: bool = False,
) -> tuple[dict, bool]:
    """Train (or resume) one model and attack it; ``(result, trained_now)``.

    The final accuracies are measured on the profile's evaluation subset:
    clean, FGSM (Eq. 19) and PGD (L-inf, random start, ``profile.pgd_steps``
    steps of ``2.5 eps / steps``), all at ``profile.eps``, white-box through
    every pursuit iteration.
    """
    from ..attacks import accuracy, robust_accuracy
    from ..pursuit import compile
    from ..train import model_metadata, train

    folder = Path(out_dir) / "models" / spec.name
    config = _config(spec, profile)
    key = _hash(config)
    old = read_json(folder / "result.json")
    if isinstance(old, dict) and old.get("config_hash") == key and (folder / "model.pt").is_file():
        return old, False

    train_set, eval_set, info = load_data(profile, data_dir, spec.seed)
    val_set = torch.utils.data.Subset(eval_set, range(min(profile.val_images, len(eval_set))))
    graph = build_graph(spec, profile, info.input_shape)
    options = _compile_options(spec, info)
    model = compile(graph, **options)
    metadata = model_metadata(graph, **options)
    metadata["dataset"] = profile.dataset
    started = time.perf_counter()
    settings = _train_settings(profile, spec)
    history = train(
        model,
        train_set,
        val_set,
        **settings,
        log_path=folder / "log.jsonl",
        checkpoint_dir=folder / "train",
        resume=not isinstance(old, dict),  # a result of another configuration: start over
        progress=progress,
        metadata=metadata,
        extra_metrics=_extra_metrics(spec, profile, val_set),
    )
    model.eval()
    eps = parse_eps(profile.eps)
    attack_started = time.perf_counter()
    clean = accuracy(model, eval_set)
    fgsm = robust_accuracy(model, eval_set, [eps], "fgsm")[eps]
    pgd = robust_accuracy(model, eval_set, [eps], "pgd", seed=spec.seed, **_pgd_settings(profile))[
        eps
    ]
    attack_seconds = time.perf_counter() - attack_started
    _weights_only(folder / "model.pt", model, history, metadata, config)
    curve_keys = ("epoch", "train_loss", "train_acc", "val_acc", "val_fgsm_acc", "val_pgd_acc")
    result = {
        "name": spec.name,
        "config_hash": key,
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_acc": history[-1]["train_acc"],
        "clean_acc": clean,
        "fgsm_acc": fgsm,
        "pgd_acc": pgd,
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


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def _trace(model, x: torch.Tensor) -> dict:
    """Per-node reconstruction error per iteration (mean over images), and per image
    the mean over nodes of the last iteration's error (for the claims' intervals)."""
    _, trace = model.encode(x, trace=True)
    errors = {str(j): e for j, e in trace.node_errors.items()}
    final = torch.stack([e[-1] for e in errors.values()]).mean(0)
    return {
        "node_errors": {j: [float(v) for v in e.mean(1)] for j, e in errors.items()},
        "objective": [float(v) for v in trace.objective.mean(1)],
        "final_error_per_image": [float(v) for v in final],
    }


def _geometry(model) -> dict:
    """Coherence and (deep) frame potential of the model's dictionary, in float64."""
    from ..geometry import gram_metrics

    D = model.dictionary().to(torch.float64)
    metrics = gram_metrics(D)
    return {
        "shape": list(D.shape),
        "mutual_coherence": float(metrics.coherence),
        "frame_potential": float(metrics.frame_potential),
        "deep_frame_potential": float(metrics.deep_frame_potential),
    }


def measure_model(name: str, profile: Profile, out_dir: str | Path, data_dir=None) -> dict:
    """Trace (Fig. 8) and geometry (Figs. 9, 10) of a trained model, cached in measure.json."""
    from ..train import load_model

    folder = Path(out_dir) / "models" / name
    model_path = folder / "model.pt"
    key = {"model": _file_hash(model_path), "version": MEASURE_VERSION,
           "trace_images": profile.trace_images}
    old = read_json(folder / "measure.json")
    if isinstance(old, dict) and old.get("key") == key:
        return old
    model = load_model(model_path)
    seed = int(read_json(folder / "result.json")["config"]["seed"])
    _, eval_set, _ = load_data(profile, data_dir, seed)
    count = min(profile.trace_images, len(eval_set))
    x = torch.stack([eval_set[i][0] for i in range(count)])
    result = {"key": key, "trace": _trace(model, x), "geometry": _geometry(model)}
    write_json(folder / "measure.json", result)
    return result


def select_architecture(spec: ModelSpec, profile: Profile, out_dir: str | Path) -> dict:
    """Minimum deep frame potential of a model's architecture (no data), cached.

    :func:`deepframe.minimize_frame_potential` from the seeded He-style
    weights, ``profile.selection_steps`` Adam steps; the minimum over the
    history is the model-selection score of Murdock & Lucey (2020).
    """
    import networkx as nx

    from ..data import DATASETS
    from ..geometry import minimize_frame_potential

    info = DATASETS[profile.dataset]
    graph = build_graph(spec, profile, info.input_shape)
    path = Path(out_dir) / "selection" / f"{spec.base}.json"
    structure = nx.node_link_data(graph, edges="edges")
    key = _hash({"graph": structure, "steps": profile.selection_steps, "lr": profile.selection_lr})
    old = read_json(path)
    if isinstance(old, dict) and old.get("key") == key:
        return old
    started = time.perf_counter()
    fit = minimize_frame_potential(
        graph, steps=profile.selection_steps, lr=profile.selection_lr, seed=0
    )
    history = [float(v) for v in fit.history]
    result = {
        "key": key,
        "arch": spec.base,
        "atoms": int(fit.dictionary.shape[1]),
        "initial_dfp": history[0],
        "min_dfp": min(history),
        "history": history,
        "steps": profile.selection_steps,
        "lr": profile.selection_lr,
        "seconds": time.perf_counter() - started,
    }
    write_json(path, result)
    return result
