"""Spearman's rank correlation of the claims table: value, p-value and interval at small n."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, permutation_test, rankdata, spearmanr

from deepframe.experiments.stats import spearman, spearman_p_value


def _cases():
    """Small samples (n = 3..8): random, perfect, reversed, tied."""
    rng = np.random.default_rng(3)
    cases = []
    for n in range(3, 9):
        x = rng.permutation(n).astype(float)
        cases += [
            (f"random-{n}", list(x), list(rng.permutation(n).astype(float))),
            (f"perfect-{n}", list(x), list(2 * x + 1)),
            (f"reversed-{n}", list(x), list(-x)),
            (f"tied-{n}", list(x), list(np.minimum(x, n // 2))),
        ]
    cases.append(("tied-both", [1, 1, 2, 3, 3, 4], [0, 0, 0, 1, 2, 2]))
    return cases


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, x, y", CASES, ids=IDS)
def test_spearman_value_is_scipys(name, x, y):
    assert math.isclose(spearman(x, y).value, spearmanr(x, y).statistic, abs_tol=1e-12)


def _brute_force_p(x, y):
    """Twice the smaller tail over all n! pairings: scipy's Pearson r of the mid-ranks."""
    r = spearmanr(x, y).statistic
    ry = rankdata(y)[np.array(list(itertools.permutations(range(len(y)))))]
    null = pearsonr(np.broadcast_to(rankdata(x), ry.shape), ry, axis=1).statistic
    above = np.mean(null >= r - 1e-9)
    below = np.mean(null <= r + 1e-9)
    return min(1.0, 2 * min(above, below))


@pytest.mark.parametrize("name, x, y", CASES, ids=IDS)
def test_p_value_is_the_exact_permutation_test(name, x, y):
    p = spearman_p_value(x, y)
    if len(x) <= 4:  # scipy's exact pairings enumerate (n!)^2 resamples: slow beyond
        expected = permutation_test(
            (rankdata(x), rankdata(y)),
            lambda a, b: spearmanr(a, b).statistic,
            permutation_type="pairings",
            n_resamples=math.inf,
        ).pvalue
    else:
        expected = _brute_force_p(x, y)
    assert math.isclose(p, expected, rel_tol=1e-9), (p, expected)


def test_p_value_beyond_exact_enumeration_is_scipys_monte_carlo():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(12)
    y = x + rng.standard_normal(12)
    p = spearman_p_value(x, y, draws=20_000)
    expected = permutation_test(
        (rankdata(x), rankdata(y)),
        lambda a, b: spearmanr(a, b).statistic,
        permutation_type="pairings",
        n_resamples=20_000,
        rng=1,
    ).pvalue
    assert abs(p - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000) + 1e-4


@pytest.mark.parametrize("n", range(3, 9))
@pytest.mark.parametrize("sign", [1, -1])
def test_perfect_rank_correlation_never_gets_a_point(n, sign):
    x = list(range(n))
    iv = spearman(x, [sign * v for v in x])
    assert iv.value == sign
    if sign > 0:
        assert iv.high == pytest.approx(1.0, abs=1e-6) and iv.low < 0.95
    else:
        assert iv.low == pytest.approx(-1.0, abs=1e-6) and iv.high > -0.95
    # a random pairing is perfect with probability 1/n!: the one-sided exact
    # test at 2.5% rejects from n = 5 on, and the interval says the same
    assert (sign * (iv.low if sign > 0 else iv.high) > 0) == (math.factorial(n) > 40)


@pytest.mark.parametrize("name, x, y", CASES, ids=IDS)
def test_zero_outside_the_interval_exactly_when_the_permutation_test_rejects(name, x, y):
    iv, p = spearman(x, y), spearman_p_value(x, y)
    if abs(p - 0.05) < 0.01:  # within the Monte Carlo error of the interval's ends
        pytest.skip("p at the 5% boundary")
    assert (iv.low > 0 or iv.high < 0) == (p <= 0.05)
    assert iv.low <= iv.high


