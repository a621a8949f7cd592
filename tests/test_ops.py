"""Operators of deepframe.ops: adjoints, shapes, dense/sparse matrices and norms.

Every edge kind gets a dot test ``<A u, v> = <u, A^T v>`` in float64 and is
compared with an independent dense matrix from :mod:`deepframe.testing.reference`
(conv blocks written out by loops over output pixels and taps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepframe import ops
from deepframe.testing import (
    assert_dottest,
    assert_matches_dense,
    conv_matrix,
    dense_matrix,
    shortcut_matrix,
)

# (C_in, C_out, H, W, kernel, stride, padding): odd/even/non-square maps, strides 1-3,
# paddings from 0 to beyond the kernel, even kernels, maps smaller than the kernel.
CONV_CASES = [
    (1, 1, 5, 5, 3, 1, 1),
    (2, 3, 7, 7, 3, 2, 1),
    (2, 3, 8, 8, 3, 2, 1),
    (3, 2, 7, 6, 3, 2, 0),
    (3, 2, 6, 7, 5, 2, 2),
    (2, 2, 9, 5, 5, 3, 1),
    (2, 4, 4, 4, 1, 1, 0),
    (2, 4, 5, 5, 1, 2, 0),
    (1, 2, 5, 4, 1, 2, 1),
    (2, 1, 5, 5, 3, 1, 3),
    (2, 2, 7, 6, 3, 2, 4),
    (1, 3, 2, 2, 5, 1, 2),
    (2, 2, 3, 3, 5, 1, 1),
    (1, 2, 6, 5, 2, 1, 0),
    (2, 2, 6, 6, 4, 2, 1),
    (3, 3, 1, 1, 3, 1, 1),
    (1, 1, 1, 7, 1, 3, 0),
    (2, 3, 11, 10, 5, 2, 0),
]
# (C_in, C_out, H, W, kernel, stride, padding, dilation, groups), per-axis values as
# (height, width): torchvision's convolutions (AlexNet's 11x11 stride 4 padding 2,
# grouped and depthwise 3x3s, dilation), non-square kernels, unequal strides and
# paddings, and their combinations.
CONV_ATTRIBUTE_CASES = [
    (3, 4, 23, 21, 11, 4, 2, 1, 1),
    (4, 6, 7, 7, 3, 1, 1, 1, 2),
    (4, 4, 6, 7, 3, 2, 1, 1, 4),
    (3, 3, 5, 5, 3, 1, 1, 1, 3),
    (2, 3, 9, 8, 3, 1, 2, 2, 1),
    (2, 2, 9, 7, 3, 1, 0, (2, 1), 1),
    (2, 3, 6, 7, (1, 3), 1, (0, 1), 1, 1),
    (3, 2, 7, 5, (3, 1), (2, 1), (1, 0), 1, 1),
    (2, 2, 8, 9, (2, 5), (1, 3), (0, 2), 1, 2),
    (4, 8, 10, 9, (3, 5), (2, 1), (2, 1), (1, 2), 4),
    (6, 4, 5, 6, 3, (1, 2), (2, 0), 2, 2),
    (4, 4, 5, 5, 3, 2, 2, 2, 2),
]
SHORTCUT_CASES = [  # (C_in, C_out, H, W, stride)
    (2, 2, 5, 5, 1),
    (2, 4, 5, 5, 2),
    (2, 5, 6, 7, 2),
    (1, 4, 7, 4, 3),
    (3, 3, 4, 4, 2),
    (3, 6, 1, 1, 2),
    (1, 2, 2, 3, 4),
]
PROJECT_CASES = [  # (C_in, C_out, H, W, stride)
    (2, 3, 5, 5, 1),
    (2, 4, 5, 5, 2),
    (3, 2, 6, 7, 2),
    (1, 2, 7, 4, 3),
]
DENSE_CASES = [(5,), (1,), (2, 3, 3), (3, 2, 5), (1, 1, 1)]


def _weight(shape, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def _conv(case, dtype=torch.float64):
    c_in, c_out, h, w, k, s, p = case
    return ops.Conv(_weight((c_out, c_in, k, k), dtype=dtype), (c_in, h, w), stride=s, padding=p)


def _attribute_conv(case, dtype=torch.float64):
    c_in, c_out, h, w, k, s, p, d, g = case
    kernel = k if isinstance(k, tuple) else (k, k)
    weight = _weight((c_out, c_in // g, *kernel), dtype=dtype)
    return ops.Conv(weight, (c_in, h, w), stride=s, padding=p, dilation=d, groups=g)


def _all_operators():
    """One instance of every kind, with ids, for the shared checks."""
    out = []
    for case in CONV_CASES:
        out.append(pytest.param(lambda case=case: _conv(case), id=f"conv{case}"))
    for case in CONV_ATTRIBUTE_CASES:
        out.append(pytest.param(lambda case=case: _attribute_conv(case), id=f"conv{case}"))
    for c_in, c_out, h, w, s in PROJECT_CASES:
        out.append(
            pytest.param(
                lambda c_in=c_in, c_out=c_out, h=h, w=w, s=s: ops.Project(
                    _weight((c_out, c_in, 1, 1)), (c_in, h, w), stride=s
                ),
                id=f"project{(c_in, c_out, h, w, s)}",
            )
        )
    for c_in, c_out, h, w, s, g in [(4, 6, 5, 6, (2, 1), 2), (3, 3, 4, 5, 1, 3)]:
        out.append(
            pytest.param(
                lambda c_in=c_in, c_out=c_out, h=h, w=w, s=s, g=g: ops.Project(
                    _weight((c_out, c_in // g, 1, 1)), (c_in, h, w), stride=s, groups=g
                ),
                id=f"project{(c_in, c_out, h, w, s)}-groups={g}",
            )
        )
    for c_in, c_out, h, w, s in SHORTCUT_CASES:
        out.append(
            pytest.param(
                lambda c_in=c_in, c_out=c_out, h=h, w=w, s=s: ops.Shortcut(
                    (c_in, h, w), c_out, stride=s
                ),
                id=f"shortcut{(c_in, c_out, h, w, s)}",
            )
        )
    for c_in, c_out, h, w, s, before in [
        (2, 5, 5, 4, 2, 0),
        (2, 5, 4, 4, 1, 3),
        (1, 4, 3, 5, 3, 2),
    ]:
        out.append(
            pytest.param(
                lambda c_in=c_in, c_out=c_out, h=h, w=w, s=s, before=before: ops.Shortcut(
                    (c_in, h, w), c_out, stride=s, pad_before=before
                ),
                id=f"shortcut{(c_in, c_out, h, w, s)}-pad_before={before}",
            )
        )
    for shape in DENSE_CASES:
        out.append(
            pytest.param(
                lambda shape=shape: ops.Dense(_weight((4, int(np.prod(shape)))), shape),
                id=f"dense{shape}",
            )
        )
    for shape in [(3,), (2, 3, 4), (1, 1, 1)]:
        out.append(pytest.param(lambda shape=shape: ops.Identity(shape), id=f"identity{shape}"))
    return out


OPERATORS = _all_operators()


def _reference(op) -> np.ndarray:
    """The independent dense matrix of ``op``."""
    if isinstance(op, ops.Project):
        return conv_matrix(op.weight, op.in_shape, op.stride, 0, groups=op.groups)
    if isinstance(op, ops.Conv):
        return conv_matrix(
            op.weight, op.in_shape, op.stride, op.padding, op.dilation, groups=op.groups
        )
    if isinstance(op, ops.Shortcut):
        return shortcut_matrix(op.in_shape, op.out_shape[0], op.stride, op.pad_before)
    if isinstance(op, ops.Dense):
        return dense_matrix(op.weight)
    if isinstance(op, ops.Identity):
        return np.eye(op.in_size)
    raise TypeError(op)


# --------------------------------------------------------------------------
# every operator kind
# --------------------------------------------------------------------------
@pytest.mark.parametrize("make", OPERATORS)
def test_dot_test(make):
    op = make()
    assert assert_dottest(op, rtol=1e-10) < 1e-10
    assert op.dottest() < 1e-10  # the operator's own dot test agrees


@pytest.mark.parametrize("make", OPERATORS)
def test_adjoint_restores_exact_source_shape(make):
    op = make()
    y = torch.randn((2, *op.out_shape), dtype=torch.float64)
    assert tuple(op.adjoint(y).shape) == (2, *op.in_shape)
    x = torch.randn((3, *op.in_shape), dtype=torch.float64)
    assert tuple(op.forward(x).shape) == (3, *op.out_shape)


@pytest.mark.parametrize("make", OPERATORS)
def test_todense_and_tosparse_equal_independent_matrix(make):
    op = make()
    expected = _reference(op)
    assert expected.shape == (op.out_size, op.in_size)
    np.testing.assert_array_equal(op.todense().numpy(), expected)
    sparse = op.tosparse()
    assert sparse.shape == expected.shape
    np.testing.assert_array_equal(sparse.toarray(), expected)


@pytest.mark.parametrize("make", OPERATORS)
def test_maps_equal_their_matrix(make):
    assert_matches_dense(make(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", OPERATORS)
def test_sqnorm_exact_mode_is_the_spectral_norm(make):
    op = make()
    expected = np.linalg.norm(_reference(op), 2) ** 2
    assert op.sqnorm(exact=True) == pytest.approx(expected, rel=1e-12)


def _is_exact_kind(op) -> bool:
    """Kinds whose bound is the exact norm: dense, identity, shortcut, 1x1 convolutions."""
    return not isinstance(op, ops.Conv) or op.kernel_size == (1, 1)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("make", OPERATORS)
def test_sqnorm_bound_is_an_upper_bound(make, scaled):
    """``sqnorm_bound(scale) >= ||diag(scale) A||_2^2`` (numpy SVD of the reference
    matrix, rows scaled per output channel); equal for the exact kinds; for
    convolutions within a factor 3 on this table (worst: 2.63, a 2x2 map under a 5x5
    kernel; CIFAR-sized maps are within a few percent, docs/solvers.md)."""
    op = make()
    matrix = _reference(op)
    scale = None
    if scaled:
        g = torch.Generator().manual_seed(5)
        scale = torch.rand(op.out_shape[0], generator=g, dtype=torch.float64) * 2 + 0.1
        per_row = np.repeat(scale.numpy(), op.out_size // op.out_shape[0])
        matrix = matrix * per_row[:, None]
    expected = np.linalg.norm(matrix, 2) ** 2
    bound = op.sqnorm_bound(scale)
    assert bound.dtype == torch.float64 and bound.dim() == 0
    assert float(bound) >= expected
    if _is_exact_kind(op):
        assert float(bound) == pytest.approx(expected, rel=1e-9)
    else:
        assert float(bound) <= 3 * expected


def test_sqnorm_bound_is_detached():
    weight = _weight((3, 2, 3, 3)).requires_grad_()
    scale = torch.ones(3, dtype=torch.float64, requires_grad=True)
    op = ops.Conv(weight, (2, 5, 5), padding=1)
    assert not op.sqnorm_bound(scale).requires_grad
    assert not ops.Dense(_weight((3, 4)).requires_grad_(), (4,)).sqnorm_bound().requires_grad


@pytest.mark.parametrize("make", OPERATORS[::2])
def test_sqnorm_power_iteration_is_a_close_lower_bound(make):
    op = make()
    expected = np.linalg.norm(_reference(op), 2) ** 2
    estimate = op.sqnorm()
    assert estimate <= expected * (1 + 1e-12)  # a Rayleigh quotient never exceeds it
    assert estimate == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize(
    "case", [CONV_CASES[1], CONV_CASES[4], CONV_CASES[10], CONV_CASES[17]], ids=str
)
def test_sqnorm_power_iteration_converges_to_the_spectral_norm(case):
    op = _conv(case)  # operators with a clear spectral gap: 300 iterations suffice
    expected = np.linalg.norm(_reference(op), 2) ** 2
    assert op.sqnorm(iterations=300, tol=0.0) == pytest.approx(expected, rel=1e-8)


def test_sqnorm_is_seeded_and_deterministic():
    op = _conv(CONV_CASES[1])
    assert op.sqnorm(seed=3) == op.sqnorm(seed=3)


def test_sqnorm_default_is_accurate_when_top_singular_values_cluster():
    # a plain one-channel 3x3 conv on a 5x5 map: its top squared singular values nearly
    # coincide (the grid's x/y symmetry); one power vector stopped 0.74% low, the block
    # iteration must not
    op = _conv(CONV_CASES[0])
    expected = op.sqnorm(exact=True)
    assert op.sqnorm() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------
# per kind: agreement with torch's own layers
# --------------------------------------------------------------------------
CONVS = [pytest.param(lambda c=c: _conv(c), id=str(c)) for c in CONV_CASES] + [
    pytest.param(lambda c=c: _attribute_conv(c), id=str(c)) for c in CONV_ATTRIBUTE_CASES
]


@pytest.mark.parametrize("make", CONVS)
def test_conv_forward_and_adjoint_are_torch(make):
    op = make()
    x = torch.randn((2, *op.in_shape), dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(
        x,
        op.weight,
        stride=op.stride,
        padding=op.padding,
        dilation=op.dilation,
        groups=op.groups,
    )
    torch.testing.assert_close(op.forward(x), expected, rtol=0, atol=0)
    # the adjoint is the gradient of <A x, y> with respect to x
    y = torch.randn_like(expected)
    (grad,) = torch.autograd.grad((expected * y).sum(), x)
    torch.testing.assert_close(op.adjoint(y), grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", CONVS)
def test_conv_output_padding_in_range(make):
    op = make()
    for value, stride in zip(op.output_padding, op.stride):
        assert 0 <= value < stride


@pytest.mark.parametrize("case", SHORTCUT_CASES, ids=str)
def test_shortcut_is_option_a(case):
    c_in, c_out, h, w, s = case
    op = ops.Shortcut((c_in, h, w), c_out, stride=s)
    x = torch.randn((2, c_in, h, w), dtype=torch.float64)
    out = op.forward(x)
    before = (c_out - c_in) // 2
    torch.testing.assert_close(out[:, before : before + c_in], x[:, :, ::s, ::s])
    assert float(out[:, :before].abs().sum()) == 0.0
    assert float(out[:, before + c_in :].abs().sum()) == 0.0
    assert op.out_shape == (c_out, -(-h // s), -(-w // s))


def test_shortcut_cannot_reduce_channels():
    with pytest.raises(ValueError, match="reduce"):
        ops.Shortcut((3, 4, 4), 2)


@pytest.mark.parametrize("before", [0, 1, 4])
def test_shortcut_pad_before_places_the_kept_channels(before):
    op = ops.Shortcut((2, 5, 5), 6, stride=2, pad_before=before)
    x = torch.randn((2, 2, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = op.forward(x)
    torch.testing.assert_close(out[:, before : before + 2], x[:, :, ::2, ::2])
    assert float(out[:, :before].abs().sum()) == 0.0
    assert float(out[:, before + 2 :].abs().sum()) == 0.0


@pytest.mark.parametrize("before", [-1, 5])
def test_shortcut_pad_before_out_of_range(before):
    with pytest.raises(ValueError, match="pad_before"):
        ops.Shortcut((2, 4, 4), 6, pad_before=before)


def test_conv_empty_map_is_an_error():
    with pytest.raises(ValueError, match="empty map"):
        ops.Conv(_weight((1, 1, 5, 5)), (1, 3, 3), padding=0)


def test_dense_flattens_in_chw_order():
    weight = _weight((3, 2 * 3 * 4))
    op = ops.Dense(weight, (2, 3, 4))
    x = torch.randn((5, 2, 3, 4), dtype=torch.float64)
    torch.testing.assert_close(op.forward(x), F.linear(x.reshape(5, -1), weight))
    assert tuple(op.adjoint(torch.randn(5, 3, dtype=torch.float64)).shape) == (5, 2, 3, 4)


def test_partial_isometries_have_unit_norm():
    for op in (ops.Identity((2, 3, 3)), ops.Shortcut((2, 5, 5), 4, stride=2)):
        assert op.sqnorm() == 1.0
        assert op.sqnorm(exact=True) == pytest.approx(1.0)


# --------------------------------------------------------------------------
# dtypes, batching and autograd
# --------------------------------------------------------------------------
def test_float32_operator_dot_test():
    op = _conv(CONV_CASES[2], dtype=torch.float32)
    assert_dottest(op, rtol=1e-5)
    assert op.forward(torch.randn(2, *op.in_shape)).dtype == torch.float32


def test_batch_is_independent():
    op = _conv(CONV_CASES[4])
    x = torch.randn((4, *op.in_shape), dtype=torch.float64)
    batched = op.forward(x)
    for i in range(4):
        torch.testing.assert_close(batched[i : i + 1], op.forward(x[i : i + 1]))


def test_differentiable_with_respect_to_weight():
    weight = _weight((2, 2, 3, 3)).requires_grad_(True)
    op = ops.Conv(weight, (2, 5, 5), stride=2)
    y = torch.randn((1, *op.out_shape), dtype=torch.float64)
    op.adjoint(y).sum().backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0


def test_calling_an_operator_applies_forward():
    # Operator.__call__ = forward binds the abstract Operator.forward, so op(x) raised
    # NotImplementedError for every kind
    for param in OPERATORS:
        (make,) = param.values
        op = make()
        x = torch.randn((2, *op.in_shape), dtype=torch.float64)
        torch.testing.assert_close(op(x), op.forward(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", OPERATORS[::3])
def test_scaled_operator_is_the_row_scaled_matrix(make):
    """``Scaled(A, s)`` is ``diag(s) A`` (per output channel): dense, sparse, dot test."""
    op = make()
    g = torch.Generator().manual_seed(2)
    scale = torch.rand(op.out_shape[0], generator=g, dtype=torch.float64) + 0.5
    scaled = ops.Scaled(op, scale)
    per_row = np.repeat(scale.numpy(), op.out_size // op.out_shape[0])
    want = per_row[:, None] * _reference(op)
    np.testing.assert_allclose(scaled.todense().double().numpy(), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(scaled.tosparse().toarray(), want, rtol=1e-13, atol=1e-13)
    assert scaled.dottest() < 1e-12
    assert float(scaled.sqnorm_bound()) >= np.linalg.norm(want, 2) ** 2
    with pytest.raises(ValueError, match="shape"):
        ops.Scaled(op, torch.ones(op.out_shape[0] + 1))


def test_conv_bound_of_an_operator_that_reads_only_padding_is_zero():
    """Stride 2 with padding 1 on a 1x1 map: every output reads a zero, A = 0."""
    from deepframe.ops import Conv, conv_sqnorm_bound

    w = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    op = Conv(w, (3, 1, 1), stride=2, padding=1)
    assert float(op.todense().abs().max()) == 0.0
    assert float(conv_sqnorm_bound(w, (1, 1), stride=2, padding=1)) == 0.0
