"""End-to-end reproduction of the seed paper's experiments (SPEC §7, Figs. 5-10).

:func:`reproduce` trains every model the figures need with
:func:`deepframe.train.train`, measures them, and writes one PNG and one JSON
per figure plus a ``report.md`` that states exactly what was run.

=====  ==================================================================
fig    pipeline
=====  ==================================================================
5      :func:`figure5`: feed-forward FGSM accuracy vs depth, ResNet vs its
       chain twin (``resnet(..., skips=False)``)
6      :func:`figure6`: FGSM accuracy vs iterations ``T`` for L-BP, DP
       (chain twin) and DP-res (ResNet); every ``T`` a separately trained
       model, ``T = 0`` the feed-forward baseline
7      :func:`figure7`: train / val / FGSM accuracy per epoch of L-TP, L-BP
       and DP (largest ``T``), read from the training logs
8      :func:`figure8`: per-layer reconstruction error per iteration
       (``Trace.node_errors``, mean over validation images), largest ``T``
9, 10  :func:`figure9`, :func:`figure10`: deep frame potential and mutual
       coherence of each Fig. 6 model's global dictionary (float64) vs ``T``
=====  ==================================================================

Profiles (:data:`PROFILES`): ``"quick"`` runs on scikit-learn's 8x8 digits
on a CPU in minutes; ``"full"`` is the CIFAR-10 setting (widths 16, 32, 64,
more epochs, ``T`` up to 10) and needs a GPU-scale budget; ``"test"`` is a
tiny smoke profile for the test suite. None of them is the paper's exact
training recipe; ``report.md`` says what was run.

Layout of ``out_dir``::

    models/<name>/checkpoint.pt, log.jsonl   training (resumable)
    models/<name>/result.json                final accuracies, trace, geometry
    fig5.png, fig5.json, ..., fig10.png, fig10.json
    report.md, summary.json

A model whose ``result.json`` records the same configuration is not touched
again; an interrupted one resumes from its checkpoint. Do not point two runs
at the same ``out_dir`` at once: they would both train and append to the logs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write
from .attacks import parse_eps
from .data import DATASETS, load_dataset
from .graph import resnet
from .pursuit import compile
from .train import model_metadata, train

__all__ = [
    "PROFILES",
    "Profile",
    "ModelSpec",
    "reproduce",
    "model_specs",
    "figure5",
    "figure6",
    "figure7",
    "figure8",
    "figure9",
    "figure10",
]

#: Display names of the solver families, as in the paper's legends.
FAMILIES = {"lbp": "L-BP", "dp": "DP", "dpres": "DP-res"}


@dataclass(frozen=True)
class Profile:
    """Everything that decides what :func:`reproduce` trains and measures.

    Attributes
    ----------
    name : str
        Profile name.
    widths : tuple of int
        Channels of the three ResNet stages (and of the chain twin).
    depths : tuple of int
        ``n`` of the 6n+2 ResNets of Fig. 5 (one ResNet + one chain twin each).
    iterations : tuple of int
        ``T`` of Fig. 6 (``0`` is the feed-forward baseline).
    pursuit_depth : int
        ``n`` of the networks of Figs. 6-10 (the paper: a depth-1 network).
    epochs, batch_size, optimizer, lr, weight_decay, schedule
        Training settings passed to :func:`deepframe.train.train`.
    batchnorm : bool
        Batch norm on every node (folded into the pursuit, SPEC §4).
    eps : str
        FGSM radius in pixel units of [0, 1] images (``"8/255"`` accepted).
    val_limit : int or None
        Validation images used for training-time evaluation and all
        measurements (None: all of them).
    trace_images : int
        Validation images averaged in Fig. 8.
    threads : int or None
        ``torch.set_num_threads`` during the run (None: leave it).
    """

    name: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    iterations: tuple[int, ...]
    pursuit_depth: int
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    schedule: str | None
    batchnorm: bool
    eps: str
    val_limit: int | None
    trace_images: int
    threads: int | None


#: The built-in profiles. ``"quick"``/``"test"`` are digits-scale, ``"full"`` CIFAR-scale.
#: eps 0.1 on 8x8 digits, chosen by a check on the quick profile's models (clean about
#: 0.96-0.98): FGSM accuracy 0.90-0.95 at 8/255, 0.85-0.90 at 0.05, 0.62-0.71 at 0.1 and
#: 0.11-0.24 at 0.2. At 0.1 the models differ most; CIFAR-10 uses the paper's 8/255.
PROFILES: dict[str, Profile] = {
    "test": Profile(
        "test",
        widths=(4, 8, 8),
        depths=(1,),
        iterations=(0, 1),
        pursuit_depth=1,
        epochs=1,
        batch_size=128,
        optimizer="adam",
        lr=1e-2,
        weight_decay=0.0,
        schedule="cosine",
        batchnorm=True,
        eps="0.1",
        val_limit=64,
        trace_images=32,
        threads=1,
    ),
    "quick": Profile(
        "quick",
        widths=(8, 16, 32),
        depths=(1, 2, 3),
        iterations=(0, 1, 2, 4),
        pursuit_depth=1,
        epochs=8,
        batch_size=64,
        optimizer="adam",
        lr=1e-2,
        weight_decay=0.0,
        schedule="cosine",
        batchnorm=True,
        eps="0.1",
        val_limit=None,
        trace_images=256,
        threads=1,
    ),
    "full": Profile(
        "full",
        widths=(16, 32, 64),
        depths=(1, 2, 3, 5),
        iterations=(0, 1, 2, 5, 10),
        pursuit_depth=1,
        epochs=60,
        batch_size=128,
        optimizer="sgd",
        lr=0.05,
        weight_decay=5e-4,
        schedule="cosine",
        batchnorm=True,
        eps="8/255",
        val_limit=None,
        trace_images=256,
        threads=None,
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """One trained model: an architecture, a solver and ``T``.

    Attributes
    ----------
    name : str
        Folder name under ``out_dir/models``.
    depth : int
        ``n`` of the 6n+2 ResNet family.
    skips : bool
        ResNet (True) or its chain twin (False).
    method : {"feedforward", "layered", "deep"}
        Solver of :func:`deepframe.compile`.
    iterations : int
        ``T``.
    """

    name: str
    depth: int
    skips: bool
    method: str
    iterations: int


def _feedforward_spec(depth: int, skips: bool) -> ModelSpec:
    kind = "res" if skips else "chain"
    return ModelSpec(f"ff-{kind}-n{depth}", depth, skips, "feedforward", 0)


def _pursuit_spec(family: str, depth: int, t: int) -> ModelSpec:
    """The model of ``family`` (lbp, dp, dpres) at ``T = t``; ``T = 0`` is feed-forward."""
    skips = family == "dpres"
    if t == 0:
        return _feedforward_spec(depth, skips)
    method = "layered" if family == "lbp" else "deep"
    return ModelSpec(f"{family}-n{depth}-T{t}", depth, skips, method, t)


def model_specs(profile: Profile) -> list[ModelSpec]:
    """All distinct models of a profile (Fig. 5, then Fig. 6), without duplicates."""
    specs = [_feedforward_spec(n, skips) for n in profile.depths for skips in (True, False)]
    for family in FAMILIES:
        for t in profile.iterations:
            specs.append(_pursuit_spec(family, profile.pursuit_depth, t))
    unique: dict[str, ModelSpec] = {}
    for s in specs:
        unique.setdefault(s.name, s)
    return list(unique.values())


# --------------------------------------------------------------------------- helpers


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _subset(dataset, limit: int | None):
    if limit is None or limit >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(limit))


def _first_batch(dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    count = min(count, len(dataset))
    xs, ys = zip(*(dataset[i] for i in range(count)))
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


def _graph(spec: ModelSpec, profile: Profile, input_shape):
    return resnet(
        tuple(input_shape),
        spec.depth,
        widths=profile.widths,
        skips=spec.skips,
        batchnorm=profile.batchnorm,
    )


def _compile_options(spec: ModelSpec, info, seed: int) -> dict:
    return {
        "method": spec.method,
        "iterations": spec.iterations,
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "seed": seed,
    }


def _train_settings(profile: Profile, seed: int) -> dict:
    return {
        "epochs": profile.epochs,
        "batch_size": profile.batch_size,
        "optimizer": profile.optimizer,
        "lr": profile.lr,
        "weight_decay": profile.weight_decay,
        "schedule": profile.schedule,
        "seed": seed,
        "fgsm_eps": profile.eps,
    }


def _config(spec: ModelSpec, profile: Profile, dataset: str, seed: int) -> dict:
    """What determines a model's result; a change means the model is redone."""
    return {
        "model": dataclasses.asdict(spec),
        "dataset": dataset,
        "widths": list(profile.widths),
        "batchnorm": profile.batchnorm,
        "val_limit": profile.val_limit,
        "trace_images": profile.trace_images,
        **_train_settings(profile, seed),
    }


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _geometry(model) -> dict:
    """Coherence and (deep) frame potential of the model's dictionary in float64."""
    from .geometry import gram_metrics

    D = model.dictionary().to(torch.float64)
    metrics = gram_metrics(D)  # one pass: coherence, FP and DFP together
    return {
        "available": True,
        "shape": list(D.shape),
        "mutual_coherence": float(metrics.coherence),
        "frame_potential": float(metrics.frame_potential),
        "deep_frame_potential": float(metrics.deep_frame_potential),
    }


