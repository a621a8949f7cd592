"""Convolutions and 1x1 projections, with the provable norm bound of a strided convolution.

:class:`Conv` is ``conv2d`` with zero padding (adjoint ``conv_transpose2d``),
:class:`Project` its 1x1 case (a ResNet's option-B shortcut; a dense map
between vectors). :func:`conv_sqnorm_bound` bounds ``||A||_2^2`` from the
periodic extension by a polyphase DFT (docs/solvers.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import (
    ROUNDING_MARGIN,
    Operator,
    OpSpec,
    TapStructure,
    _draw_stride,
    _map_shape,
    _scaled_kernel,
    _strides_between,
    _sub_size,
    conv_output_size,
)
from .dense import Dense

__all__ = ["Conv", "Project", "conv_sqnorm_bound"]


def _pair(v) -> tuple:
    """torch's ``int or (int, int)`` argument as a pair."""
    if isinstance(v, int):
        return (v, v)
    return tuple(v) if len(v) == 2 else (v[0], v[0])


def _dft_matrix(period: int, taps: int, rows: int, device) -> torch.Tensor:
    """``exp(-2 pi i u b / period)`` for ``u < rows``, ``b < taps`` (complex128)."""
    u = torch.arange(rows, dtype=torch.float64, device=device)
    b = torch.arange(taps, dtype=torch.float64, device=device)
    return torch.polar(
        torch.ones((), dtype=torch.float64, device=device),
        -2 * math.pi / period * torch.outer(u, b),
    )


def _live_taps(k: torch.Tensor, axis: int, size: int, stride: int, padding: int):
    """Drop the kernel taps (along ``axis``) that only ever meet the zero padding.

    Tap ``a`` of output ``o`` reads input ``s o + a - p``; a tap that reads
    outside ``[0, size)`` for every output multiplies zeros only, so zeroing it
    (and cutting the dead taps at both ends, with the padding reduced to
    ``p' = p - a_lo``) leaves the operator unchanged. Returns the kernel and the
    least period ``m`` for which the periodic embedding of
    :func:`conv_sqnorm_bound` is exact on this axis: ``m >= size + p'`` (the
    data fits after the offset), ``m >= s H_out`` (distinct outputs),
    ``m >= k'`` (the taps fit) and ``m > s (H_out - 1) + a_hi - p`` (the last
    read wraps at most onto the leading zero band).
    """
    taps = k.shape[axis]
    out = conv_output_size(size, taps, stride, padding)
    live = [a for a in range(taps) if any(0 <= stride * o + a - padding < size for o in range(out))]
    if not live:  # every output reads only zero padding: the operator is zero
        return None, 0
    lo, hi = live[0], live[-1]
    mask = torch.zeros(taps, dtype=k.dtype, device=k.device)
    mask[live] = 1
    k = (k * mask.reshape([-1 if d == axis else 1 for d in range(k.dim())])).narrow(
        axis, lo, hi - lo + 1
    )
    m = max(size + padding - lo, stride * out, hi - lo + 1, stride * (out - 1) + hi - padding + 1)
    return k, m


