"""Tests of deepframe.attacks: FGSM (Eq. 19), PGD, accuracy per eps, the masking audit.

Models are small plain torch classifiers with their normalisation inside. The
pursuit solvers (``deepframe.compile``) are nn.Modules with the same interface:
to run the digits tests on them, add a builder to ``DIGITS_MODELS``.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepframe import data
from deepframe.attacks import (
    accuracy,
    audit,
    evaluate,
    fgsm,
    parse_eps,
    parse_eps_list,
    pgd,
    robust_accuracy,
)
from deepframe.train import train


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: the normalisation lives inside the model."""

    def __init__(self, mean, std, dtype=torch.float32):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=dtype).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def small_cnn(seed: int = 0, dtype=torch.float32) -> nn.Module:
    """Two 3x3 convolutions and a linear head for 8x8 digits (no batch norm)."""
    info = data.DATASETS["digits"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            Normalize(info.mean, info.std, dtype),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 16, 10),
        )
    return model.to(dtype)


def train_digits_model(model: nn.Module, *, seed: int = 0, **settings) -> nn.Module:
    """Train ``model`` on the digits training split in a few seconds (CPU) and return it.

    Defaults: 10 epochs of SGD with momentum, batch 32, cosine schedule; the
    small CNN reaches about 0.97 validation accuracy. ``settings`` override
    any keyword of :func:`deepframe.train.train`. Works for any classifier of
    (B, 1, 8, 8) images in [0, 1].
    """
    train_set, val_set = data.digits(seed=0)
    options = dict(
        epochs=10,
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        progress=False,
        device="cpu",
    )
    train(model, train_set, val_set, seed=seed, **{**options, **settings})
    return model


def pursuit_model(method: str, iterations: int = 0):
    """A deepframe solver for digits: a two-layer conv chain compiled with ``method``."""

    def build() -> nn.Module:
        import deepframe as df

        info = data.DATASETS["digits"]
        graph = df.chain((1, 8, 8), widths=[32, 64], strides=[1, 2], bias=0.01)
        return df.compile(
            graph, method=method, iterations=iterations, mean=info.mean, std=info.std, seed=0
        )

    return build


#: Architectures the digits robustness tests run on, and their training settings.
DIGITS_MODELS = {
    "cnn": small_cnn,
    "L-TP": pursuit_model("feedforward"),
    "DP-3": pursuit_model("deep", 3),
}
DIGITS_SETTINGS = {
    "L-TP": {"optimizer": "adam", "lr": 1e-2, "momentum": 0.0, "weight_decay": 0.0},
    "DP-3": {"optimizer": "adam", "lr": 1e-2, "momentum": 0.0, "weight_decay": 0.0},
}

DIGITS_EPS = (0.02, 0.05, 0.1, 0.2)


@pytest.fixture(scope="module", params=sorted(DIGITS_MODELS))
def digits_model(request) -> nn.Module:
    return train_digits_model(
        DIGITS_MODELS[request.param](), **DIGITS_SETTINGS.get(request.param, {})
    )


@pytest.fixture(scope="module")
def digits_val() -> torch.utils.data.TensorDataset:
    return data.digits(seed=0)[1]


@pytest.fixture(scope="module")
def digits_twin() -> nn.Module:
    """An independently initialised CNN: the surrogate of the transfer attack."""
    return train_digits_model(small_cnn(seed=1), seed=1)


def _random_batch(n=16, shape=(1, 8, 8), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g, dtype=dtype)
    x[0].fill_(0.0)  # saturated pixels exercise the clamp
    x[1].fill_(1.0)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


# --------------------------------------------------------------------------- eps parsing


@pytest.mark.parametrize(
    "text, value", [("8/255", 8 / 255), (" 0.5 ", 0.5), ("0", 0.0), (0.1, 0.1), (1, 1.0)]
)
def test_parse_eps(text, value):
    assert parse_eps(text) == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["abc", "1/0", "-1/255", "nan", "inf"])