@torch.no_grad()
def _trace(model, x: torch.Tensor) -> dict:
    """Mean per-node reconstruction error per iteration (Fig. 8) and mean objective."""
    model.eval()
    _, trace = model.encode(x, trace=True)
    return {
        "node_errors": {
            str(j): [float(v) for v in e.mean(1)] for j, e in trace.node_errors.items()
        },
        "objective": [float(v) for v in trace.objective.mean(1)],
    }


def _run_model(
    spec: ModelSpec,
    profile: Profile,
    dataset: str,
    data,
    models_dir: Path,
    seed: int,
    progress: bool,
) -> tuple[dict, bool]:
    """Train (or resume) one model and measure it; ``(result, trained_now)``."""
    folder = models_dir / spec.name
    config = _config(spec, profile, dataset, seed)
    key = _config_hash(config)
    result_path = folder / "result.json"
    old = _read_json(result_path)
    if isinstance(old, dict) and old.get("config_hash") == key:
        return old, False

    train_set, val_set, info = data
    graph = _graph(spec, profile, info.input_shape)
    options = _compile_options(spec, info, seed)
    model = compile(graph, **options)
    metadata = model_metadata(graph, **options)
    metadata["dataset"] = dataset
    start = time.perf_counter()
    # A result of another configuration means the checkpoint is stale: start over.
    stale = isinstance(old, dict)
    history = train(
        model,
        train_set,
        val_set,
        **_train_settings(profile, seed),
        log_path=folder / "log.jsonl",
        checkpoint_dir=folder,
        resume=not stale,
        progress=progress,
        metadata=metadata,
    )
    seconds = time.perf_counter() - start
    model.eval()
    last = history[-1]
    x, _ = _first_batch(val_set, profile.trace_images)
    result = {
        "name": spec.name,
        "config_hash": key,
        "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": int(last["epoch"]),
        "train_acc": last["train_acc"],
        "val_acc": last["val_acc"],
        "fgsm_eps": parse_eps(profile.eps),
        "val_fgsm_acc": last["val_fgsm_acc"],
        "val_samples": len(val_set),
        "train_seconds": sum(r.get("time", 0.0) for r in history),
        "wall_seconds_this_call": seconds,
        "trace": _trace(model, x.to(next(model.parameters()).device)),
        "geometry": _geometry(model),
    }
    _write_json(result_path, result)
    return result, True


