"""Hostile sizes of the unrolled solvers: T, the batch, checkpoint_sweeps (issue 21, item 5).

The memory estimate of a training step and of an attack covers the
activations autograd keeps of every unrolled iteration at the batch size; a
request above the budget is refused before the first step, with the figure
and the ways out. What the estimate is worth against measured peaks is
``analysis/bench_memory_estimate.py --section unroll``, a benchmark: nothing
here measures memory or time.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import deepframe as df
from deepframe import attacks
from deepframe.graph import from_spec
from deepframe.memory import (
    MemoryBudgetError,
    Unroll,
    check_memory,
    check_model_memory,
    estimate_memory,
    segment_length,
)

CHAIN = "chain:input_shape=1x8x8,widths=8x16"  # what `deepframe train chain` builds
LONG = 1_000_000  # the issue's --iterations


def _data(n: int = 16, shape=(1, 8, 8)) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand((n, *shape), generator=g), torch.arange(n) % 10)


def _need(spec: str, what: str = "training", **unroll) -> int:
    return estimate_memory(from_spec(spec)).bytes(what, 4, unroll=Unroll(**unroll))


# --------------------------------------------------------------------------- the estimate


@pytest.mark.parametrize("what", ["training", "attack"])
@pytest.mark.parametrize(
    ("spec", "unroll"),
    [
        (CHAIN, {"method": "deep"}),
        (CHAIN, {"method": "layered"}),
        (CHAIN, {"method": "deep", "schedule": "jacobi", "extrapolated": True}),
        ("resnet:input_shape=3x8x8,widths=4x8x8,batchnorm=true", {"method": "deep"}),
        ("chain:input_shape=1x8x8,widths=4x6,merge=input", {"method": "deep"}),
        ("chain:input_shape=12,widths=5x3", {"method": "layered", "learned_beta": False}),
    ],
)
def test_estimate_grows_linearly_in_the_iterations_and_in_the_batch(what, spec, unroll):
    """Once the activations outgrow the Lipschitz bound (computed before them, so the
    step needs the larger of the two), every further iteration and image costs the same."""
    by_t = [_need(spec, what, iterations=t, batch_size=64, **unroll) for t in (100, 200, 300, 400)]
    steps = {b - a for a, b in zip(by_t, by_t[1:])}
    assert len(steps) == 1 and steps.pop() > 0  # the same bytes for every further 100
    by_b = [_need(spec, what, iterations=100, batch_size=b, **unroll) for b in (64, 128, 256)]
    assert by_b[2] - by_b[1] == 2 * (by_b[1] - by_b[0]) > 0


def test_the_iterations_are_counted_from_the_solvers_tensors():
    """Per iteration and image: every residual, each node's code and (learned beta) the
    gradient the step multiplies; DP's feedback through learned targets; batch norm's
    scaled operators; a Jacobi sweep's grouped inputs; extrapolation's codes."""
    est = estimate_memory(from_spec(CHAIN))
    assert (est.rows, est.atoms) == (64 + 8 * 64, 8 * 64 + 16 * 64)
    assert est.iteration_entries(Unroll()) == est.rows + 2 * est.atoms
    assert est.iteration_entries(Unroll(learned_beta=False)) == est.rows + est.atoms
    # DP extrapolates by scalars (nothing saved); L-BP saves its extrapolated codes
    assert est.iteration_entries(Unroll(extrapolated=True)) == est.rows + 2 * est.atoms
    layered = Unroll(method="layered", extrapolated=True)
    assert est.iteration_entries(layered) == est.rows + 3 * est.atoms
    assert est.feedback == est.scaled == est.grouped == 0  # identity targets, no batch norm
    assert est.iteration_entries(Unroll(schedule="jacobi")) == est.rows + 2 * est.atoms
    bn = estimate_memory(from_spec(CHAIN + ",batchnorm=true"))
    assert bn.batchnorm == est.atoms and bn.scaled == 2 * est.atoms  # S w and S A r per term
    assert bn.iteration_entries(Unroll()) == est.iteration_entries(Unroll()) + 2 * est.atoms
    # a ResNet: identity skips save no residual; their batch norm saves A r once
    from deepframe.solvers import conv_groups
    from deepframe.terms import structure

    st = structure(from_spec("resnet:input_shape=3x8x8,widths=4x8x8,batchnorm=true"))
    res = estimate_memory(st)
    per_term = [math.prod(st.node_shapes[t.synth]) for t in st.terms]
    assert res.learned_rows < res.rows and sum(per_term) < res.scaled < 2 * sum(per_term)
    # a Jacobi sweep concatenates the inputs of same-shaped convolutions
    st = structure(from_spec("resnet:input_shape=3x8x8,widths=4x8x8"))
    grouped = sum(
        math.prod(st.node_shapes[st.terms[i].synth]) for group in conv_groups(st.terms)
        for i in group
    )  # fmt: skip
    assert estimate_memory(st).grouped == grouped > 0


@pytest.mark.parametrize("method", ["deep", "layered"])
@pytest.mark.parametrize("extrapolated", [False, True])
def test_checkpoint_sweeps_lowers_the_estimate(method, extrapolated):
    base = {"method": method, "iterations": 200, "batch_size": 128, "extrapolated": extrapolated}
    stored = _need(CHAIN, **base)
    recomputed = {k: _need(CHAIN, **base, segment=k) for k in (1, 8, segment_length(200, True))}
    assert all(need < stored for need in recomputed.values())
    # a segment as long as the unroll recomputes nothing: the stored estimate
    assert _need(CHAIN, **base, segment=200) == _need(CHAIN, **base, segment=500) == stored
    # with segments the estimate grows like T / k boundaries, not like T iterations
    longer = _need(CHAIN, **{**base, "iterations": 400}, segment=8)
    assert longer - recomputed[8] < (_need(CHAIN, **{**base, "iterations": 400}) - stored) / 2


@pytest.mark.parametrize("iterations", [1, 2, 3, 10, 100, 1000])
@pytest.mark.parametrize("sweeps", [False, True, 1, 4])
def test_segment_length_is_the_solvers_rule(iterations, sweeps):
    net = df.compile(from_spec("chain:input_shape=1x4x4,widths=2"), iterations=iterations,
                     checkpoint_sweeps=sweeps)  # fmt: skip
    assert segment_length(iterations, sweeps) == net._segment_length()
    assert Unroll.of(net) == Unroll.from_options(net.options)


def test_unroll_reads_the_model_as_it_is_now():
    net = df.compile(from_spec(CHAIN), method="layered", iterations=4, alpha="fista", beta=0.5)
    unroll = Unroll.of(net, 32, 2)
    assert unroll == Unroll(method="layered", iterations=4, batch_size=32, extrapolated=True,
                            fista=True, learned_beta=False, optimizer_states=2)  # fmt: skip
    ff = df.compile(from_spec(CHAIN), method="feedforward", iterations=7)
    assert Unroll.of(ff).unrolled == 0 == Unroll.from_options(ff.options).unrolled
    assert Unroll(method="feedforward", iterations=5).unrolled == 0


def test_training_and_attack_estimates_need_the_unroll():
    with pytest.raises(ValueError, match="needs an Unroll"):
        estimate_memory(from_spec(CHAIN)).bytes("training")
    with pytest.raises(ValueError, match="expected weights, pursuit, metrics, training or attack"):
        estimate_memory(from_spec(CHAIN)).bytes("inference")


# --------------------------------------------------------------------------- refusals


def _long_net(**options):
    return df.compile(from_spec(CHAIN), **{"method": "deep", "iterations": LONG, **options})


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "autograd keeps"),
        ({"method": "layered"}, "layered pursuit"),
        ({"schedule": "jacobi"}, "deep pursuit"),
        ({"checkpoint_sweeps": True}, "recomputed in segments of 577"),
        ({"checkpoint_sweeps": 10}, "recomputed in segments of 10"),
    ],
)
def test_train_refuses_a_long_unroll_before_the_first_step(
    tmp_path, monkeypatch, options, fragment
):
    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    net = _long_net(**options)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calls = []
    monkeypatch.setattr(net, "forward", lambda x: calls.append(x))  # a step would call it
    with pytest.raises(MemoryBudgetError) as info:
        df.train(net, _data(), epochs=1, batch_size=128, checkpoint_dir=tmp_path / "run",
                 log_path=tmp_path / "log.jsonl", progress=False)  # fmt: skip
    message = str(info.value)
    assert message.startswith("a training step needs about ") and fragment in message
    assert (
        f"T={LONG:,} at batch 128" in message and "more than the memory budget of 2 GiB" in message
    )
    for way in ("a smaller batch", "fewer iterations (at most", "DEEPFRAME_MEMORY_BUDGET"):
        assert way in message, way
    assert ("checkpoint_sweeps=True (about" in message) == ("checkpoint_sweeps" not in options)
    assert "\n" not in message
    assert not calls and not any(tmp_path.iterdir())  # no step, nothing written
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_train_names_the_largest_batch_and_the_iterations_that_fit(monkeypatch):
    monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", "256M")
    net = df.compile(from_spec(CHAIN), method="deep", iterations=2000)
    with pytest.raises(MemoryBudgetError) as info:
        df.train(net, _data(), epochs=1, batch_size=128, progress=False)
    message = str(info.value)
    budget = 256 * 2**20
    est = estimate_memory(net.structure)
    batch = int(message.split("a smaller batch (at most ")[1].split(" ")[0].replace(",", ""))
    unroll = Unroll.of(net, batch, 2)
    assert est.bytes("training", 4, unroll=unroll) <= budget
    assert est.bytes("training", 4, unroll=replace(unroll, batch_size=batch + 1)) > budget
    fits = int(message.split("fewer iterations (at most ")[1].split(" ")[0].replace(",", ""))
    unroll = Unroll.of(net, 128, 2)
    assert est.bytes("training", 4, unroll=replace(unroll, iterations=fits)) <= budget
    assert est.bytes("training", 4, unroll=replace(unroll, iterations=fits + 1)) > budget
    # the memory_budget argument raises it for this call alone
    assert check_model_memory(net, "training", 128, optimizer_states=2, memory_budget="64G")


def test_train_refuses_an_fgsm_validation_that_cannot_fit(monkeypatch):
    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    net = df.compile(from_spec(CHAIN), method="deep", iterations=3000)
    options = {"epochs": 1, "batch_size": 8, "progress": False, "memory_budget": "1G"}
    assert check_model_memory(net, "training", 8, optimizer_states=2, memory_budget="1G")
    with pytest.raises(MemoryBudgetError, match=r"^the FGSM validation after each epoch "
                       r"\(fgsm_eps, eval_batch_size=512\): an attack"):  # fmt: skip
        df.train(net, _data(8), _data(600), fgsm_eps=0.1, **options)


@pytest.mark.parametrize(
    "attack",
    [
        lambda net, x, y: df.fgsm(net, x, y, 0.1),
        lambda net, x, y: df.pgd(net, x, y, 0.1, steps=2),
        lambda net, x, y: attacks.robust_accuracy(net, (x, y), [0.1]),
        lambda net, x, y: attacks.robust_accuracy(net, TensorDataset(x, y), [0.1], attack="pgd"),
        lambda net, x, y: attacks.robust_accuracy(
            net, torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=64), [0.1]
        ),
        lambda net, x, y: df.audit(net, (x, y), [0.1]),
    ],
    ids=["fgsm", "pgd", "tensors", "dataset", "loader", "audit"],
)
def test_attacks_refuse_a_long_unroll_before_any_work(monkeypatch, attack):
    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    net = _long_net().eval()
    calls = []
    monkeypatch.setattr(net, "forward", lambda x: calls.append(x))
    x, y = _data(64).tensors
    with pytest.raises(MemoryBudgetError) as info:
        attack(net, x, y)
    message = str(info.value)
    assert message.startswith("an attack (FGSM/PGD backpropagates through the unrolled solver)")
    assert f"deep pursuit with T={LONG:,} at batch 64" in message
    assert "a smaller batch" in message and "checkpoint_sweeps=True" in message
    assert not calls  # refused before the clean forward pass


def test_attacks_without_an_attack_and_other_models_are_not_estimated(monkeypatch):
    monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", "1K")
    x, y = _data(4, (4,)).tensors
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    assert df.fgsm(plain, x, y, 0.1).shape == x.shape  # not a compiled solver: unchecked
    assert check_model_memory(plain, "attack", 4) is None
    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET")
    net = _long_net()
    with torch.no_grad():
        assert attacks.evaluate(net, [], [0.1]).count == 0  # an iterable: checked batch by batch


def test_check_memory_of_a_small_unroll_returns_the_estimate():
    g = from_spec(CHAIN)
    unroll = Unroll(iterations=3, batch_size=16, optimizer_states=2)
    need = check_memory(g, "training", dtype=torch.float32, unroll=unroll)
    assert need == estimate_memory(g).bytes("training", 4, unroll=unroll)
    attack = check_memory(g, "attack", dtype=torch.float32, unroll=unroll)
    assert attack == estimate_memory(g).bytes("attack", 4, unroll=unroll)


def test_train_checks_every_step_it_will_take(monkeypatch):
    """The training step, adversarial training's FGSM examples, the FGSM validation."""
    import deepframe.memory as memory

    calls = []

    def record(model, what, batch, **kwargs):
        calls.append((what, batch, kwargs.get("optimizer_states", 0)))
        raise MemoryBudgetError("stop here")

    monkeypatch.setattr(memory, "check_model_memory", record)
    net = df.compile(from_spec(CHAIN), method="deep", iterations=2)
    for options, expected in [
        ({"optimizer": "sgd", "momentum": 0.0}, ("training", 8, 0)),
        ({"optimizer": "sgd"}, ("training", 8, 1)),
        ({"optimizer": "adam"}, ("training", 8, 2)),
    ]:
        calls.clear()
        with pytest.raises(MemoryBudgetError):
            df.train(net, _data(), epochs=1, batch_size=8, progress=False, **options)
        assert calls == [expected]
    passed = []

    def count(model, what, batch, **kwargs):
        passed.append((what, batch))
        if len(passed) == 3:
            raise MemoryBudgetError("stop here")

    monkeypatch.setattr(memory, "check_model_memory", count)
    with pytest.raises(MemoryBudgetError, match="the FGSM validation after each epoch"):
        df.train(net, _data(), _data(40), epochs=1, batch_size=8, progress=False, fgsm_eps=0.1,
                 adversarial={"eps": 0.1}, eval_batch_size=32)  # fmt: skip
    assert passed == [("training", 8), ("attack", 8), ("attack", 32)]
