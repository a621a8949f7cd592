"""``report.md``: what was run, the claims table, the models, the figures."""

from __future__ import annotations

import math
from pathlib import Path

from .._io import atomic_write
from .claims import by_base
from .stats import mean_and_sd

__all__ = ["write_report", "claims_markdown"]

VERDICT = {
    "supported": "supported",
    "contradicted": "**contradicted**",
    "inconclusive": "inconclusive at this scale",
}


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _interval(part: dict) -> str:
    if part["low"] is None:
        return f"{part['value']:+.4g} ({part['method'] or 'no interval'})"
    return f"{part['value']:+.3f} [{part['low']:+.3f}, {part['high']:+.3f}]"


def claims_markdown(claims: list[dict]) -> list[str]:
    """The claims table: one row per claim, evidence under FGSM and PGD, a verdict each."""
    lines = [
        "| # | claim (figure) | evidence: FGSM | verdict FGSM | evidence: PGD | verdict PGD |",
        "|---|---|---|---|---|---|",
    ]
    for k, c in enumerate(claims, 1):
        cells = []
        for attack in ("fgsm", "pgd"):
            parts = c["evidence"][attack]
            cells.append("<br>".join(f"{p['quantity']}: {_interval(p)}" for p in parts))
            cells.append(VERDICT[c["verdict"][attack]])
        claim = c["claim"] + f" (Fig. {c['figure']})" + (f" - {c['note']}" if c.get("note") else "")
        row = [str(k), claim, *cells]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return lines


def _cell(runs: list[dict], key: str, digits: int = 3) -> str:
    """``key`` of one configuration: its value (one seed) or mean +- sd over the seeds."""
    if len(runs) == 1:
        return _f(runs[0][key], digits)
    mean, sd = mean_and_sd([r[key] for r in runs])
    return f"{mean:.{digits}f} +- {sd:.{digits}f}"