# --------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path, dpi: int = 100) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _subtitle(profile: Profile, dataset: str) -> str:
    return f"{dataset}, profile {profile.name!r}, FGSM eps={profile.eps}"


def figure5(results: dict, profile: Profile, dataset: str, out_dir: Path) -> dict:
    """Fig. 5: feed-forward FGSM accuracy vs depth, ResNet vs chain twin."""
    numbers = {
        "eps": parse_eps(profile.eps),
        "depth_n": list(profile.depths),
        "layers": [6 * n + 2 for n in profile.depths],
    }
    for skips, label in ((True, "residual"), (False, "chain")):
        names = [_feedforward_spec(n, skips).name for n in profile.depths]
        numbers[label] = {
            "fgsm_acc": [results[s]["val_fgsm_acc"] for s in names],
            "clean_acc": [results[s]["val_acc"] for s in names],
            "models": names,
        }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, marker in (("residual", "o"), ("chain", "s")):
        ax.plot(numbers["layers"], numbers[label]["fgsm_acc"], marker=marker, label=label)
    ax.set_xlabel("layers (6n+2)")
    ax.set_ylabel("FGSM accuracy")
    ax.set_xticks(numbers["layers"])
    ax.set_title("Fig. 5: feed-forward, " + _subtitle(profile, dataset), fontsize=8)
    ax.legend()
    _save_figure(fig, out_dir / "fig5.png")
    _write_json(out_dir / "fig5.json", numbers)
    return numbers


