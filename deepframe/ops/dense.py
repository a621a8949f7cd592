"""The fully connected map ``A x = W vec(x)`` (a conv source is flattened)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import ROUNDING_MARGIN, Operator, OpSpec, _dense_shape, _scaled_kernel

__all__ = ["Dense"]


class Dense(Operator):
    """Fully connected map ``A x = W vec(x)``; a conv source is flattened (C, H, W order).

    Parameters
    ----------
    weight : torch.Tensor
        Shape ``(features_out, prod(in_shape))``.
    in_shape : tuple of int
    """

    kind = "dense"
    draw_weights = (1.0, 3.0)

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """``(d_out,)`` from any source (a conv source is flattened)."""
        if size is None:
            raise ValueError(f"op {cls.kind!r} needs the output size ('channels' or 'features')")
        return _dense_shape(cls.kind, size)

    @classmethod
    def weight_shape(cls, attrs, in_shape, out_shape):
        d_in = math.prod(in_shape)
        return (out_shape[0], d_in), d_in

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        return OpSpec("dense", tuple(in_shape), tuple(out_shape), weight_key=key)

    @classmethod
    def from_spec(cls, spec, weights):
        return Dense(weights[spec.weight_key], spec.in_shape)

    @classmethod
    def bound_bytes(cls, spec):
        """Three float64 copies of the matrix (the SVD of :meth:`sqnorm_bound`)."""
        return 3 * 8 * math.prod(spec.in_shape) * spec.out_shape[0]

    @classmethod
    def draw(cls, rng, src, limits):
        return {}, (rng.randint(1, limits.max_features),)

    @classmethod
    def between(cls, rng, src, dst, limits):
        return [{}] if len(dst) == 1 else []

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """``F.linear`` of the flattened input."""
        flat = x.flatten(1)
        return F.linear(flat, flat.new_zeros((out_size, flat.shape[1])))

    @classmethod
    def torch_edge(cls, weight, src_shape, **unused):
        """A ``dense`` edge; the weight flattened to ``(d_out, prod(src_shape))``."""
        return {"op": Dense.kind}, weight.reshape(weight.shape[0], -1)

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int]):
        d_out, d_in = weight.shape
        if math.prod(in_shape) != d_in:
            raise ValueError(
                f"Dense: weight expects {d_in} inputs, in_shape {tuple(in_shape)} "
                f"has {math.prod(in_shape)}"
            )
        super().__init__(in_shape, (d_out,))
        self.weight = weight

    def forward(self, x):
        return x.flatten(1) @ self.weight.T

    def adjoint(self, y):
        return (y @ self.weight).reshape(y.shape[0], *self.in_shape)

    def with_weight(self, weight):
        return Dense(weight, self.in_shape)

    def sqnorm_bound(self, scale=None):
        """``sigma_max(diag(scale) W)^2`` from an SVD in float64 (exact up to the margin)."""
        top = torch.linalg.matrix_norm(_scaled_kernel(self.weight, scale), ord=2)
        return top.square() * (1.0 + ROUNDING_MARGIN)

    def change_norm_bound(self, delta):
        """``||delta||_F >= ||delta||_2`` (float64)."""
        return torch.linalg.vector_norm(delta.detach().to(torch.float64))

    def todense(self):
        return self.weight.detach()

    def tosparse(self):
        import scipy.sparse as sp

        return sp.csr_array(self.weight.detach().cpu().numpy())