def _tail(x, y, rho, upper, draws=40_000, seed=123):
    """P_rho(R >= r) (or <=) under the Gaussian copula, simulated independently of the library."""
    rng = np.random.default_rng(seed)
    n = len(x)
    cov = [[1, rho], [rho, 1]]
    z = rng.multivariate_normal([0, 0], cov, size=(draws, n))
    xs, ys = np.sort(rankdata(x)), np.sort(rankdata(y))
    sx = xs[rankdata(z[..., 0], axis=1, method="ordinal").astype(int) - 1]
    sy = ys[rankdata(z[..., 1], axis=1, method="ordinal").astype(int) - 1]
    sx = sx - sx.mean(axis=1, keepdims=True)
    sy = sy - sy.mean(axis=1, keepdims=True)
    r_sim = (sx * sy).sum(1) / np.sqrt((sx * sx).sum(1) * (sy * sy).sum(1))
    r = spearmanr(x, y).statistic
    return np.mean(r_sim >= r - 1e-9) if upper else np.mean(r_sim <= r + 1e-9)


@pytest.mark.parametrize(
    "x, y",
    [
        ([1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 5, 6]),  # r = 0.943, n = 6
        ([1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1]),  # r = -1
        ([0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.8, 0.6], [0, 0, 0, 0, 0, 0.1, 0.3, 0.2]),  # ties
    ],
)
def test_interval_ends_have_the_stated_tail_probability(x, y):
    """At each end inside (-1, 1) the tail at the observed r is 2.5% (independent simulation)."""
    iv = spearman(x, y)
    for end, upper in ((iv.low, True), (iv.high, False)):
        if abs(end) > 0.999:
            continue
        rho = 2 * math.sin(math.pi * end / 6)  # the copula's correlation of rank correlation `end`
        tail = _tail(x, y, rho, upper)
        assert abs(tail - 0.025) < 4 * math.sqrt(0.025 * 0.975 / 40_000) + 0.003, (end, tail)


def test_coverage_at_small_n():
    """Under a Gaussian copula with rho_s = 0.8 and n = 6 the interval covers >= ~95%."""
    rng = np.random.default_rng(7)
    rho_s = 0.8
    rho = 2 * math.sin(math.pi * rho_s / 6)
    trials, covered = 200, 0
    for _ in range(trials):
        z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=6)
        iv = spearman(np.exp(z[:, 0]), z[:, 1] ** 3, draws=4000)  # monotone maps: same copula
        covered += iv.low <= rho_s <= iv.high
    assert covered / trials >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / trials)


def test_deterministic_and_seeded():
    x, y = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert spearman(x, y) == spearman(x, y)
    assert spearman(x, y).method == spearman(x, y).method


@pytest.mark.parametrize("x, y", [([1, 1, 1, 1], [1, 2, 3, 4]), ([1, 2, 3, 4, 5], [2, 2, 2, 2, 2])])
def test_constant_data_has_no_spearman_and_no_warning(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iv = spearman(x, y)
    assert math.isnan(iv.value) and iv.low is None and iv.high is None
    assert iv.method == "constant data"
    with pytest.raises(ValueError, match="constant data"):
        spearman_p_value(x, y)


def test_too_few_pairs_and_unequal_lengths():
    iv = spearman([1, 2], [2, 1])
    assert iv.low is None and "n = 2" in iv.method
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2, 3], [1, 2])


@pytest.mark.parametrize("profile", ["quick", "cifar-small"])
def test_committed_claims_are_what_the_library_computes(profile, tmp_path):
    """analysis/rejudge.py on a copy of a committed run gives back its claims and figures."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    committed = root / "docs" / "results" / profile / "results.json"
    shutil.copy(committed, tmp_path / "results.json")
    subprocess.run(
        [sys.executable, str(root / "analysis" / "rejudge.py"), str(tmp_path)],
        check=True,
        env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(root)},
        capture_output=True,
    )
    old, new = (
        json.loads(committed.read_text()),
        json.loads((tmp_path / "results.json").read_text()),
    )
    assert new["claims"] == old["claims"]
    assert new["figures"] == old["figures"]
