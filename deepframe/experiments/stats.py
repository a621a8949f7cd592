"""Intervals for the claims table: 95% intervals of accuracies, differences and rank correlations.

Conventions (written in every report):

- One seed: an accuracy measured on ``n`` images is a binomial proportion;
  its interval is Wilson's. A linear combination ``L = sum_i c_i p_i`` of
  accuracies of different models (a difference, a difference of gains) gets
  the MOVER interval built from the Wilson intervals ``[l_i, u_i]`` (Zou &
  Donner 2008; for a difference of two it is Newcombe's 1998 hybrid score
  interval, his method 10)::

      low  = L - sqrt(sum_{c_i > 0} c_i^2 (p_i - l_i)^2 + sum_{c_i < 0} c_i^2 (u_i - p_i)^2)
      high = L + sqrt(sum_{c_i > 0} c_i^2 (u_i - p_i)^2 + sum_{c_i < 0} c_i^2 (p_i - l_i)^2)

  Models are treated as independent (on the same images this is
  conservative when their errors are positively correlated). Unlike the
  Wald interval it does not collapse to a point when accuracies are 0 or 1
  (an undefended network under PGD): two models at 0 of 1,000 differ by 0
  with the interval [-0.0038, +0.0038], not [0, 0].
- Several seeds: the combination is computed per seed and the interval is
  Student's t over seeds (mean +- t_{0.975, s-1} sd / sqrt(s)), but never
  narrower on either side than the one-seed interval above of the seed means
  (each ``p_i`` then counts ``s n_i`` images): with few seeds the sample sd
  can be near zero by chance (two seeds that happen to agree).
- Spearman's rank correlation ``r``: the interval inverts the distribution of
  ``r`` under a Gaussian copula (:func:`spearman`): exact, up to Monte Carlo
  error, at every ``n >= 3``, and never of zero width at ``|r| = 1``; 0 lies
  outside it exactly when the permutation test rejects. With the p-value of
  that test (exact for ``n <= 8``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "Z95",
    "Interval",
    "wilson",
    "combination",
    "mean_and_sd",
    "mean_interval",
    "spearman",
    "spearman_p_value",
    "verdict",
]

#: The 0.975 quantile of the standard normal distribution (two-sided 95%).
Z95 = 1.959963984540054


class Interval(tuple):
    """``(value, low, high)`` of a 95% interval; ``low``/``high`` None when there is none."""

    def __new__(cls, value: float, low: float | None, high: float | None, method: str = ""):
        self = super().__new__(cls, (float(value), low, high))
        self.method = method
        return self

    @property
    def value(self) -> float:
        return self[0]

    @property
    def low(self) -> float | None:
        return self[1]

    @property
    def high(self) -> float | None:
        return self[2]

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "method": self.method}

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.value:+.3f} (no interval)"
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def wilson(p: float, n: int) -> Interval:
    """Wilson's 95% interval of a proportion ``p`` measured on ``n`` trials."""
    if n <= 0:
        return Interval(p, None, None, "no trials")
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # The interval holds p and lies in [0, 1]; at p = 0 or 1 one end is p itself,
    # which the two roundings above miss by up to an ulp (e.g. 2e-19 above 0).
    low, high = max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
    return Interval(p, low, high, "Wilson")


def _t_quantile(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_and_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation ``sqrt(sum_i (v_i - mean)^2 / (n - 1))``.

    Sums with :func:`math.fsum`. Needs at least two values.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        raise ValueError(f"a sample standard deviation needs two values or more, got {n}")
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and Student's t 95% interval over repeated runs (None with one run)."""
    values = [float(v) for v in values]
    s = len(values)
    if s < 2:
        return Interval(math.fsum(values) / s, None, None, "one run")
    mean, sd = mean_and_sd(values)
    half = _t_quantile(s - 1) * sd / math.sqrt(s)
    return Interval(mean, mean - half, mean + half, f"t over {s} seeds")


def combination(terms: Sequence[tuple[float, Sequence[float], int]]) -> Interval:
    """Interval of ``sum_i c_i p_i`` for accuracies ``p_i`` given per seed.

    One seed: the MOVER interval from Wilson intervals (module docstring);
    several: Student's t over the seeds, floored by that interval of the seed
    means.

    Parameters
    ----------
    terms : sequence of ``(c_i, [p_i per seed], n_i)``
        Coefficient, the accuracy of each seed (the same seeds, in the same
        order, for every term) and the number of images it was measured on.
    """
    seeds = {len(p) for _, p, _ in terms}
    if len(seeds) != 1:
        raise ValueError(f"every term needs the same seeds, got counts {sorted(seeds)}")
    (count,) = seeds
    pooled = [(c, math.fsum(p) / count, n * count) for c, p, n in terms]
    score = _mover_wilson(pooled)
    if count >= 2:
        per_seed = [math.fsum(c * p[s] for c, p, _ in terms) for s in range(count)]
        t = mean_interval(per_seed)
        below = max(t.value - t.low, score.value - score.low)
        above = max(t.high - t.value, score.high - score.value)
        return Interval(t.value, t.value - below, t.value + above, f"t over {count} seeds")
    return score


def _mover_wilson(terms: Sequence[tuple[float, float, int]]) -> Interval:
    """``sum_i c_i p_i`` with the MOVER interval of the Wilson intervals of the ``p_i``."""
    value = math.fsum(c * p for c, p, _ in terms)
    below, above = [], []
    for c, p, n in terms:
        iv = wilson(p, n)
        down, up = c * (p - iv.low), c * (iv.high - p)
        below.append(down * down if c >= 0 else up * up)
        above.append(up * up if c >= 0 else down * down)
    low, high = value - math.sqrt(math.fsum(below)), value + math.sqrt(math.fsum(above))
    return Interval(value, low, high, "Wilson/MOVER (one seed)")


#: Monte Carlo draws of :func:`spearman`'s interval (the tail probabilities at
#: its ends have a standard error of about ``sqrt(0.025 * 0.975 / draws)``).
SPEARMAN_DRAWS = 20_000

#: Largest ``n`` whose ``n!`` pairings :func:`spearman_p_value` enumerates.
EXACT_PERMUTATIONS_UP_TO = 8


def _spearman_ranks(x: Sequence[float], y: Sequence[float]):
    """Mid-ranks of ``x`` and ``y`` (ties share their mean rank), after the checks."""
    from scipy.stats import rankdata

    n = len(x)
    if n != len(y):
        raise ValueError(f"x and y differ in length: {n} vs {len(y)}")
    return rankdata(x), rankdata(y)


def _pearson_rows(a, b):
    """Pearson's correlation of ``a`` and ``b`` along their last axis (broadcast), an array."""
    import numpy as np

    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))