def test_parse_eps_rejects(text):
    with pytest.raises(ValueError):
        parse_eps(text)


def test_parse_eps_list():
    assert parse_eps_list("1/255,2/255, 4/255,8/255") == [k / 255 for k in (1, 2, 4, 8)]
    assert parse_eps_list([0.1, "1/10"]) == [0.1, 0.1]
    with pytest.raises(ValueError):
        parse_eps_list("")


# --------------------------------------------------------------------------- FGSM (Eq. 19)


def test_fgsm_equals_eq19_with_the_analytic_gradient():
    """A linear classifier has the closed-form input gradient of the cross-entropy:

    z = W (x - m)/s + b,  dJ/dx = W^T (softmax(z) - e_y) / s,  so Eq. 19 needs no autograd.
    """
    mean, std = 0.3, 0.4
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            Normalize((mean,), (std,), torch.float64), nn.Flatten(), nn.Linear(64, 10)
        ).double()
    W, b = model[2].weight.detach(), model[2].bias.detach()
    x, y = _random_batch(32, dtype=torch.float64)
    z = ((x - mean) / std).flatten(1) @ W.T + b
    grad = ((torch.softmax(z, 1) - F.one_hot(y, 10).double()) @ W / std).view_as(x)
    assert bool((grad != 0).all())
    for eps in (0.0, 1 / 255, 8 / 255, 0.3):
        expected = (x + eps * grad.sign()).clamp(0, 1)
        assert torch.equal(fgsm(model, x, y, eps), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fgsm_equals_eq19_sample_by_sample(dtype):
    """Reference: autograd of each sample's own loss, then sign, step and clamp (Eq. 19)."""
    model = small_cnn(seed=3, dtype=dtype)
    x, y = _random_batch(12, dtype=dtype, seed=1)
    eps = 0.1
    rows = []
    for i in range(len(y)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y[i : i + 1])
        loss.backward()
        rows.append((x[i : i + 1] + eps * xi.grad.sign()).clamp(0, 1))
    expected = torch.cat(rows)
    ours = fgsm(model, x, y, eps)
    if dtype == torch.float64:
        assert torch.equal(ours, expected)
    else:  # batched and per-sample convolutions round differently: allow a rare sign flip
        assert (ours != expected).float().mean() < 1e-3


class _ModeProbe(nn.Module):
    """Records the training flag it sees at each forward."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def test_fgsm_runs_in_eval_mode_and_restores_modes():
    probe = _ModeProbe()
    frozen = nn.Dropout(0.5)
    model = nn.Sequential(probe, nn.Flatten(), nn.Linear(64, 32), frozen, nn.Linear(32, 10))
    model.train()
    frozen.eval()  # a mixed configuration must come back as it was
    x, y = _random_batch()
    a = fgsm(model, x, y, 0.1)
    b = fgsm(model, x, y, 0.1)
    assert probe.seen == [False, False]
    assert torch.equal(a, b)  # eval mode: dropout off, deterministic
    assert model.training and probe.training and not frozen.training
    assert all(p.grad is None for p in model.parameters())  # parameters' grads untouched


def test_fgsm_checks_its_inputs():
    model = small_cnn()
    x, y = _random_batch()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(model, x * 2, y, 0.1)
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="labels"):
        fgsm(model, x, y[:3], 0.1)


# --------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("eps", [1 / 255, 0.05, 0.3])
def test_pgd_one_step_without_random_start_is_fgsm(eps):
    model = small_cnn(seed=2)
    x, y = _random_batch(seed=2)
    ours = pgd(model, x, y, eps, steps=1, step_size=eps, random_start=False)
    assert torch.equal(ours, fgsm(model, x, y, eps))


def test_pgd_stays_in_the_ball_and_is_seeded():
    model = small_cnn(seed=2)
    x, y = _random_batch(seed=3)
    eps = 0.1
    a = pgd(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(1))
    b = pgd(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(1))
    c = pgd(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(pgd(model, x, y, eps, steps=5), pgd(model, x, y, eps, steps=5))
    for adv in (a, c):
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1


@functools.cache
def _fixed_cnn() -> nn.Module:
    return small_cnn(seed=5)


@settings(max_examples=25, deadline=None)
@given(
    eps=st.floats(0.0, 1.0),
    steps=st.integers(1, 4),
    random_start=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_attacks_stay_in_the_ball_and_the_image_range(eps, steps, random_start, seed):
    model = _fixed_cnn()
    x, y = _random_batch(8, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    for adv in (
        fgsm(model, x, y, eps),
        pgd(model, x, y, eps, steps=steps, random_start=random_start, generator=generator),
    ):
        assert adv.shape == x.shape and adv.dtype == x.dtype
        assert float((adv - x).abs().max()) <= eps + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_pgd_increases_the_loss_more_than_fgsm():
    model = small_cnn(seed=4)
    x, y = _random_batch(64, seed=4)
    eps = 0.05

    def loss(z):
        with torch.no_grad():
            return float(F.cross_entropy(model(z), y))

    assert loss(pgd(model, x, y, eps, steps=20)) > loss(fgsm(model, x, y, eps)) > loss(x)


# --------------------------------------------------------------------------- evaluation


def test_accuracy_accepts_loaders_datasets_and_tensors():
    model = small_cnn()
    x, y = _random_batch(50)
    ds = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(ds, batch_size=7)
    with torch.no_grad():
        expected = float((model(x).argmax(1) == y).float().mean())
    for source in ((x, y), ds, loader):
        assert accuracy(model, source, batch_size=16) == pytest.approx(expected)
    fgsm_acc = robust_accuracy(model, ds, ["0", "8/255"], batch_size=16)
    assert fgsm_acc[0.0] == pytest.approx(expected)
    x_adv = fgsm(model, x, y, 8 / 255)
    assert fgsm_acc[8 / 255] == pytest.approx(accuracy(model, (x_adv, y)))
    with pytest.raises(ValueError, match="unknown attack"):
        robust_accuracy(model, ds, [0.1], attack="cw")


def test_evaluate_sums_equal_a_direct_computation():
    """One pass of evaluate in batches of 16 against whole-batch torch arithmetic."""
    model = small_cnn()
    x, y = _random_batch(50)
    eps = 8 / 255
    with torch.no_grad():
        logits = model(x)
        loss_sum = float(F.cross_entropy(logits.double(), y, reduction="sum"))
        correct = int((logits.argmax(1) == y).sum())
        robust = int((model(fgsm(model, x, y, eps)).argmax(1) == y).sum())
    result = evaluate(model, (x, y), [0, "8/255"], "fgsm", loss=True, batch_size=16)
    assert result.count == 50 and result.correct == correct
    assert result.robust_correct == {0.0: correct, eps: robust}
    assert result.loss_sum == pytest.approx(loss_sum, rel=1e-5)
    assert result.loss == pytest.approx(loss_sum / 50, rel=1e-5)
    assert result.accuracy == correct / 50
    assert result.robust_accuracy == {0.0: correct / 50, eps: robust / 50}
    assert evaluate(model, (x, y), batch_size=16).loss_sum is None  # not asked for
    with pytest.raises(ValueError, match="loss"):
        _ = evaluate(model, (x, y)).loss


def test_evaluate_pgd_is_robust_accuracy_and_reproducible():
    model = small_cnn()
    x, y = _random_batch(40)
    settings = dict(steps=3, seed=5, batch_size=16)
    first = evaluate(model, (x, y), [0.05, 0.1], "pgd", **settings)
    again = evaluate(model, (x, y), [0.05, 0.1], "pgd", **settings)
    assert first == again
    assert first.robust_accuracy == robust_accuracy(model, (x, y), [0.05, 0.1], "pgd", **settings)


def test_evaluate_of_no_samples_counts_zero():
    model = small_cnn()
    empty = (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    result = evaluate(model, empty, [0.1])
    assert result.count == 0 and result.correct == 0 and result.robust_correct == {0.1: 0}
    with pytest.raises(ValueError, match="no samples"):
        _ = result.accuracy
    with pytest.raises(ValueError, match="no samples"):
        accuracy(model, empty)


def test_trained_digits_model_is_accurate(digits_model, digits_val):
    assert accuracy(digits_model, digits_val) >= 0.95


def test_attack_accuracies_are_ordered(digits_model, digits_val):
    clean = accuracy(digits_model, digits_val)
    by_fgsm = robust_accuracy(digits_model, digits_val, DIGITS_EPS, "fgsm")
    by_pgd = robust_accuracy(digits_model, digits_val, (*DIGITS_EPS, 0.5), "pgd", steps=10)
    for eps in DIGITS_EPS:
        assert by_pgd[eps] <= by_fgsm[eps] <= clean, (eps, by_pgd, by_fgsm)
    for accs in (by_fgsm, by_pgd):
        values = [clean] + [accs[eps] for eps in sorted(accs)]
        assert all(b <= a for a, b in zip(values, values[1:], strict=False)), accs
    assert by_pgd[0.5] <= 0.2  # chance is 0.1


def test_audit_passes_on_an_honest_model(digits_model, digits_val, digits_twin):
    report = audit(digits_model, digits_val, DIGITS_EPS, twin=digits_twin)
    assert report.passed, str(report)
    assert report.zero_gradient_fraction == 0.0
    assert report.large_eps_accuracy <= 0.2
    assert [c.name for c in report.checks] == [
        "pgd <= fgsm",
        "accuracy non-increasing in eps",
        "chance at large eps",
        "no all-zero input gradients",
        "transfer weaker than white-box",
    ]
    text = str(report)
    assert "no sign of gradient masking" in text and "transfer" in text
    assert set(report.to_dict()["fgsm"]) == {repr(e) for e in DIGITS_EPS}


class _Quantised(nn.Module):
    """Rounds the input to 5 grey levels first: a textbook masked (zero) gradient."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def test_audit_flags_gradient_masking(digits_model, digits_val, digits_twin):
    masked = _Quantised(digits_model)
    report = audit(masked, digits_val, DIGITS_EPS, twin=digits_twin)
    assert not report.passed
    verdict = {c.name: c.passed for c in report.checks}
    assert not verdict["no all-zero input gradients"]
    assert not verdict["chance at large eps"]
    assert not verdict["transfer weaker than white-box"]
    assert report.zero_gradient_fraction == 1.0
    assert "POSSIBLE GRADIENT MASKING" in str(report)


# --------------------------------------------------------------------------- cross-checks


def test_fgsm_matches_torchattacks(digits_model, digits_val):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits_val.tensors
    eps = 0.1
    theirs = torchattacks.FGSM(digits_model, eps=eps)(x, y)
    ours = fgsm(digits_model, x, y, eps)
    # torchattacks averages the batch loss where we sum it: the gradients differ by
    # the factor 1/B, which can only flip a sign where float32 rounds a component to 0
    assert (ours != theirs).float().mean() < 1e-3


def test_autoattack_runs_on_the_model(digits_model, digits_val):
    autoattack = pytest.importorskip("autoattack")
    x, y = digits_val.tensors[0][:100], digits_val.tensors[1][:100]
    eps = 0.1
    adversary = autoattack.AutoAttack(
        digits_model,
        norm="Linf",
        eps=eps,
        version="custom",
        attacks_to_run=["apgd-ce"],
        device="cpu",
        verbose=False,
        seed=0,
    )
    x_adv = adversary.run_standard_evaluation(x, y, bs=100)
    assert float((x_adv - x).abs().max()) <= eps + 1e-5
    apgd = accuracy(digits_model, (x_adv, y))
    ours = robust_accuracy(digits_model, (x, y), [eps], "pgd")[eps]
    assert apgd <= ours + 0.05  # APGD is at least as strong as 10-step PGD, up to noise