def _fig6_names(profile: Profile) -> dict[str, list[str]]:
    return {
        f: [_pursuit_spec(f, profile.pursuit_depth, t).name for t in profile.iterations]
        for f in FAMILIES
    }


def figure6(results: dict, profile: Profile, dataset: str, out_dir: Path) -> dict:
    """Fig. 6: FGSM accuracy vs iterations ``T`` for L-BP, DP and DP-res."""
    numbers = {
        "eps": parse_eps(profile.eps),
        "T": list(profile.iterations),
        "depth_n": profile.pursuit_depth,
    }
    for family, names in _fig6_names(profile).items():
        numbers[FAMILIES[family]] = {
            "fgsm_acc": [results[s]["val_fgsm_acc"] for s in names],
            "clean_acc": [results[s]["val_acc"] for s in names],
            "models": names,
        }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label in FAMILIES.values():
        ax.plot(numbers["T"], numbers[label]["fgsm_acc"], marker="o", label=label)
    ax.set_xlabel("iterations T")
    ax.set_ylabel("FGSM accuracy")
    ax.set_xticks(numbers["T"])
    ax.set_title("Fig. 6: " + _subtitle(profile, dataset), fontsize=8)
    ax.legend()
    _save_figure(fig, out_dir / "fig6.png")
    _write_json(out_dir / "fig6.json", numbers)
    return numbers


def _read_log(path: Path) -> list[dict]:
    """The records of a training log, one per epoch (the last one if an epoch repeats)."""
    lines = Path(path).read_text().splitlines()
    by_epoch = {}
    for line in lines:
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def figure7(results: dict, profile: Profile, dataset: str, out_dir: Path, models_dir: Path) -> dict:
    """Fig. 7: train / val / FGSM accuracy per epoch of L-TP, L-BP and DP (largest ``T``)."""
    t = max(profile.iterations)
    chosen = {
        "L-TP": _feedforward_spec(profile.pursuit_depth, False).name,
        "L-BP": _pursuit_spec("lbp", profile.pursuit_depth, t).name,
        "DP": _pursuit_spec("dp", profile.pursuit_depth, t).name,
    }
    numbers: dict[str, Any] = {"eps": parse_eps(profile.eps), "T": t}
    for label, name in chosen.items():
        log = _read_log(models_dir / name / "log.jsonl")
        numbers[label] = {
            "model": name,
            "epoch": [r["epoch"] for r in log],
            **{k: [r[k] for r in log] for k in ("train_acc", "val_acc", "val_fgsm_acc")},
        }
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3), sharey=True)
    for ax, label in zip(axes, chosen):
        curve = numbers[label]
        for key, style in (("train_acc", "-"), ("val_acc", "--"), ("val_fgsm_acc", ":")):
            ax.plot(curve["epoch"], curve[key], style, label=key)
        ax.set_title(f"{label} ({curve['model']})", fontsize=8)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    fig.suptitle("Fig. 7: " + _subtitle(profile, dataset), fontsize=8)
    _save_figure(fig, out_dir / "fig7.png")
    _write_json(out_dir / "fig7.json", numbers)
    return numbers