def spearman_p_value(
    x: Sequence[float], y: Sequence[float], *, draws: int = SPEARMAN_DRAWS, seed: int = 0
) -> float:
    """Two-sided permutation p-value of Spearman's rank correlation of ``x`` and ``y``.

    Under independence every pairing of the ``x`` with the ``y`` is equally
    likely; the p-value is twice the smaller tail probability, tails
    included, of the observed ``r`` over the pairings (at most 1), with ties
    kept as mid-ranks: what ``scipy.stats.permutation_test(...,
    permutation_type="pairings")`` computes. Exact (all ``n!`` pairings) for
    ``n <= 8`` (:data:`EXACT_PERMUTATIONS_UP_TO`); beyond, ``draws`` random
    pairings drawn with ``seed``, the observed one counted among them
    (``(k + 1) / (draws + 1)``, as scipy does). At ``n = 4`` even a perfect
    rank correlation has p = 2/24 = 0.083.

    Raises ``ValueError`` for ``n < 3`` and for constant data (no ranks).
    """
    import itertools

    import numpy as np

    rx, ry = _spearman_ranks(x, y)
    n = len(rx)
    if n < 3 or len(set(rx)) == 1 or len(set(ry)) == 1:
        raise ValueError(f"no Spearman correlation to test: n = {n} or constant data")
    r = _pearson_rows(rx, ry)
    tol = 1e-9 * n  # a pairing's r equal to the observed one, up to rounding
    if n <= EXACT_PERMUTATIONS_UP_TO:
        null = _pearson_rows(rx, ry[np.array(list(itertools.permutations(range(n))))])
        above, below = np.mean(null >= r - tol), np.mean(null <= r + tol)
    else:
        rng = np.random.default_rng(seed)
        null = _pearson_rows(rx, rng.permuted(np.tile(ry, (draws, 1)), axis=1))
        above = (np.sum(null >= r - tol) + 1) / (draws + 1)
        below = (np.sum(null <= r + tol) + 1) / (draws + 1)
    return float(min(1.0, 2 * min(above, below)))


