"""The hand-written networks of analysis/bench.py compute what deepframe computes.

The benchmark's ratios mean something only if its floor (a minimal hand-written
pursuit) and its plain network do the same arithmetic as the compiled solver:
checked here in float64.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import deepframe as df

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _analysis_script(name: str):
    """The module of ``analysis/<name>.py`` (a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "analysis", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _analysis_script("bench")


@pytest.mark.parametrize("skips", [True, False])
@pytest.mark.parametrize("method", ["feedforward", "deep", "layered"])
def test_floor_and_plain_networks_equal_the_compiled_solver(bench, method, skips):
    g = df.resnet((3, 12, 12), 1, widths=(4, 6, 8), bias=0.05, skips=skips)
    iterations = 0 if method == "feedforward" else 3
    net = df.compile(g, method=method, iterations=iterations, dtype=torch.float64).eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(bench.Floor(net)(x), want, rtol=1e-10, atol=1e-12)
        if method == "feedforward":
            torch.testing.assert_close(bench.PlainNet(net)(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [False, True])
def test_plain_network_with_batch_norm_equals_the_compiled_feedforward(bench, training):
    g = df.resnet((3, 12, 12), 1, widths=(4, 6, 8), bias=0.05, batchnorm=True)
    net = df.compile(g, method="feedforward", dtype=torch.float64).train(training)
    plain = bench.PlainNet(net).train(training)
    with torch.no_grad():  # the plain network has its own scales: give both the same
        for (_, scale), j in zip(net.bn_scale.items(), plain.bn, strict=True):
            scale.uniform_(0.5, 1.5)
            plain.bn[j][0].copy_(scale)
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=1e-12, atol=1e-12)


def test_floor_refuses_what_it_does_not_implement(bench):
    g = df.resnet((3, 8, 8), 1, widths=(4, 6), batchnorm=True)
    with pytest.raises(ValueError, match="batch norm"):
        bench.Floor(df.compile(g, method="deep", iterations=2))
    with pytest.raises(ValueError, match="alpha"):
        bench.Floor(df.compile(df.resnet((3, 8, 8), 1), method="deep", iterations=2, alpha=0.5))


def test_targets_are_read_from_the_rows(bench):
    rows = [
        {
            "section": "solvers",
            "graph": "g",
            "batch": 8,
            "method": "DP",
            "T": 5,
            "x_floor": 1.01,
            "x_plain": 11.0,
        },
        {
            "section": "solvers",
            "graph": "g",
            "batch": 8,
            "method": "DP",
            "T": 0,
            "x_floor": 1.0,
            "x_plain": 1.03,
        },
        {
            "section": "memory",
            "graph": "g",
            "batch": 8,
            "T": 10,
            "checkpoint_sweeps": 0,
            "peak_rss_mib": 600.0,
            "peak_tensors_mib": 580.0,
            "x_stored_time": 1.0,
        },
        {
            "section": "memory",
            "graph": "g",
            "batch": 8,
            "T": 10,
            "checkpoint_sweeps": 2,
            "peak_rss_mib": 300.0,
            "peak_tensors_mib": 190.0,
            "x_stored_time": 1.3,
        },
    ]
    found = bench.targets(rows)
    # floor 1.01 <= 1.05; T = 0 at 1.03 > 1.02; tensors 580/190 = 3.05x at 1.3x time;
    # RSS 600/300 = 2x
    assert [t["met"] for t in found] == [True, False, True, False]
    assert "live tensors" in found[2]["target"] and "RSS" in found[3]["target"]
    # a --segment row (explicit length) does not stand in for checkpoint_sweeps=True
    explicit = dict(rows[3], checkpoint_sweeps=1, explicit=True, peak_tensors_mib=100.0)
    assert bench.targets(rows + [explicit]) == found
    assert bench.targets(rows[:3] + [explicit])[2:] == []


@pytest.fixture(scope="module")
def bench_geometry():
    return _analysis_script("bench_geometry")


def test_geometry_cases_fit_the_benchmark_budget(bench_geometry, monkeypatch):
    # The library's 2 GiB default refuses the 224x224 case; the benchmark's own
    # budget (8 GiB unless DEEPFRAME_MEMORY_BUDGET or --memory-budget says otherwise)
    # admits every case, so `python analysis/bench.py` runs its geometry section whole.
    from deepframe.memory import MEMORY_BUDGET_ENV, MemoryBudgetError, check_memory

    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    budget = bench_geometry.memory_budget()
    assert budget == 8 * 2**30
    assert bench_geometry.memory_budget("3G") == 3 * 2**30
    for case in bench_geometry.CASES:
        check_memory(bench_geometry._graph(case), "metrics", memory_budget=budget)
    with pytest.raises(MemoryBudgetError, match="structured geometry"):
        check_memory(bench_geometry._graph("resnet18-224"), "metrics")
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "5G")
    assert bench_geometry.memory_budget() == 5 * 2**30


