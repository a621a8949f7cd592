"""The seed paper's claims, each with its measured evidence and a verdict.

Every claim is a list of *parts*, each a quantity that the claim says is
positive (a difference of accuracies, of reconstruction errors, of geometry,
or minus a rank correlation), with a 95% interval (:mod:`.stats`). A claim
is *supported* when every part's interval lies above zero, *contradicted*
when some part's interval lies below zero, and *inconclusive at this scale*
otherwise. Robustness claims get one verdict under FGSM (the paper's attack)
and one under PGD.

The claims are small functions in the string-keyed registry :data:`CLAIMS`
(as :data:`deepframe.solvers.SOLVERS`), keyed by claim id and in the order of
the report's table. Each is called as ``CLAIMS[id](results)`` with the
:class:`Results` of a run and returns the claim (its text, figure, evidence
and verdicts) or None when the profile lacks the models it compares;
:func:`claims_table` calls them in turn.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from .profiles import Profile, feedforward_base, pursuit_base
from .stats import Z95, Interval, combination, mean_and_sd, mean_interval, spearman, verdict

__all__ = ["CLAIMS", "Results", "claims_table", "by_base"]

ATTACKS = {"fgsm": "fgsm_acc", "pgd": "pgd_acc"}

ff, pursuit = feedforward_base, pursuit_base  # base names of the models


def by_base(records: list[dict]) -> dict[str, list[dict]]:
    """``{base name: [record per seed, sorted by seed]}``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["base"]].append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}


@dataclass(frozen=True)
class Results:
    """What every claim reads: a run's records, its model selection and its profile.

    Attributes
    ----------
    records : list of dict
        The ``"models"`` of ``results.json``.
    selection : list of dict
        The model-selection entries (minimum DFP and validation error).
    profile : Profile
        The profile the records come from.
    """

    records: list[dict]
    selection: list[dict]
    profile: Profile

    @cached_property
    def groups(self) -> dict[str, list[dict]]:
        """The records by base name (:func:`by_base`)."""
        return by_base(self.records)

    @property
    def depths(self) -> list[int]:
        """``n`` of the ResNets of Fig. 5, ascending."""
        return sorted(self.profile.depths)

    @property
    def n(self) -> int:
        """``n`` of the pursuit networks of Figs. 6-10."""
        return self.profile.pursuit_depth

    @property
    def ts(self) -> list[int]:
        """Our ``T > 0`` (pursuit iterations after the feed-forward pass), ascending."""
        return sorted(t for t in self.profile.iterations if t > 0)

    @property
    def t1(self) -> int:
        """The first ``T > 0``."""
        return self.ts[0]

    @property
    def t_max(self) -> int:
        """The last ``T``."""
        return self.ts[-1]


# --------------------------------------------------------------------------- evidence


def _acc(groups, base: str, key: str) -> tuple[list[float], int]:
    runs = groups[base]
    return [r[key] for r in runs], runs[0]["eval_images"]


def _combo(groups, key: str, *terms: tuple[float, str]) -> Interval:
    parts = []
    for c, base in terms:
        values, n = _acc(groups, base, key)
        parts.append((c, values, n))
    return combination(parts)


def _acc_difference(groups, key: str, a: str, b: str) -> tuple[str, Interval]:
    """The part ``acc(a) - acc(b)`` under the accuracy ``key``."""
    return f"acc({a}) - acc({b})", _combo(groups, key, (1, a), (-1, b))


def _part(text: str, interval: Interval) -> dict:
    return {"quantity": text, **interval.to_dict()}


def _robustness_claim(text, figure, build) -> dict:
    """A claim evaluated under each attack: ``build(key) -> [(quantity, Interval)]``."""
    evidence, verdicts = {}, {}
    for attack, key in ATTACKS.items():
        parts = build(key)
        evidence[attack] = [_part(q, iv) for q, iv in parts]
        verdicts[attack] = verdict([iv for _, iv in parts])
    return {"claim": text, "figure": figure, "evidence": evidence, "verdict": verdicts}