def _models_table(summary: dict) -> list[str]:
    first = summary["models"][0]
    lines = [
        "| model | method | skips | n | T (ours) | adv. training | seeds | train acc | clean | "
        f"clean, all {first['test_images']} | FGSM | PGD | mu | DFP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for base, runs in sorted(by_base(summary["models"]).items()):
        r0 = runs[0]
        cells = " | ".join(
            _cell(runs, key, digits)
            for key, digits in (
                ("train_acc", 3),
                ("clean_acc", 3),
                ("test_clean_acc", 3),
                ("fgsm_acc", 3),
                ("pgd_acc", 3),
                ("mutual_coherence", 3),
                ("deep_frame_potential", 5),
            )
        )
        lines.append(
            f"| {base} | {r0['method']} | {r0['skips']} | {r0['depth']} | {r0['iterations']} | "
            f"{r0['adversarial_training']} | {len(runs)} | {cells} |"
        )
    return lines


def _calls(summary: dict) -> str:
    """The training calls behind the wall time: how many, interrupted, uncounted models."""
    runs = summary["runs"]
    interrupted = sum(1 for r in runs if r.get("finished", True) is None)
    text = f"{len(runs)} call(s)"
    if interrupted:
        text += f", {interrupted} interrupted (counted up to its last finished model)"
    text += f"; jobs x threads: {sorted({(r['jobs'], r['threads_per_job']) for r in runs})}"
    missing = len(summary["models"]) - sum(r.get("trained_now", 0) for r in runs)
    if missing > 0:
        text += (
            f"; {missing} of the {len(summary['models'])} models were trained by calls that "
            "left no record of their wall time (the summed training time counts them)"
        )
    return text


def write_report(summary: dict, out: Path) -> str:
    """Write ``out/report.md`` from ``results.json``'s content and return its text."""
    p = summary["profile"]
    env = summary["environment"]
    seeds = summary["seeds"]
    first = summary["models"][0]
    eps = first["eps"]
    pgd = first["pgd"]
    minutes = summary["wall_seconds"] / 60
    lines = [
        f"# deepframe reproduction: profile `{p['name']}`",
        "",
        f"{p['note']}.",
        "",
        "The seed paper (Cazenavette, Murdock & Lucey, CVPR 2021) trains modified ResNets on "
        "CIFAR-10 to about 90% clean accuracy and attacks them with FGSM. What ran here is "
        "stated below; compare directions and sizes of effects, not the paper's numbers. "
        "**Iteration axes:** our T counts pursuit iterations after the feed-forward pass "
        "(T = 0 is the plain network); the paper counts the feed-forward pass as one "
        "iteration, so its T is ours plus one.",
        "",
        "## Claims",
        "",
        "Each claim is reduced to quantities that it says are positive, each with a 95% "
        "interval: for accuracies, "
        + (
            f"Student's t over the {len(seeds)} seeds of the per-seed value, never narrower "
            "than the score interval of the seed means (Wilson's interval of each accuracy, "
            "combined by MOVER)"
            if len(seeds) > 1
            else "the score interval of a combination of accuracies measured on "
            f"{first['eval_images']} images (one seed): Wilson's interval of each accuracy, "
            "combined by MOVER (Zou & Donner 2008; for a difference, Newcombe's method 10)"
        )
        + "; for Spearman's rank correlations the interval that inverts its law under a "
        "Gaussian copula (exact at small n, never a point at |r| = 1; 0 lies outside it "
        "exactly when the permutation test rejects; its p-value is in results.json). "
        "Supported: every interval "
        "above 0; contradicted: some interval below 0; otherwise inconclusive at this scale.",
        "",
        *claims_markdown(summary["claims"]),
        "",
        "## What was run",
        "",
        f"- data: {p['dataset']}, {first['train_images']} training images (class-stratified"
        f"{', random crop + flip' if p['augment'] else ''}), every final number on "
        f"{first['eval_images']} held-out images (class-stratified, the same for all models); "
        f"per-epoch log on the first {p['val_images']} of them; clean accuracy also on all "
        f"{first['test_images']} held-out images (column 'clean, all')",
        f"- architectures: 6n+2 ResNets (option-A shortcuts) with stage widths {p['widths']}, "
        f"batch norm {'on' if p['batchnorm'] else 'off'}, their chain twins (skips removed), "
        f"DenseNets with {list(p['densenet_layers'])} layers per stage (model selection)",
        f"- Fig. 5: feed-forward, n in {list(p['depths'])} (layers "
        f"{[6 * n + 2 for n in p['depths']]}); Figs. 6-10: n = {p['pursuit_depth']}, "
        f"T in {list(p['iterations'])} (paper's T {[t + 1 for t in p['iterations']]}); "
        "L-BP = `layered` and DP = `deep` on the chain twin, DP-res = `deep` on the ResNet",
        f"- training: {p['epochs']} epochs, batch {p['batch_size']}, {p['optimizer']} "
        f"lr {p['lr']} (momentum {p['momentum']}), weight decay {p['weight_decay']}, "
        f"schedule {p['schedule']}; seeds {seeds}",
        f"- baseline: the feed-forward ResNet n = {p['pursuit_depth']} with FGSM adversarial "
        f"training (random start, step 1.25 eps; Wong, Rice & Kolter 2020)",
        f"- attacks: FGSM (Eq. 19) and PGD (L-inf, {pgd['steps']} steps of "
        f"{pgd['step_size']:.4g}, random start) at eps = {p['eps']} ({eps:.4f}) in pixel "
        "units of [0, 1] images, white-box through every pursuit iteration",
        "- geometry: float64, exact structured computation on each trained model's "
        "dictionary (batch norm folded as the solver solves it in eval mode)",
        f"- model selection: minimum deep frame potential after {p['selection_steps']} Adam "
        f"steps (lr {p['selection_lr']}) from seeded random weights, no data",
        f"- models: {len(summary['models'])}; summed training time "
        f"{summary['train_seconds'] / 60:.1f} min; wall time of the training calls "
        f"{minutes:.1f} min ({_calls(summary)}), then "
        f"{summary['collect_seconds'] / 60:.1f} min to measure, select and report",
        f"- software and machine: deepframe {env['deepframe']}, torch {env['torch']}, numpy "
        f"{env['numpy']}, Python {env['python']}; {env['platform']}, {env['logical_cpus']} "
        f"logical CPUs, device {env['device']}",
        "",
        "## Models",
        "",
        *_models_table(summary),
        "",
        "## Figures",
        "",
        "![Fig. 5](fig5.png)",
        "",
        "![Fig. 6](fig6.png)",
        "",
        "![Fig. 7](fig7.png)",
        "",
        "![Fig. 8](fig8.png)",
        "",
        "![Fig. 9](fig9.png) ![Fig. 10](fig10.png)",
        "",
        "Geometry against robustness over all trained models (the claim that DFP and "
        "coherence predict robustness):",
        "",
        "![geometry vs robustness](fig_geometry_robustness.png)",
        "",
        "## Dataless model selection",
        "",
        "| architecture | atoms | initial DFP | minimum DFP | validation error |",
        "|---|---|---|---|---|",
    ]
    for e in summary["selection"]:
        lines.append(
            f"| {e['arch']} | {e['atoms']} | {e['initial_dfp']:.5g} | {e['min_dfp']:.5g} | "
            f"{e['val_error']:.3f} |"
        )
    lines += ["", "![model selection](fig_selection.png)", ""]
    text = "\n".join(lines) + "\n"
    atomic_write(Path(out) / "report.md", lambda f: f.write(text.encode()))
    return text