def test_geometry_case_row_matches_the_dense_reference(bench_geometry, monkeypatch):
    from deepframe.memory import MEMORY_BUDGET_ENV

    monkeypatch.delenv(MEMORY_BUDGET_ENV, raising=False)
    row = bench_geometry.run_case("chain-small", 1)
    assert row["memory_budget"] == 8 * 2**30 and row["atoms"] == 2048
    # the structured pass and the dense Gram (an independent reference) agree
    assert row["max_abs_diff_coherence"] < 1e-12 and row["rel_diff_fp"] < 1e-10


def test_ratios_pair_the_calls_of_one_round(bench, monkeypatch):
    # A scripted clock: each call advances it by its scripted seconds. Callable "a"
    # catches one quiet spell (1.0 s) that "b" never sees; the ratio of best times
    # reads 0.5, the median of the per-round ratios 1.0 (a/b = 1.0, 0.5, 1.1).
    clock = {"now": 0.0}
    script = {"a": iter([9.0, 2.0, 1.0, 2.2]), "b": iter([9.0, 2.0, 2.0, 2.0])}  # warm-up first
    order = []

    def call(name):
        order.append(name)
        clock["now"] += next(script[name])

    monkeypatch.setattr(bench, "CLOCK", lambda: clock["now"])
    rounds = {}
    best = bench.time_interleaved(
        {"a": lambda: call("a"), "b": lambda: call("b")}, 3, "cpu", rounds
    )
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the order rotates
    assert rounds["a"] == pytest.approx([2.0, 1.0, 2.2]) and rounds["b"] == pytest.approx([2.0] * 3)
    assert best == pytest.approx({"a": 1.0, "b": 2.0})
    assert bench.paired_ratio(rounds, "a", "b") == pytest.approx(1.0)
    assert bench.paired_ratio(rounds, "b", "a") == pytest.approx(1.0)


def test_only_memory_children_return_freed_memory_at_once(bench, monkeypatch):
    # The memory section reads the peak RSS, so its children map every large
    # allocation apart; the geometry section is timed, and that setting made it
    # about 1.8x slower, so its children keep the allocator's defaults.
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    memory = bench._child_env(["memory", "ResNet-8", "10", "2", "64"])
    geometry = bench._child_env(["geometry", "resnet18-224"])
    assert memory["MALLOC_MMAP_THRESHOLD_"] == "65536"
    assert "MALLOC_MMAP_THRESHOLD_" not in geometry
    for env in (memory, geometry):
        assert env["PYTHONPATH"].split(os.pathsep)[0] == ROOT


def test_profile_cost_deals_the_longest_models_first():
    module = _analysis_script("profile_cost")
    # 3 | 2 then 2 joins the 2, 1 joins the 3: both workers end at 4
    assert module._schedule([1.0, 2.0, 3.0, 2.0], 2) == 4.0
    assert module._schedule([5.0, 1.0], 3) == 5.0
    assert module._schedule([1.0, 1.0, 1.0], 1) == 3.0