def figure8(results: dict, profile: Profile, dataset: str, out_dir: Path) -> dict:
    """Fig. 8: per-layer reconstruction error per iteration, largest-``T`` models."""
    t = max(profile.iterations)
    numbers: dict[str, Any] = {
        "T": t,
        "images": profile.trace_images,
        "quantity": "mean over images of ||r||^2/||target||^2 of the "
        "terms a node synthesises (Trace.node_errors)",
    }
    for family, label in FAMILIES.items():
        name = _pursuit_spec(family, profile.pursuit_depth, t).name
        numbers[label] = {"model": name, **results[name]["trace"]}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3), sharey=True)
    for ax, label in zip(axes, FAMILIES.values()):
        for node, errors in numbers[label]["node_errors"].items():
            ax.plot(range(len(errors)), errors, marker=".", label=node)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("iteration (0 = feed-forward)")
        ax.set_yscale("log")
    axes[0].set_ylabel("reconstruction error")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.suptitle(f"Fig. 8: T={t}, " + _subtitle(profile, dataset), fontsize=8)
    _save_figure(fig, out_dir / "fig8.png")
    _write_json(out_dir / "fig8.json", numbers)
    return numbers


def _geometry_figure(
    results: dict,
    profile: Profile,
    dataset: str,
    out_dir: Path,
    *,
    number: int,
    key: str,
    ylabel: str,
) -> dict:
    numbers: dict[str, Any] = {
        "T": list(profile.iterations),
        "quantity": key,
        "dtype": "float64",
        "method": "structured",
    }
    missing = [
        r["geometry"].get("reason") for r in results.values() if not r["geometry"].get("available")
    ]
    if missing:
        numbers["skipped"] = missing[0]
        _write_json(out_dir / f"fig{number}.json", numbers)
        return numbers
    for family, names in _fig6_names(profile).items():
        numbers[FAMILIES[family]] = {
            key: [results[s]["geometry"][key] for s in names],
            "models": names,
        }
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label in FAMILIES.values():
        ax.plot(numbers["T"], numbers[label][key], marker="o", label=label)
    ax.set_xlabel("iterations T")
    ax.set_ylabel(ylabel)
    ax.set_xticks(numbers["T"])
    ax.set_title(f"Fig. {number}: {dataset}, profile {profile.name!r}", fontsize=8)
    ax.legend()
    _save_figure(fig, out_dir / f"fig{number}.png")
    _write_json(out_dir / f"fig{number}.json", numbers)
    return numbers


def figure9(results: dict, profile: Profile, dataset: str, out_dir: Path) -> dict:
    """Fig. 9: deep frame potential of each Fig. 6 model's dictionary vs ``T``."""
    return _geometry_figure(
        results,
        profile,
        dataset,
        out_dir,
        number=9,
        key="deep_frame_potential",
        ylabel="deep frame potential",
    )


def figure10(results: dict, profile: Profile, dataset: str, out_dir: Path) -> dict:
    """Fig. 10: mutual coherence of each Fig. 6 model's dictionary vs ``T``."""
    return _geometry_figure(
        results,
        profile,
        dataset,
        out_dir,
        number=10,
        key="mutual_coherence",
        ylabel="mutual coherence",
    )


# --------------------------------------------------------------------------- report