def spearman(
    x: Sequence[float], y: Sequence[float], *, draws: int = SPEARMAN_DRAWS, seed: int = 0
) -> Interval:
    """Spearman's rank correlation ``r`` with a 95% interval that is exact under a Gaussian copula.

    ``r`` is Pearson's correlation of the mid-ranks (``scipy.stats.spearmanr``).
    The interval is the Neyman (test-inversion) interval of the rank
    correlation ``rho_s = (6 / pi) asin(rho / 2)`` of a Gaussian copula with
    correlation ``rho`` (a bivariate normal seen through any increasing maps
    of its two coordinates): every ``rho_s`` that neither tail at the
    observed ``r``, tails included, rejects at 2.5%,

        P_rho(R >= r) > 0.025   and   P_rho(R <= r) > 0.025,

    the discrete analogue of the Clopper-Pearson interval. ``R``
    is the rank correlation of ``n`` pairs drawn from the copula whose values
    are the observed ``x`` and ``y`` assigned in the order of the draws, so
    ties in the data are tied in every draw; the tail probabilities are
    estimated from ``draws`` samples drawn with ``seed`` (common random
    numbers for every ``rho``) and the ends found by bisection in ``rho``.

    Properties: the coverage is at least 95% at every ``n >= 3`` when the
    copula holds, up to the Monte Carlo error of the tails (standard error
    ``sqrt(0.025 * 0.975 / draws)``, 0.0011 at the default); at
    ``rho = 0`` the law of ``R`` is the permutation distribution, so 0 lies
    outside the interval exactly when the one-sided permutation test at
    2.5% rejects (:func:`spearman_p_value`, reported in ``method``); a
    perfect correlation gets ``[low, 1]`` with ``P_low(R = 1) = 0.025``,
    never a point (e.g. low < 0 at ``n = 4``, where a random pairing is
    perfect with probability 1/24). The Fisher-z interval with the
    Bonett-Wright variance ``(1 + r^2 / 2) / (n - 3)`` (Bonett & Wright
    2000), used before, is a large-sample approximation: it collapses to
    ``[1, 1]`` at ``|r| = 1`` and needs ``n >= 4``; bootstrap intervals
    collapse there too (every resample of a monotone sample is monotone).

    Limits: the interval is for the copula's rank correlation, which is
    that of the data only if the dependence is Gaussian-copula shaped (the
    model behind Fisher's z too); with many ties it is for the untied
    latent ranks, so it may lie above a sample ``r`` that ties attenuate.
    Its verdict at 0 needs no model (the permutation test).

    Parameters
    ----------
    x, y : sequence of float
        Paired values, ``n >= 3`` of them.
    draws : int
        Monte Carlo draws per tail probability.
    seed : int
        Seed of the draws (the result is deterministic).

    Returns
    -------
    Interval
        ``r`` with the interval; no interval (value NaN) for ``n < 3`` or
        constant data.

    References
    ----------
    Neyman (1937); Clopper & Pearson (1934); Kruskal (1958) for
    ``rho_s = (6 / pi) asin(rho / 2)``; Bonett & Wright (2000), Psychometrika
    65, 23-28.
    """
    import numpy as np

    rx, ry = _spearman_ranks(x, y)
    n = len(rx)
    if n < 3:
        return Interval(float("nan"), None, None, f"n = {n} < 3")
    if len(set(rx)) == 1 or len(set(ry)) == 1:  # no ranks to correlate
        return Interval(float("nan"), None, None, "constant data")
    r = float(_pearson_rows(rx, ry[None, :])[0])
    p = spearman_p_value(rx, ry, draws=draws, seed=seed)

    rng = np.random.default_rng(seed)
    first, noise = rng.standard_normal((2, draws, n))
    # order each draw by its first coordinate: the sorted x ranks are then its x values
    order = np.argsort(first, axis=1)
    first = np.take_along_axis(first, order, axis=1)
    noise = np.take_along_axis(noise, order, axis=1)
    xs, ys = np.sort(rx), np.sort(ry)
    tol = 1e-9 * n  # r of a draw equal to the observed one, up to rounding

    def sample_r(rho: float):
        second = rho * first + math.sqrt(max(0.0, 1 - rho * rho)) * noise
        return _pearson_rows(xs, ys[np.argsort(np.argsort(second, axis=1), axis=1)])

    def end(tail, inside_at: float) -> float:
        """Where ``tail(rho)`` crosses 0.025, from outside (``-inside_at``) to inside."""
        outside = -inside_at
        if tail(sample_r(outside)) > 0.025:
            return outside
        for _ in range(20):
            mid = (outside + inside_at) / 2
            if tail(sample_r(mid)) > 0.025:
                inside_at = mid
            else:
                outside = mid
        return (outside + inside_at) / 2

    low = end(lambda s: float(np.mean(s >= r - tol)), 1.0)
    high = end(lambda s: float(np.mean(s <= r + tol)), -1.0)
    to_rank = lambda rho: 6 / math.pi * math.asin(rho / 2)  # noqa: E731
    exact = "exact" if n <= EXACT_PERMUTATIONS_UP_TO else f"{draws} draws"
    return Interval(
        r, to_rank(low), to_rank(high), f"Gaussian-copula inversion, n = {n}; p = {p:.3g} ({exact})"
    )


def verdict(intervals: Sequence[Interval], *, sign_only_ok: bool = False) -> str:
    """``"supported"``, ``"contradicted"`` or ``"inconclusive"`` for parts that should be > 0.

    Supported when every part's interval lies above 0; contradicted when some
    part's interval lies below 0; otherwise inconclusive. Parts without an
    interval count by their sign only when ``sign_only_ok`` (deterministic
    quantities of a single run); else they make the verdict inconclusive.
    """
    above, below = [], []
    for iv in intervals:
        if iv.low is None:
            if not sign_only_ok or not math.isfinite(iv.value):
                above.append(False)
                below.append(False)
                continue
            above.append(iv.value > 0)
            below.append(iv.value < 0)
        else:
            above.append(iv.low > 0)
            below.append(iv.high < 0)
    if intervals and all(above):
        return "supported"
    if any(below):
        return "contradicted"
    return "inconclusive"
