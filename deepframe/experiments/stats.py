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
- Spearman's rank correlation: Fisher's z with the Bonett-Wright variance
  ``(1 + r^2 / 2) / (n - 3)``.
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


def spearman(x: Sequence[float], y: Sequence[float]) -> Interval:
    """Spearman's rank correlation with a Fisher-z (Bonett-Wright) 95% interval."""
    from scipy.stats import spearmanr

    n = len(x)
    if n != len(y):
        raise ValueError(f"x and y differ in length: {n} vs {len(y)}")
    if n < 4:
        return Interval(float("nan"), None, None, f"n = {n} < 4")
    if len(set(x)) == 1 or len(set(y)) == 1:  # no ranks to correlate
        return Interval(float("nan"), None, None, "constant data")
    r = float(spearmanr(x, y).statistic)
    if not math.isfinite(r):
        return Interval(r, None, None, "constant data")
    r_clip = max(min(r, 1 - 1e-12), -1 + 1e-12)
    z = math.atanh(r_clip)
    half = Z95 * math.sqrt((1 + r_clip * r_clip / 2) / (n - 3))
    low, high = math.tanh(z - half), math.tanh(z + half)
    return Interval(r, min(low, r), max(high, r), f"Fisher z, n = {n}")


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