def _machine() -> str:
    threads = torch.get_num_threads()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"{platform.platform()}; {platform.processor() or platform.machine()}; "
        f"{os.cpu_count()} logical CPUs; torch {torch.__version__} with {threads} "
        f"intra-op thread(s); {device}"
    )


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _report(summary: dict, figures: dict, results: dict, profile: Profile) -> str:
    s = summary
    lines = [
        "# deepframe reproduction of the seed paper's Figs. 5-10",
        "",
        f"**Profile `{profile.name}` on `{s['dataset']}`.** "
        + (
            "This is a CPU-scale profile, not the paper's setting: the paper trains "
            "modified ResNets on CIFAR-10 to about 90% clean accuracy; here small models "
            "are trained for a few epochs on scikit-learn's 8x8 handwritten digits. "
            "Compare trends, not numbers."
            if s["dataset"] != "cifar10"
            else "CIFAR-10 at reduced training length; the paper's recipe and accuracy "
            "(about 90% clean) are not guaranteed by this profile."
        ),
        "",
        "## What was run",
        "",
        f"- dataset: {s['dataset']} ({s['train_samples']} training, {s['val_samples']} "
        "validation images used)",
        f"- architectures: 6n+2 ResNets (`deepframe.resnet`, option-A shortcuts) with stage "
        f"widths {list(profile.widths)}, batch norm {'on' if profile.batchnorm else 'off'}, "
        "and their chain twins (`skips=False`)",
        f"- Fig. 5: feed-forward, n in {list(profile.depths)} "
        f"(layers {[6 * n + 2 for n in profile.depths]})",
        f"- Figs. 6-10: n = {profile.pursuit_depth}, T in {list(profile.iterations)}; L-BP = "
        "`layered` on the chain twin, DP = `deep` on the chain twin, DP-res = `deep` on the "
        "ResNet; T = 0 is the feed-forward model",
        f"- training: {profile.epochs} epochs, batch {profile.batch_size}, {profile.optimizer} "
        f"lr {profile.lr}, weight decay {profile.weight_decay}, schedule {profile.schedule}, "
        f"seed {s['seed']}",
        f"- attack: FGSM (Eq. 19), eps = {profile.eps} ({parse_eps(profile.eps):.4f}) in "
        "pixel units of [0, 1] images, white-box through every pursuit iteration",
        f"- models: {s['models']} ({s['trained_now']} trained in this call, "
        f"{s['models'] - s['trained_now']} reused from earlier calls)",
        f"- wall time of this call: {s['wall_seconds']:.1f} s; summed training time of all "
        f"models (from their logs): {s['train_seconds']:.1f} s",
        f"- machine: {s['machine']}",
        "",
        "## Models",
        "",
        "| model | method | skips | n | T | params | train acc | val acc | FGSM acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        m = r["config"]["model"]
        lines.append(
            f"| {name} | {m['method']} | {m['skips']} | {m['depth']} | "
            f"{m['iterations']} | {r['parameters']} | {_fmt(r['train_acc'])} | "
            f"{_fmt(r['val_acc'])} | {_fmt(r['val_fgsm_acc'])} |"
        )
    lines += ["", "## Figures", ""]
    f5 = figures["fig5"]
    lines += [
        "Fig. 5 (feed-forward FGSM accuracy vs layers): "
        + ", ".join(
            f"{layers} layers: residual {_fmt(a)} / chain {_fmt(b)}"
            for layers, a, b in zip(
                f5["layers"], f5["residual"]["fgsm_acc"], f5["chain"]["fgsm_acc"]
            )
        ),
        "",
        "![fig5](fig5.png)",
        "",
    ]
    f6 = figures["fig6"]
    lines += [
        "Fig. 6 (FGSM accuracy vs T = "
        + str(f6["T"])
        + "): "
        + "; ".join(
            f"{label} {[round(v, 3) for v in f6[label]['fgsm_acc']]}" for label in FAMILIES.values()
        ),
        "",
        "![fig6](fig6.png)",
        "",
        "Fig. 7 (training curves): ![fig7](fig7.png)",
        "",
        "Fig. 8 (reconstruction error per iteration): ![fig8](fig8.png)",
        "",
    ]
    for number in (9, 10):
        fig = figures[f"fig{number}"]
        if "skipped" in fig:
            lines += [f"Fig. {number}: **skipped** - {fig['skipped']}", ""]
        else:
            key = fig["quantity"]
            lines += [
                f"Fig. {number} ({key} vs T): "
                + "; ".join(
                    f"{label} {[round(v, 5) for v in fig[label][key]]}"
                    for label in FAMILIES.values()
                ),
                "",
                f"![fig{number}](fig{number}.png)",
                "",
            ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def reproduce(
    out_dir: str | Path,
    *,
    profile: str = "quick",
    dataset: str = "digits",
    data_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train, measure and plot the seed paper's Figs. 5-10 (SPEC §7).

    Every model is trained with :func:`deepframe.train.train` (checkpoint and
    JSON-lines log in ``out_dir/models/<name>``), then measured once: final
    clean and FGSM validation accuracy (the last log record), the pursuit
    trace on ``profile.trace_images`` validation images (Fig. 8) and the
    geometry of its dictionary in float64 (Figs. 9, 10). A model whose
    ``result.json`` records the same configuration is skipped; an
    interrupted one resumes from its checkpoint; one whose ``result.json``
    records another configuration is retrained from scratch. All files are
    written atomically.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    profile : {"quick", "full", "test"}
        See :data:`PROFILES`. ``"full"`` is meant for CIFAR-10.
    dataset : {"digits", "cifar10"}
        Built-in digits, or CIFAR-10 from ``data_dir`` (``cifar-10-batches-py``
        layout; ``python shared/tools/cifar10_batches.py DEST`` writes it).
    data_dir : str or Path, optional
        CIFAR-10 folder (required for ``"cifar10"``).
    seed : int
        Seed of the data split, the initial weights and every training stream.
    progress : bool
        tqdm bars (per model and per epoch) and one line per model.

    Returns
    -------
    dict
        ``{"summary": ..., "figures": {"fig5": numbers, ...}, "models": {name: result}}``.
    """
    if profile not in PROFILES:
        raise ValueError(
            f"reproduce: unknown profile {profile!r}; expected one of {sorted(PROFILES)}"
        )
    if dataset not in ("digits", "cifar10"):
        raise ValueError(f"reproduce: dataset must be 'digits' or 'cifar10', got {dataset!r}")
    if dataset == "cifar10" and data_dir is None:
        raise ValueError(
            "reproduce: dataset 'cifar10' needs data_dir (a cifar-10-batches-py "
            "folder; python shared/tools/cifar10_batches.py DEST writes one)"
        )
    prof = PROFILES[profile]
    out = Path(out_dir)
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if prof.threads is not None:
        torch.set_num_threads(prof.threads)
    try:
        info = DATASETS[dataset]
        train_set, val_set = load_dataset(
            dataset, data_dir=data_dir, seed=seed, augment=dataset == "cifar10"
        )
        val_set = _subset(val_set, prof.val_limit)
        data = (train_set, val_set, info)
        specs = model_specs(prof)
        results: dict[str, dict] = {}
        trained = 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(specs, desc="models", unit="model")
        for spec in bar if bar is not None else specs:
            if bar is not None:
                bar.set_postfix_str(spec.name)
            result, fresh = _run_model(spec, prof, dataset, data, models_dir, seed, progress=False)
            results[spec.name] = result
            trained += fresh
            if progress:
                bar.write(
                    f"{spec.name:>16}: val {_fmt(result['val_acc'])} FGSM "
                    f"{_fmt(result['val_fgsm_acc'])} "
                    f"({'trained' if fresh else 'reused'})"
                )
        if bar is not None:
            bar.close()

        figures = {
            "fig5": figure5(results, prof, dataset, out),
            "fig6": figure6(results, prof, dataset, out),
            "fig7": figure7(results, prof, dataset, out, models_dir),
            "fig8": figure8(results, prof, dataset, out),
            "fig9": figure9(results, prof, dataset, out),
            "fig10": figure10(results, prof, dataset, out),
        }
        summary = {
            "profile": prof.name,
            "dataset": dataset,
            "seed": seed,
            "settings": dataclasses.asdict(prof),
            "models": len(specs),
            "trained_now": trained,
            "train_samples": len(train_set),
            "val_samples": len(val_set),
            "train_seconds": math.fsum(r["train_seconds"] for r in results.values()),
            "wall_seconds": time.perf_counter() - start,
            "machine": _machine(),
        }
        atomic_write(
            out / "report.md", lambda f: f.write(_report(summary, figures, results, prof).encode())
        )
        _write_json(out / "summary.json", summary)
    finally:
        torch.set_num_threads(old_threads)
    return {"summary": summary, "figures": figures, "models": results}
