"""Convolutions and 1x1 projections, with the provable norm bound of a strided convolution.

:class:`Conv` is ``conv2d`` with zero padding (adjoint ``conv_transpose2d``),
with everything torchvision's convolutions use: per-axis kernel sizes,
strides, paddings and dilations, and ``groups`` (grouped and depthwise
convolutions). :class:`Project` is its 1x1 case (a ResNet's option-B
shortcut; a dense map between vectors). :func:`conv_sqnorm_bound` bounds
``||A||_2^2`` from the periodic extension by a polyphase DFT, group by group
(docs/solvers.md).
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
    _axes_text,
    _map_shape,
    _scaled_kernel,
    _sub_size,
    conv_output_size,
    pair,
)
from .dense import Dense

__all__ = ["Conv", "Project", "conv_sqnorm_bound", "block_diagonal", "dilated_kernel"]

_pair = pair  # torch's ``int or (int, int)`` argument as a pair


def _compact(values: tuple[int, int]):
    """A per-axis attribute as a graph writes it: one integer when both axes agree,
    else the list ``[height, width]`` (what node-link JSON reads back)."""
    return int(values[0]) if values[0] == values[1] else [int(values[0]), int(values[1])]


def default_padding(kernel_size, dilation=1) -> tuple[int, int]:
    """The conv edge's padding when the graph names none: ``d (k // 2)`` per axis,
    which keeps the map's size at stride 1 for an odd kernel (``k // 2`` without
    dilation)."""
    k, d = pair(kernel_size), pair(dilation)
    return (d[0] * (k[0] // 2), d[1] * (k[1] // 2))


def block_diagonal(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight of a ``groups``-grouped convolution as an ungrouped one.

    ``(C_out, C_in / g, k_h, k_w) -> (C_out, C_in, k_h, k_w)``: output channel
    ``o`` of group ``o // (C_out / g)`` keeps its weights on the input channels
    of that group and is zero on all others, so ``conv2d(x, W, groups=g) =
    conv2d(x, block_diagonal(W, g))``. Differentiable; ``weight`` itself for
    ``g = 1``.
    """
    if groups == 1:
        return weight
    c_out, c_in_group = weight.shape[:2]
    w = weight.reshape(groups, c_out // groups, c_in_group, *weight.shape[2:])
    eye = torch.eye(groups, dtype=weight.dtype, device=weight.device)
    full = torch.einsum("goi...,gh->gohi...", w, eye)
    return full.reshape(c_out, groups * c_in_group, *weight.shape[2:])


def dilated_kernel(weight: torch.Tensor, dilation) -> torch.Tensor:
    """The kernel of a dilated convolution as an undilated one: ``d - 1`` zero taps
    between neighbouring taps, ``(.., k_h, k_w) -> (.., d_h (k_h - 1) + 1, d_w (k_w - 1) + 1)``,
    so ``conv2d(x, W, dilation=d) = conv2d(x, dilated_kernel(W, d))``."""
    dh, dw = pair(dilation)
    if (dh, dw) == (1, 1):
        return weight
    kh, kw = weight.shape[-2:]
    out = weight.new_zeros((*weight.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    out[..., ::dh, ::dw] = weight
    return out


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
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    scale: torch.Tensor | None = None,
    *,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """A provable upper bound on ``||A||_2^2`` of a zero-padded strided convolution.

    ``A = conv2d(., W, stride=s, padding=p, dilation=d, groups=g)`` on ``C_in x
    H x W`` inputs (with ``diag(scale)`` applied to the output channels if
    given); ``s``, ``p`` and ``d`` per axis.

    *Groups and dilation* first, both exactly. The channels of group ``j``
    (inputs ``j C_in / g ..``, outputs ``j C_out / g ..``) meet no other
    group's, so ``A`` is the direct sum of the ``g`` convolutions ``A_j`` of
    the weight blocks ``W_j`` and ``||A|| = max_j ||A_j||``: the bound is the
    largest of the per-group bounds below. A dilated convolution is the
    undilated one of the kernel with ``d - 1`` zero taps between its taps
    (:func:`dilated_kernel`), which the bound reads.

    *One group*, axis by axis: take ``M`` the smallest multiple of ``s`` with
    ``M >= H + p``, ``M >= s H_out`` and ``M >= k``. Then exactly

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
    ``(M / s)``-grid with ``C_in s_h s_w`` input channels (one per phase ``phi``)
    and kernel ``K_phi[b] = W[s b + phi]``, so

        ||S_s C_M||^2 = max_omega lambda_max( Khat(omega) Khat(omega)^H )

    over the ``(M_h / s_h)(M_w / s_w)`` coarse frequencies, ``Khat(omega)`` the
    ``C_out x C_in s_h s_w`` matrix of the 2-D DFT of the polyphase kernel. (Half
    the frequencies of the second axis suffice: ``Khat(-omega) =
    conj(Khat(omega))`` has the same singular values.) ``lambda_max`` comes
    from a Hermitian eigensolver on the smaller of ``Khat Khat^H`` and
    ``Khat^H Khat``, batched over the groups. Computed in float64, times
    ``1 + ROUNDING_MARGIN``.

    The bound is tight for large maps and loose by the boundary effect on
    small ones (docs/solvers.md reports the ratio on a small ResNet).

    Parameters
    ----------
    weight : torch.Tensor
        ``(C_out, C_in / groups, k_h, k_w)``.
    in_hw : (H, W)
        Spatial size of the input.
    stride, padding : int or (int, int)
    scale : torch.Tensor, optional
        ``(C_out,)`` output-channel scale (batch-norm folding, ``diag(s) A``).
    dilation : int or (int, int)
    groups : int

    Returns
    -------
    torch.Tensor
        A 0-dim float64 tensor on the weight's device, detached from autograd.
    """
    k = dilated_kernel(_scaled_kernel(weight, scale), dilation)
    strides, paddings = pair(stride), pair(padding)
    grid = []
    for axis, size in zip((2, 3), in_hw):
        s = strides[axis - 2]
        k, m = _live_taps(k, axis, int(size), s, paddings[axis - 2])
        if k is None:
            return torch.zeros((), dtype=torch.float64, device=weight.device)
        grid.append(-(-m // s))  # M / s with M the smallest multiple of s >= m
    c_out, c_in, kh, kw = k.shape  # c_in: the input channels of one group
    sh, sw = strides
    bh, bw = -(-kh // sh), -(-kw // sw)
    k = F.pad(k, (0, bw * sw - kw, 0, bh * sh - kh))
    # K_phi[j, o, (i, phi_h, phi_w), b_h, b_w] = W_j[o, i, s_h b_h + phi_h, s_w b_w + phi_w]
    k = k.reshape(c_out, c_in, bh, sh, bw, sw).permute(0, 1, 3, 5, 2, 4)
    k = k.reshape(groups, c_out // groups, c_in * sh * sw, bh, bw).to(torch.complex128)
    # The DFT on the coarse grid as two small matrix products (the kernel has only
    # bh x bw taps; a padded FFT costs more), over half the frequencies of the
    # second axis.
    dft_h = _dft_matrix(grid[0], bh, grid[0], k.device)
    dft_w = _dft_matrix(grid[1], bw, grid[1] // 2 + 1, k.device)
    khat = torch.einsum("goiab,ua,vb->uvgoi", k, dft_h, dft_w)
    if khat.shape[-2] <= khat.shape[-1]:
        gram = khat @ khat.mH
    else:
        gram = khat.mH @ khat
    top = torch.linalg.eigvalsh(gram)[..., -1].max()
    return top * (1.0 + ROUNDING_MARGIN)


def _check_groups(name: str, groups: int, c_in: int, c_out: int) -> None:
    """``groups`` must divide both channel counts (torch's rule)."""
    if c_in % groups or c_out % groups:
        raise ValueError(
            f"op {name!r} with groups={groups} needs channels divisible by {groups}, but it "
            f"maps {c_in} input channels to {c_out} output channels"
        )


def _divisors(n: int) -> list[int]:
    return [g for g in range(2, n + 1) if n % g == 0]


class Conv(Operator):
    """2-D convolution ``A = conv2d(., W, stride, padding, dilation, groups)`` (zero padding).

    ``stride``, ``padding`` and ``dilation`` are per axis (an integer means
    both), the kernel ``k_h x k_w`` may be non-square, and ``groups`` splits
    the channels into that many independent blocks (``groups = C_in``: a
    depthwise convolution). The adjoint is ``conv_transpose2d`` with the same
    weight, stride, padding, dilation and groups and ``output_padding = H + 2p
    - d (k - 1) - 1 - (H' - 1) s`` per axis, which lies in ``[0, s)`` and
    restores the source's exact height and width.

    Parameters
    ----------
    weight : torch.Tensor
        Shape ``(C_out, C_in / groups, k_h, k_w)``.
    in_shape : (C_in, H, W)
    stride : int or (int, int)
    padding : int or (int, int), optional
        Default ``d (k // 2)`` per axis (:func:`default_padding`).
    dilation : int or (int, int)
    groups : int
    """

    kind = "conv"
    draw_weights = (5.0, 0.0)
    grouped_conv = True
    attributes = ("kernel_size", "stride", "padding", "dilation", "groups")
    pair_attributes = ("kernel_size", "stride", "padding", "dilation")
    required_attributes = ("kernel_size",)

    @classmethod
    def _read(cls, attrs) -> tuple:
        """``(kernel, stride, padding, dilation, groups)`` of graph attributes, per axis."""
        k = pair(attrs.get("kernel_size", 1))
        d = pair(attrs.get("dilation", 1))
        p = pair(attrs["padding"]) if "padding" in attrs else default_padding(k, d)
        return k, pair(attrs.get("stride", 1)), p, d, int(attrs.get("groups", 1))

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """``F.conv2d`` with a ``k_h x k_w`` zero kernel, ``stride``, ``dilation``,
        ``groups`` and ``padding`` (default ``dilation * (k // 2)``)."""
        k = pair(attrs["kernel_size"])
        d = pair(attrs.get("dilation", 1))
        g = attrs.get("groups", 1)
        weight = x.new_zeros((out_size, x.shape[1] // g, *k))
        padding = attrs.get("padding", (d[0] * (k[0] // 2), d[1] * (k[1] // 2)))
        return F.conv2d(
            x, weight, stride=attrs.get("stride", 1), padding=padding, dilation=d, groups=g
        )

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """``(C_out, floor((H + 2p - d (k - 1) - 1) / s) + 1, ...)`` per axis from a
        ``(C, H, W)`` source; ``kernel_size`` is required, ``stride=1``,
        ``dilation=1``, ``groups=1`` and ``padding=dilation * (kernel_size // 2)``
        default; ``groups`` must divide both channel counts."""
        if size is None:
            raise ValueError(f"op {cls.kind!r} needs the output size ('channels' or 'features')")
        if len(src) == 3 and size[0] == "channels" and attrs.get("kernel_size") is None:
            raise ValueError("missing attribute 'kernel_size'")
        k, stride, padding, dilation, groups = cls._read(attrs)
        shape = _map_shape(cls.kind, src, size, k, stride, padding, dilation)
        _check_groups(cls.kind, groups, src[0], shape[0])
        return shape

    @classmethod
    def weight_shape(cls, attrs, in_shape, out_shape):
        k, *_, groups = cls._read(attrs)
        c_in = in_shape[0] // groups
        return (out_shape[0], c_in, *k), c_in * k[0] * k[1]

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        k, stride, padding, dilation, groups = cls._read(attrs)
        return OpSpec(
            "conv",
            tuple(in_shape),
            tuple(out_shape),
            stride=stride,
            kernel_size=k,
            padding=padding,
            weight_key=key,
            dilation=dilation,
            groups=groups,
        )

    @classmethod
    def from_spec(cls, spec, weights):
        return Conv(
            weights[spec.weight_key],
            spec.in_shape,
            stride=spec.stride,
            padding=spec.padding,
            dilation=spec.dilation,
            groups=spec.groups,
        )

    @classmethod
    def bound_bytes(cls, spec):
        """The kernel DFT and its Gram of :func:`conv_sqnorm_bound`, complex128, with
        eigvalsh's workspace, for every group: 40 bytes per entry (see
        ``MemoryEstimate.bound``)."""
        k, s, p, d = (pair(v) for v in (spec.kernel_size, spec.stride, spec.padding, spec.dilation))
        grid = []
        for axis, (size, out) in enumerate(zip(spec.in_shape[1:], spec.out_shape[1:])):
            span = d[axis] * (k[axis] - 1) + 1
            period = max(size + p[axis], s[axis] * out, span, s[axis] * (out - 1) + span - p[axis])
            grid.append(-(-period // s[axis]))
        groups = spec.groups
        c_out = spec.out_shape[0] // groups
        c_in = spec.in_shape[0] // groups * s[0] * s[1]
        m = min(c_out, c_in)
        return 40 * grid[0] * (grid[1] // 2 + 1) * groups * (c_out * c_in + 2 * m * m)

    @classmethod
    def draw(cls, rng, src, limits):
        """Kernel sizes from ``limits.kernel_sizes`` and strides from ``limits.strides``
        (now and then different per axis), dilation 1 or 2, the default or an explicit
        padding, and now and then ``groups`` dividing the source's channels
        (depthwise when it equals them)."""
        divisors = _divisors(src[0])
        groups = rng.choice(divisors) if divisors and rng.random() < 0.3 else 1
        if groups > limits.max_channels:
            groups = 1
        c = groups * rng.randint(1, max(1, limits.max_channels // groups))
        for _ in range(6):
            kh = rng.choice(limits.kernel_sizes)
            kw = kh if rng.random() < 0.75 else rng.choice(limits.kernel_sizes)
            sh = rng.choice(limits.strides)
            sw = sh if rng.random() < 0.8 else rng.choice(limits.strides)
            d = (1, 1) if rng.random() < 0.75 else (rng.choice((1, 2)), rng.choice((1, 2)))
            default = rng.random() < 0.5
            if default:
                p = default_padding((kh, kw), d)
            else:
                ph = rng.randint(0, kh)
                p = (ph, ph if rng.random() < 0.75 else rng.randint(0, kw))
            h, w = (
                conv_output_size(n, k, s, q, e)
                for n, k, s, q, e in zip(src[1:], (kh, kw), (sh, sw), p, d)
            )
            if 1 <= h <= limits.max_size and 1 <= w <= limits.max_size:
                attrs: dict[str, Any] = {"kernel_size": _compact((kh, kw))}
                if (sh, sw) != (1, 1) or rng.random() < 0.3:
                    attrs["stride"] = _compact((sh, sw))
                if not default or rng.random() < 0.3:
                    attrs["padding"] = _compact(p)
                if d != (1, 1) or rng.random() < 0.1:
                    attrs["dilation"] = _compact(d)
                if groups != 1 or rng.random() < 0.1:
                    attrs["groups"] = groups
                return attrs, (c, h, w)
        return None

    @classmethod
    def between(cls, rng, src, dst, limits):
        if len(src) != 3 or len(dst) != 3:
            return []
        per_axis = []
        for n, m in zip(src[1:], dst[1:]):
            per_axis.append(
                [
                    (k, s, p, d)
                    for k in limits.kernel_sizes
                    for s in limits.strides
                    for d in (1, 2)
                    for p in range(d * (k - 1) + 2)
                    if conv_output_size(n, k, s, p, d) == m
                ]
            )
        if not per_axis[0] or not per_axis[1]:
            return []
        square = [c for c in per_axis[0] if c in per_axis[1] and c[3] == 1]
        if square and rng.random() < 0.6:
            (k, s, p, d) = rng.choice(square)
            options = ((k, s, p, d), (k, s, p, d))
        else:
            options = (rng.choice(per_axis[0]), rng.choice(per_axis[1]))
        (kh, sh, ph, dh), (kw, sw, pw, dw) = options
        attrs: dict[str, Any] = {
            "kernel_size": _compact((kh, kw)),
            "stride": _compact((sh, sw)),
            "padding": _compact((ph, pw)),
        }
        if (dh, dw) != (1, 1):
            attrs["dilation"] = _compact((dh, dw))
        common = [g for g in _divisors(src[0]) if dst[0] % g == 0]
        if common and rng.random() < 0.3:
            attrs["groups"] = rng.choice(common)
        return [attrs]

    @classmethod
    def read_torch(
        cls, weight: torch.Tensor, stride, padding, dilation, groups, padding_mode="zeros"
    ) -> dict:
        """The attributes of the kind for ``conv2d(x, weight, ...)`` as torch states it
        (``nn.Conv2d``'s attributes or ``F.conv2d``'s arguments): ``{"stride",
        "padding", "dilation"}`` as ``(height, width)`` pairs and ``"groups"``.

        Raises
        ------
        ValueError
            ``"<what>; <hint>"``: arguments the kind cannot represent.
        """
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode={padding_mode!r}; only zero padding is supported")
        if weight.dim() != 4:
            raise ValueError(f"a conv weight of shape {tuple(weight.shape)}; only 2-D convolutions")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups={groups!r}; a positive integer")
        if weight.shape[0] % groups:
            raise ValueError(
                f"groups={groups} with {weight.shape[0]} output channels; groups must divide them"
            )
        k = tuple(int(v) for v in weight.shape[-2:])
        s, d = pair(stride), pair(dilation)
        if padding == "valid":
            p = (0, 0)
        elif padding == "same":
            span = [d[i] * (k[i] - 1) for i in (0, 1)]
            if any(v % 2 for v in span) or s != (1, 1):
                raise ValueError(
                    f"padding='same' with kernel {k}, dilation {d} and stride {s} pads unequally "
                    "on the two sides; give the padding as numbers"
                )
            p = (span[0] // 2, span[1] // 2)
        else:
            p = pair(padding)
        return {"stride": s, "padding": p, "dilation": d, "groups": int(groups)}

    @classmethod
    def torch_edge(cls, weight, src_shape, *, stride=1, padding=0, dilation=1, groups=1, **unused):
        """A ``conv`` edge: ``kernel_size`` and ``padding`` always, ``stride``,
        ``dilation`` and ``groups`` when not 1 (a pair ``[h, w]`` where the axes differ)."""
        attrs = {
            "op": Conv.kind,
            "kernel_size": _compact(tuple(weight.shape[-2:])),
            "padding": _compact(pair(padding)),
        }
        if pair(stride) != (1, 1):
            attrs["stride"] = _compact(pair(stride))
        if pair(dilation) != (1, 1):
            attrs["dilation"] = _compact(pair(dilation))
        if groups != 1:
            attrs["groups"] = int(groups)
        return attrs, weight

    @classmethod
    def torch_subsampled(cls, stride, step):
        """A stride-``r`` convolution subsampled by ``s`` is the stride-``r s`` one."""
        r = pair(stride)
        return Conv, (r[0] * step, r[1] * step)

    def __init__(
        self,
        weight: torch.Tensor,
        in_shape: Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | None = None,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
    ):
        c_out, c_in_group, kh, kw = weight.shape
        stride, dilation, groups = pair(stride), pair(dilation), int(groups)
        padding = default_padding((kh, kw), dilation) if padding is None else pair(padding)
        c, h, w = (int(s) for s in in_shape)
        if groups < 1 or c % groups or c_out % groups:
            raise ValueError(
                f"Conv: groups={groups} must divide the {c} input and {c_out} output channels"
            )
        if c_in_group * groups != c:
            raise ValueError(
                f"Conv: weight expects {c_in_group * groups} input channels, in_shape has {c}"
            )
        ho = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
        wo = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv: {in_shape} with kernel {kh}x{kw}, stride {_axes_text(stride)}, "
                f"padding {_axes_text(padding)}, dilation {_axes_text(dilation)} gives an "
                "empty map"
            )
        super().__init__((c, h, w), (c_out, ho, wo))
        self.weight = weight
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.kernel_size = (int(kh), int(kw))
        self.output_padding = tuple(
            n + 2 * p - d * (k - 1) - 1 - (o - 1) * s
            for n, p, d, k, o, s in zip(
                (h, w), padding, dilation, self.kernel_size, (ho, wo), stride
            )
        )

    def _options(self) -> dict:
        return {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }

    def forward(self, x):
        return F.conv2d(x, self.weight, **self._options())

    def taps(self):
        """A learned channel map (``groups`` blocks) over ``k_h x k_w`` taps with this
        stride, padding and dilation."""
        return TapStructure(
            self.kernel_size, self.stride, self.padding, dilation=self.dilation, groups=self.groups
        )

    def with_weight(self, weight):
        return Conv(weight, self.in_shape, **self._options())

    def sqnorm_bound(self, scale=None):
        """The periodic-extension bound :func:`conv_sqnorm_bound` (``>= ||A||_2^2``)."""
        return conv_sqnorm_bound(
            self.weight,
            self.in_shape[1:],
            self.stride,
            self.padding,
            scale=scale,
            dilation=self.dilation,
            groups=self.groups,
        )

    def change_norm_bound(self, delta):
        """``max_j sum_b ||K_jb||_F >= ||A(delta)||_2``: the polyphase tap-sum bound.

        The groups ``j`` are independent blocks of ``A(delta)`` (see
        :func:`conv_sqnorm_bound`), so its norm is the largest of theirs; a
        dilated kernel is read as the undilated one with zero taps between
        (:func:`dilated_kernel`, whose zeros add nothing below). Within one
        group, split the kernel taps ``(a_h, a_w)`` into coarse taps ``b`` and
        phases ``phi`` (``a = s b + phi`` per axis, ``ceil(k_h / s_h)
        ceil(k_w / s_w)`` coarse taps) and let ``K_b`` be the ``C_out x C_in
        s_h s_w`` matrix ``K_b[o, (i, phi)] = delta[o, i, s b + phi]``. Then
        ``A(delta) = sum_b A_b``, where ``A_b`` keeps the taps of coarse tap
        ``b``: output position ``o`` reads input ``s (o + b) + phi - p`` through
        phase ``phi``, and these positions are distinct for distinct ``(o,
        phi)`` (``phi < s``), or fall into the zero padding. So ``A_b = (K_b (x)
        I) Q_b`` with ``Q_b`` a partial permutation of the input entries into
        ``C_in s_h s_w`` channels times the output grid (norm <= 1), and
        ``||A_b|| <= ||K_b||_2 <= ||K_b||_F``; the triangle inequality sums
        them. With a stride this is tighter than the per-tap bound ``sum_a
        ||delta[:, :, a]||_2 <= sqrt(k^2) ||delta||_F`` (the phases of one
        coarse tap share one matrix: ``||[M_1, ..., M_r]||_2 <= sqrt(sum
        ||M_phi||^2) <= sum ||M_phi||``), and for ``s = 1`` it is ``sum_a
        ||delta[:, :, a]||_F <= k ||delta||_F``. Frobenius instead of spectral
        norms: no SVD, one reduction (float64).
        """
        k = dilated_kernel(delta.detach().to(torch.float64), self.dilation)
        sh, sw = self.stride
        c_out, c_in, kh, kw = k.shape
        bh, bw = -(-kh // sh), -(-kw // sw)
        k = F.pad(k, (0, bw * sw - kw, 0, bh * sh - kh))
        k = k.reshape(self.groups, c_out // self.groups, c_in, bh, sh, bw, sw)
        return torch.linalg.vector_norm(k, dim=(1, 2, 4, 6)).sum(dim=(1, 2)).max()

    def adjoint(self, y):
        return F.conv_transpose2d(
            y,
            self.weight,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
            groups=self.groups,
            dilation=self.dilation,
        )

    def tosparse(self):
        """Sparse matrix of the convolution built from index arithmetic (no probing)."""
        import numpy as np
        import scipy.sparse as sp

        c_out, c_in, kh, kw = self.weight.shape  # c_in: the input channels of one group
        _, h, w = self.in_shape
        _, ho, wo = self.out_shape
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        o, i, a, b, y, x = np.meshgrid(
            np.arange(c_out),
            np.arange(c_in),
            np.arange(kh),
            np.arange(kw),
            np.arange(ho),
            np.arange(wo),
            indexing="ij",
        )
        src_y = y * sh - ph + a * dh
        src_x = x * sw - pw + b * dw
        src_c = (o // (c_out // self.groups)) * c_in + i
        keep = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
        rows = ((o * ho + y) * wo + x)[keep]
        cols = ((src_c * h + src_y) * w + src_x)[keep]
        vals = self.weight.detach().cpu().numpy()[o[keep], i[keep], a[keep], b[keep]]
        return sp.csr_array(sp.coo_array((vals, (rows, cols)), shape=(self.out_size, self.in_size)))


class Project(Conv):
    """Learned 1x1 convolution with a stride: the projection shortcut (option B).

    A :class:`Conv` with ``kernel_size=1`` and ``padding=0``; ``stride`` per
    axis, ``groups`` as for a convolution. (A projection between dense
    activations is an ordinary :class:`Dense` operator.)
    """

    kind = "project"
    draw_weights = (2.0, 2.0)

    attributes = ("stride", "groups")
    pair_attributes = ("stride",)
    required_attributes = ()

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """A 1x1 ``F.conv2d`` with ``stride`` and ``groups`` on a map, ``F.linear`` on a
        vector."""
        if x.dim() == 2:
            return F.linear(x, x.new_zeros((out_size, x.shape[1])))
        g = attrs.get("groups", 1)
        weight = x.new_zeros((out_size, x.shape[1] // g, 1, 1))
        return F.conv2d(x, weight, stride=attrs.get("stride", 1), groups=g)

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """1x1 with ``stride``: ``(C_out, ceil(H / s_h), ceil(W / s_w))``, ``groups``
        dividing both channel counts; between dense activations ``(d_out,)``."""
        if size is None:
            raise ValueError(f"op {cls.kind!r} needs the output size ('channels' or 'features')")
        groups = int(attrs.get("groups", 1))
        if len(src) == 1:
            if size[0] != "features":
                raise ValueError("a project op from a dense source must go to 'features'")
            if groups != 1:
                raise ValueError(
                    f"groups={groups} on a project between dense activations; groups apply "
                    "to a project between (C, H, W) maps only"
                )
            return (size[1],)
        shape = _map_shape(cls.kind, src, size, 1, pair(attrs.get("stride", 1)), 0)
        _check_groups(cls.kind, groups, src[0], shape[0])
        return shape

    @classmethod
    def weight_shape(cls, attrs, in_shape, out_shape):
        if len(in_shape) == 1:
            return Dense.weight_shape(attrs, in_shape, out_shape)
        c_in = in_shape[0] // int(attrs.get("groups", 1))
        return (out_shape[0], c_in, 1, 1), c_in

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        if len(in_shape) == 1:  # between dense activations: a dense operator
            return Dense.spec(attrs, in_shape, out_shape, key)
        return OpSpec(
            "project",
            tuple(in_shape),
            tuple(out_shape),
            stride=pair(attrs.get("stride", 1)),
            kernel_size=(1, 1),
            padding=(0, 0),
            weight_key=key,
            dilation=(1, 1),
            groups=int(attrs.get("groups", 1)),
        )

    @classmethod
    def from_spec(cls, spec, weights):
        return Project(
            weights[spec.weight_key], spec.in_shape, stride=spec.stride, groups=spec.groups
        )

    @classmethod
    def draw(cls, rng, src, limits):
        if len(src) == 1:
            return {}, (rng.randint(1, limits.max_features),)
        c = rng.randint(1, limits.max_channels)
        sh = rng.choice(limits.strides)
        sw = sh if rng.random() < 0.8 else rng.choice(limits.strides)
        attrs: dict[str, Any] = {}
        if (sh, sw) != (1, 1) or rng.random() < 0.3:
            attrs["stride"] = _compact((sh, sw))
        common = [g for g in _divisors(src[0]) if g <= limits.max_channels]
        if common and rng.random() < 0.2:
            attrs["groups"] = groups = rng.choice(common)
            c = groups * max(1, c // groups)
        return attrs, (c, _sub_size(src[1], sh), _sub_size(src[2], sw))

    @classmethod
    def between(cls, rng, src, dst, limits):
        if len(dst) == 1:
            return [{}] if len(src) == 1 else []
        if len(src) != 3:
            return []
        strides = [
            [s for s in limits.strides if _sub_size(n, s) == m] for n, m in zip(src[1:], dst[1:])
        ]
        common = [g for g in _divisors(src[0]) if dst[0] % g == 0]
        found = []
        for sh in strides[0]:
            for sw in strides[1]:
                attrs: dict[str, Any] = {"stride": _compact((sh, sw))}
                if common and rng.random() < 0.3:
                    attrs["groups"] = rng.choice(common)
                found.append(attrs)
        return found

    def __init__(
        self,
        weight: torch.Tensor,
        in_shape: Sequence[int],
        stride: int | Sequence[int] = 1,
        groups: int = 1,
    ):
        if weight.shape[-2:] != (1, 1):
            raise ValueError(f"Project: weight must be 1x1, got {tuple(weight.shape)}")
        super().__init__(weight, in_shape, stride=stride, padding=0, groups=groups)

    def with_weight(self, weight):
        return Project(weight, self.in_shape, stride=self.stride, groups=self.groups)