def _plain_claim(text, figure, parts, *, sign_only_ok=False, note="") -> dict:
    evidence = [_part(q, iv) for q, iv in parts]
    v = verdict([iv for _, iv in parts], sign_only_ok=sign_only_ok)
    out = {
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


def _negated(rho: Interval) -> Interval:
    """``-rho`` with its interval mirrored."""
    return Interval(
        -rho.value,
        None if rho.high is None else -rho.high,
        None if rho.low is None else -rho.low,
        rho.method,
    )


# --------------------------------------------------------------------------- the claims


def skips_feedforward(results: Results) -> dict:
    """Skip connections make (sufficiently deep) feed-forward networks more robust (Fig. 5).

    Evidence: the robust accuracy of the feed-forward ResNet minus that of
    its chain twin (same graph without skips) at the largest depth, under
    FGSM and under PGD.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    deep = results.depths[-1]
    resnet, chain = ff("resnet", deep), ff("chain", deep)
    return _robustness_claim(
        f"Skip connections make (sufficiently deep) feed-forward networks more robust: "
        f"ResNet minus chain twin at the largest depth (n = {deep}, {6 * deep + 2} layers)",
        "5",
        lambda key: [_acc_difference(results.groups, key, resnet, chain)],
    )


def deeper_residual(results: Results) -> dict | None:
    """Deeper residual networks are more robust (Fig. 5).

    Evidence: the robust accuracy of the deepest feed-forward ResNet minus
    that of the shallowest, under FGSM and under PGD; none when the profile
    trains one depth.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict or None
        The claim, or None with fewer than two depths.
    """
    depths = results.depths
    if len(depths) < 2:
        return None
    deep, shallow = ff("resnet", depths[-1]), ff("resnet", depths[0])
    return _robustness_claim(
        f"Deeper residual networks are more robust: ResNet n = {depths[-1]} minus n = {depths[0]}",
        "5",
        lambda key: [_acc_difference(results.groups, key, deep, shallow)],
    )


def dpres_beats_lbp(results: Results) -> dict:
    """DP-res beats L-BP almost immediately (Fig. 6).

    Evidence: the robust accuracy of DP-res (deep pursuit with skips) minus
    that of L-BP (layered pursuit) at the first ``T > 0``, under FGSM and
    under PGD.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    n, t1 = results.n, results.t1
    return _robustness_claim(
        f"DP-res beats L-BP almost immediately: DP-res minus L-BP at our T = {t1} "
        f"(paper's T = {t1 + 1})",
        "6",
        lambda key: [
            _acc_difference(results.groups, key, pursuit("dpres", n, t1), pursuit("lbp", n, t1))
        ],
    )


def dp_needs_iterations(results: Results) -> dict:
    """DP without skips needs more iterations (Fig. 6).

    Evidence: DP-res's gain in robust accuracy from ``T = 0`` to the first
    ``T > 0`` minus DP's (a difference of gains), and, when the profile runs
    more than one ``T > 0``, DP's gain from the first to the last ``T``.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    g, n, t1, t_max = results.groups, results.n, results.t1, results.t_max

    def parts(key):
        gains = (
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
        )
        later = [_acc_difference(g, key, pursuit("dp", n, t_max), pursuit("dp", n, t1))]
        return [gains] + (later if t_max > t1 else [])

    return _robustness_claim(
        f"DP without skips needs more iterations: its gain from T = 0 to T = {t1} is "
        f"smaller than DP-res's, and DP still gains from T = {t1} to T = {t_max}",
        "6",
        parts,
    )


def accuracy_after_convergence(results: Results) -> dict:
    """Robust accuracy keeps rising after training converges for pursuit; L-TP degrades (Fig. 7).

    Evidence, from the per-epoch training log at the last ``T``: for DP and
    L-BP, the validation robust accuracy at the last epoch minus at the
    epoch where training accuracy came within 0.02 of its final value; for
    the feed-forward chain (L-TP), the same difference negated.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    g, n, t_max, profile = results.groups, results.n, results.t_max, results.profile

    def parts(key):
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

    return _robustness_claim(
        "Adversarial accuracy keeps improving after training accuracy converges for "
        "pursuit (DP, L-BP), and degrades for L-TP",
        "7",
        parts,
    )


def reconstruction(results: Results) -> dict:
    """DP reconstructs better than L-BP, and skips better still (Fig. 8).

    Evidence: the per-image relative reconstruction error after the last
    ``T``, L-BP minus DP and DP minus DP-res, paired over the trace images
    (one seed) or over seeds.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    g, n, t_max = results.groups, results.n, results.t_max
    lbp, dp, dpres = (pursuit(m, n, t_max) for m in ("lbp", "dp", "dpres"))
    return _plain_claim(
        f"DP has lower reconstruction error than L-BP, and skips lower it further "
        f"(mean over nodes of ||r||^2/||target||^2 after the last of T = {t_max} iterations)",
        "8",
        [
            (f"err({lbp}) - err({dp})", _per_image_difference(g, lbp, dp)),
            (f"err({dp}) - err({dpres})", _per_image_difference(g, dp, dpres)),
        ],
    )


def geometry_lower_dpres(results: Results) -> dict:
    """The deep frame potential and the mutual coherence are lower for DP-res (Figs. 9, 10).

    Evidence: DP's and L-BP's DFP and mutual coherence minus DP-res's at
    every ``T > 0``; with one seed geometry has no sampling interval and the
    verdict reads the signs.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    g, n = results.groups, results.n
    parts = []
    for key, label in (("deep_frame_potential", "DFP"), ("mutual_coherence", "mu")):
        for t in results.ts:
            for other in ("dp", "lbp"):
                a, b = pursuit(other, n, t), pursuit("dpres", n, t)
                parts.append((f"{label}({a}) - {label}({b})", _geometry_difference(g, a, b, key)))
    one_seed = len(next(iter(g.values()))) < 2
    return _plain_claim(
        "The deep frame potential and the mutual coherence are lower for DP-res than "
        "for DP and L-BP at every T > 0",
        "9, 10",
        parts,
        sign_only_ok=one_seed,
        note="one seed: geometry has no sampling interval; the verdict uses the signs"
        if one_seed
        else "",
    )


def geometry_predicts_robustness(results: Results) -> dict:
    """DFP and mutual coherence predict adversarial robustness (Figs. 9, 10).

    Evidence: minus Spearman's rank correlation of each measure with the
    robust accuracy over every model without adversarial training, under
    FGSM and under PGD; the quantity says when most models share one
    accuracy (the correlation then rests on the others).

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict
        The claim.
    """
    models = [r for r in results.records if not r["adversarial_training"]]

    def parts(key):
        robust = [r[key] for r in models]
        tied = max(Counter(robust).values())
        # say when most models share one accuracy (e.g. 0 under PGD), so that the
        # reader sees the correlation rests on the others
        ties = f"; {tied} of {len(robust)} tied at one value" if 2 * tied > len(robust) else ""
        out = []
        for geo, label in (("deep_frame_potential", "DFP"), ("mutual_coherence", "mu")):
            rho = spearman([r[geo] for r in models], robust)
            out.append(
                (
                    f"-Spearman({label}, {key}) over {len(models)} trained models "
                    f"(rho = {rho.value:+.3f}{ties})",
                    _negated(rho),
                )
            )
        return out

    return _robustness_claim(
        "DFP and mutual coherence are good predictors of adversarial robustness: lower "
        "values go with higher robust accuracy (negative rank correlation)",
        "9, 10",
        parts,
    )


def dataless_selection(results: Results) -> dict | None:
    """A lower minimum deep frame potential goes with a lower trained error (Murdock & Lucey 2020).

    Evidence: Spearman's rank correlation of each feed-forward
    architecture's minimum DFP (no data) with its trained validation error;
    none with fewer than four architectures.

    Parameters
    ----------
    results : Results
        The run.

    Returns
    -------
    dict or None
        The claim, or None with fewer than four architectures.
    """
    selection = results.selection
    if len(selection) < 4:
        return None
    rho = spearman([s["min_dfp"] for s in selection], [s["val_error"] for s in selection])
    return _plain_claim(
        "Dataless model selection (Murdock & Lucey 2020): a lower minimum deep frame "
        "potential goes with a lower trained validation error (positive rank "
        f"correlation over {len(selection)} architectures)",
        "selection",
        [(f"Spearman(min DFP, val error) (rho = {rho.value:+.3f})", rho)],
    )


#: The claims by id, in the order of the report's table.
CLAIMS: dict[str, Callable[[Results], dict | None]] = {
    "skips-feedforward": skips_feedforward,
    "deeper-residual": deeper_residual,
    "dpres-beats-lbp": dpres_beats_lbp,
    "dp-needs-iterations": dp_needs_iterations,
    "accuracy-after-convergence": accuracy_after_convergence,
    "reconstruction": reconstruction,
    "geometry-lower-dpres": geometry_lower_dpres,
    "geometry-predicts-robustness": geometry_predicts_robustness,
    "dataless-selection": dataless_selection,
}


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

    Returns
    -------
    list of dict
        One entry per claim of :data:`CLAIMS` that the profile's models
        test: ``id``, ``claim``, ``figure``, ``evidence`` and ``verdict``
        (each ``{"fgsm": ..., "pgd": ...}``), and a ``note`` where one applies.
    """
    results = Results(records, selection, profile)
    table = []
    for cid, claim in CLAIMS.items():
        entry = claim(results)
        if entry is not None:
            table.append({"id": cid, **entry})
    return table
