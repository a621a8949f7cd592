"""Figures 5-10 of the seed paper, the model selection and geometry-vs-robustness plots.

Every figure shows the mean over seeds with bars of one standard deviation
(several seeds) or of the 95% Wilson interval of the accuracy (one seed),
FGSM beside PGD, and the adversarially trained feed-forward ResNet as a
dashed reference. Iteration axes are our ``T`` (feed-forward = 0); the seed
paper counts the feed-forward pass as one iteration, so a secondary axis
shows its ``T + 1``.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from .._io import atomic_write
from .claims import by_base
from .profiles import FAMILIES, adversarial_base, feedforward_base, pursuit_base
from .stats import mean_and_sd, spearman, wilson

__all__ = ["all_figures"]

PANELS = (("clean_acc", "clean"), ("fgsm_acc", "FGSM"), ("pgd_acc", "PGD"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _stat(runs: list[dict], key: str, accuracy: bool = True) -> dict:
    """Mean and error bar of ``key`` over the seeds of one configuration."""
    values = [float(r[key]) for r in runs]
    if len(values) >= 2:
        mean, sd = mean_and_sd(values)
        return {"mean": mean, "low": mean - sd, "high": mean + sd, "values": values}
    mean = values[0]
    if accuracy:
        iv = wilson(mean, runs[0]["eval_images"])
        return {"mean": mean, "low": iv.low, "high": iv.high, "values": values}
    return {"mean": mean, "low": mean, "high": mean, "values": values}


def _errorbar(ax, xs, stats, **kwargs):
    means = [s["mean"] for s in stats]
    lower = [s["mean"] - s["low"] for s in stats]
    upper = [s["high"] - s["mean"] for s in stats]
    ax.errorbar(xs, means, yerr=[lower, upper], capsize=3, **kwargs)


def _bars_note(seeds: int) -> str:
    return (
        f"mean of {seeds} seeds, bars +-1 sd"
        if seeds >= 2
        else "one seed, bars: 95% Wilson interval"
    )


def _paper_axis(ax, ts) -> None:
    top = ax.secondary_xaxis("top", functions=(lambda t: t + 1, lambda t: t - 1))
    top.set_xticks([t + 1 for t in ts])
    top.set_xlabel("paper's T (feed-forward = 1)", fontsize=7)
    top.tick_params(labelsize=7)


def _title(summary: dict) -> str:
    p = summary["profile"]
    return f"{p['dataset']}, profile {p['name']!r}, eps = {p['eps']}, PGD-{p['pgd_steps']}"


def _adversarial(groups, profile) -> list[dict] | None:
    return groups.get(adversarial_base(profile["pursuit_depth"]))


def figure5(summary, groups, out: Path) -> dict:
    p = summary["profile"]
    depths = sorted(p["depths"])
    layers = [6 * n + 2 for n in depths]
    numbers = {"layers": layers, "depth_n": depths}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=False)
    adv = _adversarial(groups, p)
    for ax, (key, label) in zip(axes, PANELS):
        for arch, marker in (("resnet", "o"), ("chain", "s")):
            stats = [_stat(groups[feedforward_base(arch, n)], key) for n in depths]
            numbers.setdefault(arch, {})[key] = stats
            _errorbar(ax, layers, stats, marker=marker, label=arch)
        if adv:
            s = _stat(adv, key)
            numbers["adversarial_baseline"] = numbers.get("adversarial_baseline", {})
            numbers["adversarial_baseline"][key] = s
            ax.axhline(s["mean"], ls="--", c="grey", lw=1, label="ResNet + FGSM adv. training")
        ax.set_xticks(layers)
        ax.set_xlabel("layers (6n + 2)")
        ax.set_title(f"{label} accuracy", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Fig. 5 (feed-forward): {_title(summary)}; {_bars_note(len(summary['seeds']))}", fontsize=8
    )
    _save(fig, out / "fig5.png")
    return numbers


def figure6(summary, groups, out: Path) -> dict:
    p = summary["profile"]
    ts = sorted(p["iterations"])
    n = p["pursuit_depth"]
    numbers = {"T": ts, "paper_T": [t + 1 for t in ts]}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    adv = _adversarial(groups, p)
    for ax, (key, label) in zip(axes, PANELS):
        for family, legend in FAMILIES.items():
            stats = [_stat(groups[pursuit_base(family, n, t)], key) for t in ts]
            numbers.setdefault(legend, {})[key] = stats
            _errorbar(ax, ts, stats, marker="o", label=legend)
        if adv:
            ax.axhline(
                _stat(adv, key)["mean"],
                ls="--",
                c="grey",
                lw=1,
                label="ResNet + FGSM adv. training",
            )
        ax.set_xticks(ts)
        ax.set_xlabel("iterations T (ours; feed-forward = 0)")
        ax.set_title(f"{label} accuracy", fontsize=9)
        _paper_axis(ax, ts)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Fig. 6 (n = {n}): {_title(summary)}; {_bars_note(len(summary['seeds']))}",
        fontsize=8,
        y=1.08,
    )
    _save(fig, out / "fig6.png")
    return numbers


def _mean_curve(runs: list[dict], key: str) -> list[float | None]:
    epochs = min(len(r["curve"]) for r in runs)
    out = []
    for e in range(epochs):
        values = [r["curve"][e].get(key) for r in runs]
        out.append(None if any(v is None for v in values) else math.fsum(values) / len(values))
    return out


def figure7(summary, groups, out: Path) -> dict:
    p = summary["profile"]
    n, t = p["pursuit_depth"], max(p["iterations"])
    chosen = {
        "L-TP": feedforward_base("chain", n),
        "L-BP": pursuit_base("lbp", n, t),
        "DP": pursuit_base("dp", n, t),
    }
    numbers = {"T": t, "models": chosen}
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    keys = (
        ("train_acc", "-", "train"),
        ("val_acc", "--", "val clean"),
        ("val_fgsm_acc", ":", "val FGSM"),
        ("val_pgd_acc", "-.", "val PGD"),
    )
    for ax, (label, base) in zip(axes, chosen.items()):
        runs = groups[base]
        epochs = list(range(1, min(len(r["curve"]) for r in runs) + 1))
        numbers[label] = {"epoch": epochs}
        for key, style, legend in keys:
            curve = _mean_curve(runs, key)
            numbers[label][key] = curve
            if all(v is not None for v in curve):
                ax.plot(epochs, curve, style, label=legend)
        ax.set_title(f"{label} ({base})", fontsize=8)
        ax.set_xlabel("epoch")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Fig. 7 (training curves, mean of {len(summary['seeds'])} seed(s); validation on "
        f"{p['val_images']} images, PGD on {p['curve_pgd_images']}): {_title(summary)}",
        fontsize=8,
    )
    _save(fig, out / "fig7.png")
    return numbers


def figure8(summary, groups, out: Path) -> dict:
    p = summary["profile"]
    n, t = p["pursuit_depth"], max(p["iterations"])
    numbers = {
        "T": t,
        "quantity": "mean over images of ||r||^2 / ||target||^2 of the terms a "
        "node synthesises (Trace.node_errors), mean over seeds",
    }
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    for ax, (family, label) in zip(axes, FAMILIES.items()):
        runs = groups[pursuit_base(family, n, t)]
        nodes = runs[0]["trace"]["node_errors"]
        curves = {
            j: [
                math.fsum(r["trace"]["node_errors"][j][i] for r in runs) / len(runs)
                for i in range(len(nodes[j]))
            ]
            for j in nodes
        }
        numbers[label] = curves
        for j, curve in curves.items():
            ax.plot(range(len(curve)), curve, marker=".", label=j)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration (ours; 0 = feed-forward)")
        _paper_axis(ax, range(len(nodes[next(iter(nodes))])))
    axes[0].set_ylabel("reconstruction error")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.suptitle(f"Fig. 8 (T = {t}, n = {n}): {_title(summary)}", fontsize=8, y=1.08)
    _save(fig, out / "fig8.png")
    return numbers


def _geometry_figure(summary, groups, out: Path, number: int, key: str, ylabel: str) -> dict:
    p = summary["profile"]
    ts = sorted(p["iterations"])
    n = p["pursuit_depth"]
    numbers = {"T": ts, "paper_T": [t + 1 for t in ts], "quantity": key, "dtype": "float64"}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for family, legend in FAMILIES.items():
        stats = [_stat(groups[pursuit_base(family, n, t)], key, accuracy=False) for t in ts]
        numbers[legend] = stats
        _errorbar(ax, ts, stats, marker="o", label=legend)
    ax.set_xticks(ts)
    ax.set_xlabel("iterations T (ours; feed-forward = 0)")
    ax.set_ylabel(ylabel)
    _paper_axis(ax, ts)
    ax.legend(fontsize=7)
    seeds = len(summary["seeds"])
    ax.set_title(
        f"Fig. {number}: {p['dataset']}, profile {p['name']!r}, n = {n}"
        + (f", mean +-1 sd of {seeds} seeds" if seeds > 1 else ", one seed"),
        fontsize=8,
    )
    _save(fig, out / f"fig{number}.png")
    return numbers


def figure_selection(summary, out: Path) -> dict:
    entries = summary["selection"]
    rho = spearman([e["min_dfp"] for e in entries], [e["val_error"] for e in entries])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    markers = {"resnet": "o", "chain": "s", "densenet": "^"}
    for family, marker in markers.items():
        pts = [e for e in entries if e["family"] == family]
        if pts:
            ax.scatter(
                [e["min_dfp"] for e in pts],
                [e["val_error"] for e in pts],
                marker=marker,
                label=family,
            )
        for e in pts:
            ax.annotate(e["arch"], (e["min_dfp"], e["val_error"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("minimum deep frame potential (no data)")
    ax.set_ylabel("validation error after training")
    ax.legend(fontsize=7)
    ax.set_title(
        f"Dataless model selection: Spearman rho = {rho.value:+.2f} "
        f"[{_fmt(rho.low)}, {_fmt(rho.high)}]",
        fontsize=8,
    )
    _save(fig, out / "fig_selection.png")
    return {"spearman": rho.to_dict(), "entries": entries}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def figure_geometry_robustness(summary, out: Path) -> dict:
    models = [r for r in summary["models"] if not r["adversarial_training"]]
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8, 6))
    numbers = {}
    for row, (geo, label) in enumerate(
        (("deep_frame_potential", "deep frame potential"), ("mutual_coherence", "mutual coherence"))
    ):
        for col, (key, attack) in enumerate((("fgsm_acc", "FGSM"), ("pgd_acc", "PGD"))):
            ax = axes[row][col]
            xs = [r[geo] for r in models]
            ys = [r[key] for r in models]
            rho = spearman(xs, ys)
            numbers[f"{geo}/{key}"] = rho.to_dict()
            for method, marker in (("feedforward", "o"), ("layered", "s"), ("deep", "^")):
                pts = [r for r in models if r["method"] == method]
                ax.scatter(
                    [r[geo] for r in pts], [r[key] for r in pts], marker=marker, label=method, s=18
                )
            ax.set_xlabel(label, fontsize=8)
            ax.set_ylabel(f"{attack} accuracy", fontsize=8)
            ax.set_title(f"rho = {rho.value:+.2f} [{_fmt(rho.low)}, {_fmt(rho.high)}]", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        f"Geometry vs robustness over {len(models)} trained models: {_title(summary)}", fontsize=8
    )
    fig.tight_layout()
    _save(fig, out / "fig_geometry_robustness.png")
    return numbers


def all_figures(summary: dict, out: Path) -> dict:
    """Write every figure into ``out`` and return their numbers."""
    groups = by_base(summary["models"])
    return {
        "fig5": figure5(summary, groups, out),
        "fig6": figure6(summary, groups, out),
        "fig7": figure7(summary, groups, out),
        "fig8": figure8(summary, groups, out),
        "fig9": _geometry_figure(
            summary, groups, out, 9, "deep_frame_potential", "deep frame potential"
        ),
        "fig10": _geometry_figure(summary, groups, out, 10, "mutual_coherence", "mutual coherence"),
        "selection": figure_selection(summary, out),
        "geometry_robustness": figure_geometry_robustness(summary, out),
    }
