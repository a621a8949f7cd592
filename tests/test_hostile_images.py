"""Hostile inputs at the model and attack boundary: image dtypes, non-finite values,
normalisation constants, seeds and eps spellings (issue 21, items 7, 8 and 11).

The rule is deepframe._inputs.check_images (docs/robustness.md, "Inputs").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deepframe as df
from deepframe.attacks import evaluate


@pytest.fixture(scope="module")
def graph():
    return df.chain((1, 6, 6), (3, 4))


@pytest.fixture(scope="module")
def net(graph):
    return df.compile(graph, method="deep", iterations=2, seed=0).eval()


def _images(dtype=torch.float32, seed=0):
    return torch.rand((3, 1, 6, 6), generator=torch.Generator().manual_seed(seed), dtype=dtype)


LABELS = torch.tensor([0, 1, 2])

# every way images reach the library: (name in the message, call)
MODEL_ENTRIES = [
    ("PursuitNet", lambda net, x: net(x)),
    ("PursuitNet", lambda net, x: net.encode(x)),
    ("PursuitNet.gradient", lambda net, x: net.gradient(x, net.encode(_images()))),
]
ATTACK_ENTRIES = [
    ("fgsm", lambda net, x: df.fgsm(net, x, LABELS, 0.1)),
    ("pgd", lambda net, x: df.pgd(net, x, LABELS, 0.1, steps=2)),
    ("evaluate", lambda net, x: evaluate(net, (x, LABELS), [0.1], attack="fgsm")),
]
ENTRIES = MODEL_ENTRIES + ATTACK_ENTRIES


@pytest.mark.parametrize(("where", "call"), MODEL_ENTRIES + ATTACK_ENTRIES[:2])
@pytest.mark.parametrize(
    "bad",
    [
        torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8),
        torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.int64),
        torch.zeros((3, 1, 6, 6), dtype=torch.bool),
    ],
    ids=["uint8", "int64", "bool"],
)
def test_integer_and_bool_images_are_refused_with_the_way_out(net, where, call, bad):
    message = rf"^{where}: images must be floating point .*x\.float\(\) / 255"
    with pytest.raises(ValueError, match=message):
        call(net, bad)


@pytest.mark.parametrize(("where", "call"), ATTACK_ENTRIES)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_refused_with_the_count(net, where, call, value):
    """Where the values are read anyway; a model's forward reads none (no host sync)."""
    x = _images()
    x[0, 0, 1, 2] = value
    x[2, 0, 0, 0] = value
    with pytest.raises(ValueError, match=rf"^{where}: 2 of 108 image values are NaN or infinite"):
        call(net, x)


@pytest.mark.parametrize(("where", "call"), ENTRIES[:2])
def test_complex_and_non_tensor_images_are_refused(net, where, call):
    with pytest.raises(ValueError, match=rf"^{where}: images must be real floating point"):
        call(net, _images().to(torch.complex64))
    with pytest.raises(TypeError, match=rf"^{where}: .*ndarray \(torch.as_tensor converts"):
        call(net, _images().numpy())


@pytest.mark.parametrize(("model_dtype", "image_dtype"), [
    (torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float64, torch.float16),
])  # fmt: skip
def test_other_float_dtypes_are_cast_to_the_model_dtype(graph, model_dtype, image_dtype):
    """The same logits as the caller casting first, and attacks through the cast."""
    model = df.compile(graph, method="deep", iterations=2, seed=0, dtype=model_dtype).eval()
    x = _images(image_dtype)
    with torch.no_grad():
        assert torch.equal(model(x), model(x.to(model_dtype)))
    adv = df.fgsm(model, x, LABELS, 0.1)
    assert adv.dtype == image_dtype
    assert float((adv.double() - x.double()).abs().max()) <= 0.1 + 1e-3
    # the model sees exactly the images the caller would cast: the same gradient signs
    cast = x.to(model_dtype)
    reference = df.fgsm(model, cast, LABELS, 0.1)
    assert torch.equal((adv.double() - x.double()).sign(), (reference - cast).double().sign())


def test_eps_strings_are_read_as_everywhere_else(net):
    x = _images()
    assert torch.equal(df.fgsm(net, x, LABELS, "8/255"), df.fgsm(net, x, LABELS, 8 / 255))
    assert torch.equal(
        df.pgd(net, x, LABELS, "0.05", steps=2), df.pgd(net, x, LABELS, 0.05, steps=2)
    )
    with pytest.raises(ValueError, match="cannot read eps 'eight'"):
        df.fgsm(net, x, LABELS, "eight")
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        df.pgd(net, x, LABELS, "-1/255")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"mean": (0.5,), "std": (0.0,)}, r"std must be > 0 \(the input is divided by it\)"),
        ({"std": -1}, "std must be > 0"),
        ({"std": (1.0, -0.5, 1.0)}, "std must be > 0"),
        ({"mean": (float("nan"),)}, "mean must be finite"),
        ({"std": (float("inf"),)}, "std must be finite"),
        ({"mean": "abc"}, "mean must be a number or a sequence of numbers"),
        ({"mean": [[0.5]]}, "mean must be a number or a sequence of numbers"),
        ({"mean": ()}, "mean must be a number or a sequence of numbers"),
        ({"mean": (0.1, 0.2, 0.3)}, r"mean has 3 values for an input of 1 channels"),
        ({"std": (1.0, 2.0)}, r"std has 2 values for an input of 1 channels"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": 1.5}, "seed must be an integer >= 0"),
        ({"seed": True}, "seed must be an integer >= 0"),
    ],
)
def test_compile_checks_normalisation_and_seed_up_front(graph, options, fragment):
    with pytest.raises(ValueError, match=rf"^compile: {fragment}"):
        df.compile(graph, **options)


@pytest.mark.parametrize("mean", [0.5, (0.5,), np.array([0.5]), torch.tensor([0.5])])
def test_one_normalisation_constant_serves_every_channel(mean):
    g = df.chain((3, 6, 6), (4,))
    net = df.compile(g, method="feedforward", mean=mean, std=(0.25, 0.5, 1.0))
    x = torch.rand((2, 3, 6, 6))
    with torch.no_grad():
        assert torch.isfinite(net(x)).all()
    assert net.input_mean.flatten().tolist() == [0.5]


@pytest.mark.parametrize(
    "bad",
    [
        torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8),
        torch.zeros((3, 1, 6, 6), dtype=torch.bool),
    ],
    ids=["uint8", "bool"],
)
def test_evaluate_refuses_integer_images_before_the_model_sees_them(net, bad):
    with pytest.raises(ValueError, match=r"^evaluate: images must be floating point"):
        evaluate(net, (bad, LABELS), [0.1], attack="fgsm")
