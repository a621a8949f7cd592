"""The seed paper's claims, each with its measured evidence and a verdict.

Every claim is a list of *parts*, each a quantity that the claim says is
positive (a difference of accuracies, of reconstruction errors, of geometry,
or minus a rank correlation), with a 95% interval (:mod:`.stats`). A claim
is *supported* when every part's interval lies above zero, *contradicted*
when some part's interval lies below zero, and *inconclusive at this scale*
otherwise. Robustness claims get one verdict under FGSM (the paper's attack)
and one under PGD.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from .profiles import Profile, feedforward_base, pursuit_base
from .stats import Z95, Interval, combination, mean_and_sd, mean_interval, spearman, verdict

__all__ = ["claims_table", "by_base"]

ATTACKS = {"fgsm": "fgsm_acc", "pgd": "pgd_acc"}


def by_base(records: list[dict]) -> dict[str, list[dict]]:
    """``{base name: [record per seed, sorted by seed]}``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["base"]].append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


def _acc(groups, base: str, key: str) -> tuple[list[float], int]:
    runs = groups[base]
    return [r[key] for r in runs], runs[0]["eval_images"]


def _combo(groups, key: str, *terms: tuple[float, str]) -> Interval:
    parts = []
    for c, base in terms:
        values, n = _acc(groups, base, key)
        parts.append((c, values, n))
    return combination(parts)


def _part(text: str, interval: Interval) -> dict:
    return {"quantity": text, **interval.to_dict()}


def _robustness_claim(cid, text, figure, build) -> dict:
    """A claim evaluated under each attack: ``build(key) -> [(quantity, Interval)]``."""
    evidence, verdicts = {}, {}
    for attack, key in ATTACKS.items():
        parts = build(key)
        evidence[attack] = [_part(q, iv) for q, iv in parts]
        verdicts[attack] = verdict([iv for _, iv in parts])
    return {"id": cid, "claim": text, "figure": figure, "evidence": evidence, "verdict": verdicts}


def _plain_claim(cid, text, figure, parts, *, sign_only_ok=False, note="") -> dict:
    evidence = [_part(q, iv) for q, iv in parts]
    v = verdict([iv for _, iv in parts], sign_only_ok=sign_only_ok)
    out = {
        "id": cid,
        "claim": text,
        "figure": figure,
        "evidence": {"fgsm": evidence, "pgd": evidence},
        "verdict": {"fgsm": v, "pgd": v},
    }
    if note:
        out["note"] = note
    return out


def _converged_epoch(curve: list[dict], tolerance: float = 0.02) -> int:
    """First epoch (1-based) whose training accuracy is within ``tolerance`` of the last."""
    final = curve[-1]["train_acc"]
    for record in curve:
        if record["train_acc"] >= final - tolerance:
            return int(record["epoch"])
    return int(curve[-1]["epoch"])


def _after_convergence(groups, base: str, key: str, sign: float, n_val: int) -> Interval:
    """``sign * (robust acc at the last epoch - at the convergence epoch)`` over seeds."""
    firsts, lasts = [], []
    for r in groups[base]:
        curve = r["curve"]
        e = _converged_epoch(curve)
        if e == int(curve[-1]["epoch"]):
            return Interval(0.0, None, None, "training accuracy converged only at the last epoch")
        first = {int(c["epoch"]): c for c in curve}[e].get(key)
        last = curve[-1].get(key)
        if first is None or last is None:
            return Interval(float("nan"), None, None, f"{key} not logged")
        firsts.append(first)
        lasts.append(last)
    return combination([(sign, lasts, n_val), (-sign, firsts, n_val)])


def _per_image_difference(groups, a: str, b: str) -> Interval:
    """Mean over images of ``error(a) - error(b)`` at the last iteration (paired)."""
    per_seed = []
    for ra, rb in zip(groups[a], groups[b]):
        ea = ra["trace"]["final_error_per_image"]
        eb = rb["trace"]["final_error_per_image"]
        per_seed.append([x - y for x, y in zip(ea, eb)])
    if len(per_seed) >= 2:
        return mean_interval([math.fsum(d) / len(d) for d in per_seed])
    d = per_seed[0]
    n = len(d)
    if n < 2:
        return Interval(math.fsum(d) / n, None, None, "one image")
    mean, sd = mean_and_sd(d)
    half = Z95 * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, f"paired over {n} images (one seed)")