def conv_sqnorm_bound(
    weight: torch.Tensor,
    in_hw: Sequence[int],
    stride: int = 1,
    padding: int = 0,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """A provable upper bound on ``||A||_2^2`` of a zero-padded strided convolution.

    ``A = conv2d(., W, stride=s, padding=p)`` on ``C_in x H x W`` inputs (with
    ``diag(scale)`` applied to the output channels if given). Per axis, take
    ``M`` the smallest multiple of ``s`` with ``M >= H + p``, ``M >= s H_out``
    and ``M >= k``. Then exactly

        A = R S_s C_M E

    where ``E`` places the input at offset ``p`` of an ``M``-periodic grid (an
    isometry), ``C_M`` is the periodic correlation ``(C_M x)[m] = sum_a W[a]
    x[(m + a) mod M]``, ``S_s`` keeps every ``s``-th position and ``R`` keeps
    the first ``H_out`` of the ``M / s`` outputs (norm <= 1). The reads
    ``s o + a`` that fall outside the input land on zeros: those beyond
    ``p + H`` stay below ``M + p`` (since ``(H_out - 1) s + k <= H + 2 p``) and
    wrap onto the zero band ``[0, p)``. Hence ``||A|| <= ||S_s C_M||``, and
    that norm is computed exactly by the polyphase decomposition: with
    ``a = s b + phi``, ``S_s C_M`` is a stride-1 periodic correlation on the
    ``(M / s)``-grid with ``C_in s^2`` input channels (one per phase ``phi``)
    and kernel ``K_phi[b] = W[s b + phi]``, so

        ||S_s C_M||^2 = max_omega lambda_max( Khat(omega) Khat(omega)^H )

    over the ``(M_h / s)(M_w / s)`` coarse frequencies, ``Khat(omega)`` the
    ``C_out x C_in s^2`` matrix of the 2-D DFT of the polyphase kernel. (Half
    the frequencies of the second axis suffice: ``Khat(-omega) =
    conj(Khat(omega))`` has the same singular values.) ``lambda_max`` comes
    from a Hermitian eigensolver on the smaller of ``Khat Khat^H`` and
    ``Khat^H Khat``. Computed in float64, times
    ``1 + ROUNDING_MARGIN``.

    The bound is tight for large maps and loose by the boundary effect on
    small ones (docs/solvers.md reports the ratio on a small ResNet).

    Parameters
    ----------
    weight : torch.Tensor
        ``(C_out, C_in, k_h, k_w)``.
    in_hw : (H, W)
        Spatial size of the input.
    stride, padding : int
    scale : torch.Tensor, optional
        ``(C_out,)`` output-channel scale (batch-norm folding, ``diag(s) A``).

    Returns
    -------
    torch.Tensor
        A 0-dim float64 tensor on the weight's device, detached from autograd.
    """
    k = _scaled_kernel(weight, scale)
    s = int(stride)
    grid = []
    for axis, size in zip((2, 3), in_hw):
        k, m = _live_taps(k, axis, int(size), s, int(padding))
        if k is None:
            return torch.zeros((), dtype=torch.float64, device=weight.device)
        grid.append(-(-m // s))  # M / s with M the smallest multiple of s >= m
    c_out, c_in, kh, kw = k.shape
    bh, bw = -(-kh // s), -(-kw // s)
    k = F.pad(k, (0, bw * s - kw, 0, bh * s - kh))
    # K_phi[o, (i, phi_h, phi_w), b_h, b_w] = W[o, i, s b_h + phi_h, s b_w + phi_w]
    k = k.reshape(c_out, c_in, bh, s, bw, s).permute(0, 1, 3, 5, 2, 4)
    k = k.reshape(c_out, c_in * s * s, bh, bw).to(torch.complex128)
    # The DFT on the coarse grid as two small matrix products (the kernel has only
    # bh x bw taps; a padded FFT costs more), over half the frequencies of the
    # second axis.
    dft_h = _dft_matrix(grid[0], bh, grid[0], k.device)
    dft_w = _dft_matrix(grid[1], bw, grid[1] // 2 + 1, k.device)
    khat = torch.einsum("oiab,ua,vb->uvoi", k, dft_h, dft_w)
    if khat.shape[-2] <= khat.shape[-1]:
        gram = khat @ khat.mH
    else:
        gram = khat.mH @ khat
    top = torch.linalg.eigvalsh(gram)[..., -1].max()
    return top * (1.0 + ROUNDING_MARGIN)


class Conv(Operator):
    """2-D convolution ``A = conv2d(., W, stride, padding)`` (zero padding).

    The adjoint is ``conv_transpose2d`` with the same weight, stride and
    padding and ``output_padding = H + 2p - k - (H' - 1) s`` per axis, which
    lies in ``[0, s)`` and restores the source's exact height and width.

    Parameters
    ----------
    weight : torch.Tensor
        Shape ``(C_out, C_in, k, k)``.
    in_shape : (C_in, H, W)
    stride, padding : int
    """

    kind = "conv"
    draw_weights = (5.0, 0.0)
    grouped_conv = True
    attributes = ("kernel_size", "stride", "padding")
    required_attributes = ("kernel_size",)

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """``F.conv2d`` with a ``k x k`` zero kernel, ``stride`` and ``padding``
        (default ``k // 2``)."""
        k = attrs["kernel_size"]
        weight = x.new_zeros((out_size, x.shape[1], k, k))
        return F.conv2d(
            x, weight, stride=attrs.get("stride", 1), padding=attrs.get("padding", k // 2)
        )

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """``(C_out, floor((H + 2p - k) / s) + 1, ...)`` from a ``(C, H, W)`` source;
        ``kernel_size`` is required, ``stride=1`` and ``padding=kernel_size // 2`` default."""
        if size is None:
            raise ValueError(f"op {cls.kind!r} needs the output size ('channels' or 'features')")
        if len(src) == 3 and size[0] == "channels" and attrs.get("kernel_size") is None:
            raise ValueError("missing attribute 'kernel_size'")
        k = int(attrs.get("kernel_size", 1))
        stride = int(attrs.get("stride", 1))
        return _map_shape(cls.kind, src, size, k, stride, int(attrs.get("padding", k // 2)))

    @classmethod
    def weight_shape(cls, attrs, in_shape, out_shape):
        k = int(attrs["kernel_size"])
        return (out_shape[0], in_shape[0], k, k), in_shape[0] * k * k

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        k = int(attrs["kernel_size"])
        return OpSpec(
            "conv",
            tuple(in_shape),
            tuple(out_shape),
            stride=attrs.get("stride", 1),
            kernel_size=k,
            padding=attrs.get("padding", k // 2),
            weight_key=key,
        )

    @classmethod
    def from_spec(cls, spec, weights):
        return Conv(
            weights[spec.weight_key], spec.in_shape, stride=spec.stride, padding=spec.padding
        )

    @classmethod
    def bound_bytes(cls, spec):
        """The kernel DFT and its Gram of :func:`conv_sqnorm_bound`, complex128, with
        eigvalsh's workspace: 40 bytes per entry (see ``MemoryEstimate.bound``)."""
        k, s, p = spec.kernel_size, spec.stride, spec.padding
        grid = []
        for size, out in zip(spec.in_shape[1:], spec.out_shape[1:]):
            period = max(size + p, s * out, k, s * (out - 1) + k - p)
            grid.append(-(-period // s))
        c_out, c_in = spec.out_shape[0], spec.in_shape[0] * s * s
        m = min(c_out, c_in)
        return 40 * grid[0] * (grid[1] // 2 + 1) * (c_out * c_in + 2 * m * m)

    @classmethod
    def draw(cls, rng, src, limits):
        c = rng.randint(1, limits.max_channels)
        for _ in range(6):
            k = rng.choice(limits.kernel_sizes)
            s = rng.choice(limits.strides)
            default = rng.random() < 0.5
            p = k // 2 if default else rng.randint(0, k)
            h, w = ((n + 2 * p - k) // s + 1 for n in src[1:])
            if 1 <= h <= limits.max_size and 1 <= w <= limits.max_size:
                attrs: dict[str, Any] = {"kernel_size": k}
                if s != 1 or rng.random() < 0.3:
                    attrs["stride"] = s
                if not default or rng.random() < 0.3:
                    attrs["padding"] = p
                return attrs, (c, h, w)
        return None

    @classmethod
    def between(cls, rng, src, dst, limits):
        if len(src) != 3 or len(dst) != 3:
            return []
        found = [
            (k, s, p)
            for k in limits.kernel_sizes
            for s in limits.strides
            for p in range(k + 1)
            if all((n + 2 * p - k) // s + 1 == m for n, m in zip(src[1:], dst[1:]))
        ]
        if not found:
            return []
        k, s, p = rng.choice(found)
        return [{"kernel_size": k, "stride": s, "padding": p}]

    @classmethod
    def read_torch(
        cls, weight: torch.Tensor, stride, padding, dilation, groups, padding_mode="zeros"
    ) -> tuple[int, int]:
        """``(stride, padding)`` of the kind for ``conv2d(x, weight, ...)`` as torch
        states it (``nn.Conv2d``'s attributes or ``F.conv2d``'s arguments).

        Raises
        ------
        ValueError
            ``"<what>; <hint>"``: arguments the kind cannot represent.
        """
        if groups != 1:
            raise ValueError(f"grouped convolution (groups={groups}); only groups=1 is supported")
        if _pair(dilation) != (1, 1):
            raise ValueError(f"dilated convolution (dilation={dilation}); only dilation=1")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode={padding_mode!r}; only zero padding is supported")
        if weight.dim() != 4:
            raise ValueError(f"a conv weight of shape {tuple(weight.shape)}; only 2-D convolutions")
        k = weight.shape[-1]
        if weight.shape[-2] != k:
            raise ValueError(f"a non-square kernel {tuple(weight.shape[-2:])}; square kernels")
        s = _pair(stride)
        if s[0] != s[1]:
            raise ValueError(f"stride {stride}; equal strides along both axes are supported")
        if padding == "valid":
            p = (0, 0)
        elif padding == "same":
            if k % 2 == 0 or s[0] != 1:
                raise ValueError("padding='same' with an even kernel or a stride; use numbers")
            p = (k // 2, k // 2)
        else:
            p = _pair(padding)
        if p[0] != p[1]:
            raise ValueError(f"padding {padding}; equal padding along both axes is supported")
        return s[0], p[0]

    @classmethod
    def torch_edge(cls, weight, src_shape, *, stride=1, padding=0, **unused):
        """A ``conv`` edge: ``kernel_size`` and ``padding`` always, ``stride`` when not 1."""
        attrs = {"op": Conv.kind, "kernel_size": int(weight.shape[-1]), "padding": int(padding)}
        if stride != 1:
            attrs["stride"] = int(stride)
        return attrs, weight

    @classmethod
    def torch_subsampled(cls, stride, step):
        """A stride-``r`` convolution subsampled by ``s`` is the stride-``r s`` one."""
        return Conv, stride * step

    def __init__(
        self,
        weight: torch.Tensor,
        in_shape: Sequence[int],
        stride: int = 1,
        padding: int | None = None,
    ):
        c_out, c_in, kh, kw = weight.shape
        if padding is None:
            padding = kh // 2
        c, h, w = (int(s) for s in in_shape)
        if c != c_in:
            raise ValueError(f"Conv: weight expects {c_in} input channels, in_shape has {c}")
        ho = conv_output_size(h, kh, stride, padding)
        wo = conv_output_size(w, kw, stride, padding)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv: {in_shape} with kernel {kh}x{kw}, stride {stride}, "
                f"padding {padding} gives an empty map"
            )
        super().__init__((c, h, w), (c_out, ho, wo))
        self.weight = weight
        self.stride = int(stride)
        self.padding = int(padding)
        self.kernel_size = (int(kh), int(kw))
        self.output_padding = (
            h + 2 * padding - kh - (ho - 1) * stride,
            w + 2 * padding - kw - (wo - 1) * stride,
        )

    def forward(self, x):
        return F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)

    def taps(self):
        """A learned channel map over ``k_h x k_w`` taps with this stride and padding."""
        return TapStructure(self.kernel_size, self.stride, self.padding)

    def with_weight(self, weight):
        return Conv(weight, self.in_shape, stride=self.stride, padding=self.padding)

    def sqnorm_bound(self, scale=None):
        """The periodic-extension bound :func:`conv_sqnorm_bound` (``>= ||A||_2^2``)."""
        return conv_sqnorm_bound(
            self.weight, self.in_shape[1:], self.stride, self.padding, scale=scale
        )

    def change_norm_bound(self, delta):
        """``sum_b ||K_b||_F >= ||A(delta)||_2``: the polyphase tap-sum bound.

        Split the kernel taps ``(a_h, a_w)`` into coarse taps ``b`` and phases
        ``phi`` (``a = s b + phi`` per axis, ``ceil(k / s)^2`` coarse taps) and
        let ``K_b`` be the ``C_out x C_in s^2`` matrix ``K_b[o, (i, phi)] =
        delta[o, i, s b + phi]``. Then ``A(delta) = sum_b A_b``, where ``A_b``
        keeps the taps of coarse tap ``b``: output position ``o`` reads input
        ``s (o + b) + phi - p`` through phase ``phi``, and these positions are
        distinct for distinct ``(o, phi)`` (``phi < s``), or fall into the
        zero padding. So ``A_b = (K_b (x) I) Q_b`` with ``Q_b`` a partial
        permutation of the input entries into ``C_in s^2`` channels times the
        output grid (norm <= 1), and ``||A_b|| <= ||K_b||_2 <= ||K_b||_F``; the
        triangle inequality sums them. With a stride this is tighter than the
        per-tap bound ``sum_a ||delta[:, :, a]||_2 <= sqrt(k^2) ||delta||_F``
        (the phases of one coarse tap share one matrix:
        ``||[M_1, ..., M_r]||_2 <= sqrt(sum ||M_phi||^2) <= sum ||M_phi||``), and
        for ``s = 1`` it is ``sum_a ||delta[:, :, a]||_F <= k ||delta||_F``.
        Frobenius instead of spectral norms: no SVD, one reduction (float64).
        """
        k = delta.detach().to(torch.float64)
        s = self.stride
        c_out, c_in, kh, kw = k.shape
        bh, bw = -(-kh // s), -(-kw // s)
        k = F.pad(k, (0, bw * s - kw, 0, bh * s - kh)).reshape(c_out, c_in, bh, s, bw, s)
        return torch.linalg.vector_norm(k, dim=(0, 1, 3, 5)).sum()

    def adjoint(self, y):
        return F.conv_transpose2d(
            y,
            self.weight,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
        )

    def tosparse(self):
        """Sparse matrix of the convolution built from index arithmetic (no probing)."""
        import numpy as np
        import scipy.sparse as sp

        c_out, c_in, kh, kw = self.weight.shape
        _, h, w = self.in_shape
        _, ho, wo = self.out_shape
        o, i, a, b, y, x = np.meshgrid(
            np.arange(c_out),
            np.arange(c_in),
            np.arange(kh),
            np.arange(kw),
            np.arange(ho),
            np.arange(wo),
            indexing="ij",
        )
        src_y = y * self.stride - self.padding + a
        src_x = x * self.stride - self.padding + b
        keep = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
        rows = ((o * ho + y) * wo + x)[keep]
        cols = ((i * h + src_y) * w + src_x)[keep]
        vals = self.weight.detach().cpu().numpy()[o[keep], i[keep], a[keep], b[keep]]
        return sp.csr_array(sp.coo_array((vals, (rows, cols)), shape=(self.out_size, self.in_size)))


class Project(Conv):
    """Learned 1x1 convolution with a stride: the projection shortcut (option B).

    A :class:`Conv` with ``kernel_size=1`` and ``padding=0``. (A projection
    between dense activations is an ordinary :class:`Dense` operator.)
    """

    kind = "project"
    draw_weights = (2.0, 2.0)

    attributes = ("stride",)
    required_attributes = ()

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """A 1x1 ``F.conv2d`` with ``stride`` on a map, ``F.linear`` on a vector."""
        if x.dim() == 2:
            return F.linear(x, x.new_zeros((out_size, x.shape[1])))
        weight = x.new_zeros((out_size, x.shape[1], 1, 1))
        return F.conv2d(x, weight, stride=attrs.get("stride", 1))

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """1x1 with ``stride``: ``(C_out, ceil(H / s), ceil(W / s))``; between dense
        activations ``(d_out,)``."""
        if size is None:
            raise ValueError(f"op {cls.kind!r} needs the output size ('channels' or 'features')")
        if len(src) == 1:
            if size[0] != "features":
                raise ValueError("a project op from a dense source must go to 'features'")
            return (size[1],)
        return _map_shape(cls.kind, src, size, 1, int(attrs.get("stride", 1)), 0)

    @classmethod
    def weight_shape(cls, attrs, in_shape, out_shape):
        if len(in_shape) == 1:
            return Dense.weight_shape(attrs, in_shape, out_shape)
        return (out_shape[0], in_shape[0], 1, 1), in_shape[0]

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        if len(in_shape) == 1:  # between dense activations: a dense operator
            return Dense.spec(attrs, in_shape, out_shape, key)
        return OpSpec(
            "project",
            tuple(in_shape),
            tuple(out_shape),
            stride=attrs.get("stride", 1),
            weight_key=key,
        )

    @classmethod
    def from_spec(cls, spec, weights):
        return Project(weights[spec.weight_key], spec.in_shape, stride=spec.stride)

    @classmethod
    def draw(cls, rng, src, limits):
        if len(src) == 1:
            return {}, (rng.randint(1, limits.max_features),)
        c = rng.randint(1, limits.max_channels)
        s, attrs = _draw_stride(rng, limits)
        return attrs, (c, _sub_size(src[1], s), _sub_size(src[2], s))

    @classmethod
    def between(cls, rng, src, dst, limits):
        if len(dst) == 1:
            return [{}] if len(src) == 1 else []
        if len(src) != 3:
            return []
        return [{"stride": s} for s in _strides_between(src, dst, limits.strides)]

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int], stride: int = 1):
        if weight.shape[-2:] != (1, 1):
            raise ValueError(f"Project: weight must be 1x1, got {tuple(weight.shape)}")
        super().__init__(weight, in_shape, stride=stride, padding=0)

    def with_weight(self, weight):
        return Project(weight, self.in_shape, stride=self.stride)