def _geometry_difference(groups, a: str, b: str, key: str) -> Interval:
    """``key(a) - key(b)`` over seeds (t interval), or the sign alone for one seed."""
    values = [ra[key] - rb[key] for ra, rb in zip(groups[a], groups[b])]
    return mean_interval(values)


def claims_table(records: list[dict], selection: list[dict], profile: Profile) -> list[dict]:
    """The claims of the seed paper (and of Murdock & Lucey 2020) against ``records``.

    Parameters
    ----------
    records : list of dict
        The ``"models"`` of ``results.json``.
    selection : list of dict
        The model-selection entries (minimum DFP and validation error).
    profile : Profile
        The profile the records come from.
    """
    g = by_base(records)
    ff, pursuit = feedforward_base, pursuit_base  # base names of the models
    depths = sorted(profile.depths)
    n = profile.pursuit_depth
    ts = sorted(t for t in profile.iterations if t > 0)
    t1, t_max = ts[0], ts[-1]
    out = []

    deep = depths[-1]
    out.append(
        _robustness_claim(
            "skips-feedforward",
            f"Skip connections make (sufficiently deep) feed-forward networks more robust: "
            f"ResNet minus chain twin at the largest depth (n = {deep}, {6 * deep + 2} layers)",
            "5",
            lambda key: [
                (
                    f"acc({ff('resnet', deep)}) - acc({ff('chain', deep)})",
                    _combo(
                        g,
                        key,
                        (1, ff("resnet", deep)),
                        (-1, ff("chain", deep)),
                    ),
                )
            ],
        )
    )
    if len(depths) >= 2:
        out.append(
            _robustness_claim(
                "deeper-residual",
                f"Deeper residual networks are more robust: ResNet n = {depths[-1]} minus "
                f"n = {depths[0]}",
                "5",
                lambda key: [
                    (
                        f"acc({ff('resnet', depths[-1])}) - acc({ff('resnet', depths[0])})",
                        _combo(
                            g,
                            key,
                            (1, ff("resnet", depths[-1])),
                            (-1, ff("resnet", depths[0])),
                        ),
                    )
                ],
            )
        )
    out.append(
        _robustness_claim(
            "dpres-beats-lbp",
            f"DP-res beats L-BP almost immediately: DP-res minus L-BP at our T = {t1} "
            f"(paper's T = {t1 + 1})",
            "6",
            lambda key: [
                (
                    f"acc({pursuit('dpres', n, t1)}) - acc({pursuit('lbp', n, t1)})",
                    _combo(g, key, (1, pursuit("dpres", n, t1)), (-1, pursuit("lbp", n, t1))),
                )
            ],
        )
    )
    out.append(
        _robustness_claim(
            "dp-needs-iterations",
            f"DP without skips needs more iterations: its gain from T = 0 to T = {t1} is "
            f"smaller than DP-res's, and DP still gains from T = {t1} to T = {t_max}",
            "6",
            lambda key: (
                [
                    (
                        f"[acc({pursuit('dpres', n, t1)}) - acc({pursuit('dpres', n, 0)})] - "
                        f"[acc({pursuit('dp', n, t1)}) - acc({pursuit('dp', n, 0)})]",
                        _combo(
                            g,
                            key,
                            (1, pursuit("dpres", n, t1)),
                            (-1, pursuit("dpres", n, 0)),
                            (-1, pursuit("dp", n, t1)),
                            (1, pursuit("dp", n, 0)),
                        ),
                    ),
                ]
                + (
                    [
                        (
                            f"acc({pursuit('dp', n, t_max)}) - acc({pursuit('dp', n, t1)})",
                            _combo(
                                g,
                                key,
                                (1, pursuit("dp", n, t_max)),
                                (-1, pursuit("dp", n, t1)),
                            ),
                        )
                    ]
                    if t_max > t1
                    else []
                )
            ),
        )
    )

    def curve_parts(key):
        log_key = {"fgsm_acc": "val_fgsm_acc", "pgd_acc": "val_pgd_acc"}[key]
        n_val = profile.val_images if key == "fgsm_acc" else profile.curve_pgd_images
        return [
            (
                f"{label}: robust acc at the last epoch minus at the epoch where training "
                "accuracy came within 0.02 of its final value",
                _after_convergence(g, name, log_key, +1, n_val),
            )
            for label, name in (
                ("DP", pursuit("dp", n, t_max)),
                ("L-BP", pursuit("lbp", n, t_max)),
            )
        ] + [
            (
                "L-TP: robust acc at that epoch minus at the last epoch (it degrades)",
                _after_convergence(g, ff("chain", n), log_key, -1, n_val),
            )
        ]

    out.append(
        _robustness_claim(
            "accuracy-after-convergence",
            "Adversarial accuracy keeps improving after training accuracy converges for "
            "pursuit (DP, L-BP), and degrades for L-TP",
            "7",
            curve_parts,
        )
    )
    out.append(
        _plain_claim(
            "reconstruction",
            f"DP has lower reconstruction error than L-BP, and skips lower it further "
            f"(mean over nodes of ||r||^2/||target||^2 after the last of T = {t_max} iterations)",
            "8",
            [
                (
                    f"err({pursuit('lbp', n, t_max)}) - err({pursuit('dp', n, t_max)})",
                    _per_image_difference(g, pursuit("lbp", n, t_max), pursuit("dp", n, t_max)),
                ),
                (
                    f"err({pursuit('dp', n, t_max)}) - err({pursuit('dpres', n, t_max)})",
                    _per_image_difference(g, pursuit("dp", n, t_max), pursuit("dpres", n, t_max)),
                ),
            ],
        )
    )
    geometry_parts = []
    for key, label in (("deep_frame_potential", "DFP"), ("mutual_coherence", "mu")):
        for t in ts:
            for other in ("dp", "lbp"):
                geometry_parts.append(
                    (
                        f"{label}({pursuit(other, n, t)}) - {label}({pursuit('dpres', n, t)})",
                        _geometry_difference(g, pursuit(other, n, t), pursuit("dpres", n, t), key),
                    )
                )
    one_seed = len(next(iter(g.values()))) < 2
    out.append(
        _plain_claim(
            "geometry-lower-dpres",
            "The deep frame potential and the mutual coherence are lower for DP-res than "
            "for DP and L-BP at every T > 0",
            "9, 10",
            geometry_parts,
            sign_only_ok=one_seed,
            note="one seed: geometry has no sampling interval; the verdict uses the signs"
            if one_seed
            else "",
        )
    )

    models = [r for r in records if not r["adversarial_training"]]

    def predictor_parts(key):
        parts = []
        robust = [r[key] for r in models]
        tied = max(Counter(robust).values())
        # Fisher's z assumes few ties; say when most models share one accuracy (e.g. 0
        # under PGD), so that the reader sees the correlation rests on the others
        ties = f"; {tied} of {len(robust)} tied at one value" if 2 * tied > len(robust) else ""
        for geo, label in (("deep_frame_potential", "DFP"), ("mutual_coherence", "mu")):
            rho = spearman([r[geo] for r in models], robust)
            parts.append(
                (
                    f"-Spearman({label}, {key}) over {len(models)} trained models "
                    f"(rho = {rho.value:+.3f}{ties})",
                    Interval(
                        -rho.value,
                        None if rho.high is None else -rho.high,
                        None if rho.low is None else -rho.low,
                        rho.method,
                    ),
                )
            )
        return parts

    out.append(
        _robustness_claim(
            "geometry-predicts-robustness",
            "DFP and mutual coherence are good predictors of adversarial robustness: lower "
            "values go with higher robust accuracy (negative rank correlation)",
            "9, 10",
            predictor_parts,
        )
    )
    if len(selection) >= 4:
        rho = spearman([s["min_dfp"] for s in selection], [s["val_error"] for s in selection])
        out.append(
            _plain_claim(
                "dataless-selection",
                "Dataless model selection (Murdock & Lucey 2020): a lower minimum deep frame "
                "potential goes with a lower trained validation error (positive rank "
                f"correlation over {len(selection)} architectures)",
                "selection",
                [(f"Spearman(min DFP, val error) (rho = {rho.value:+.3f})", rho)],
            )
        )
    return out
