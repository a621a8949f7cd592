"""The parameter-free edge kinds: the identity and the option-A shortcut."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import (
    ROUNDING_MARGIN,
    Operator,
    OpSpec,
    TapStructure,
    _draw_stride,
    _map_shape,
    _strides_between,
    _sub_size,
)
from .conv import Conv
from .dense import Dense

__all__ = ["Identity", "Shortcut", "selection_matrix"]


def selection_matrix(
    in_channels: int, out_channels: int, pad_before: int, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """The channel map of a selection: ``M[c + pad_before, c] = scale[c + pad_before]``
    (1 without a scale), ``(out_channels, in_channels)`` float64."""
    m = torch.zeros((out_channels, in_channels), dtype=torch.float64)
    index = torch.arange(in_channels)
    if scale is None:
        scale = torch.ones(out_channels, dtype=torch.float64)
    m[index + pad_before, index] = scale[index + pad_before]
    return m


def _scaled_selection(src_shape, out_channels, stride, pad_before, scale):
    """A selection scaled per output channel: a learned 1x1 conv (or a dense map between
    vectors) whose weight is the scaled selection."""
    weight = selection_matrix(src_shape[0], out_channels, pad_before, scale)
    if len(src_shape) == 1:
        return Dense.torch_edge(weight, src_shape)
    return Conv.torch_edge(weight[:, :, None, None], src_shape, stride=stride, padding=0)


class Identity(Operator):
    """The identity between two activations of the same shape (``||I||^2 = 1``)."""

    kind = "identity"
    draw_weights = (2.0, 1.0)

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """The source's shape; a declared size must be the source's."""
        if size is not None:
            key, value = size
            if (key == "channels") != (len(src) == 3) or value != src[0]:
                raise ValueError(
                    f"identity needs equal shapes, but the source has shape {src} "
                    f"and the destination declares {key}={value}"
                )
        return src

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        return OpSpec("identity", tuple(in_shape), tuple(out_shape))

    @classmethod
    def from_spec(cls, spec, weights):
        return Identity(spec.in_shape)

    @classmethod
    def draw(cls, rng, src, limits):
        return {}, src

    @classmethod
    def between(cls, rng, src, dst, limits):
        return [{}] if src == dst else []

    reduces_channels = False

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """``x`` itself."""
        return x

    @classmethod
    def torch_edge(cls, weight, src_shape, *, out_channels=0, scale=None, **unused):
        """An ``identity`` edge, or with a ``scale`` the learned map ``diag(scale)``."""
        if scale is not None:
            return _scaled_selection(src_shape, out_channels, 1, 0, scale)
        return {"op": Identity.kind}, None

    @classmethod
    def torch_subsampled(cls, stride, step):
        """Subsampling a map is the option-A shortcut's subsampling (no padding)."""
        return Shortcut, stride * step

    def __init__(self, shape: Sequence[int]):
        super().__init__(shape, shape)

    def taps(self):
        """One tap, channel ``c`` reads channel ``c`` (on ``(C, H, W)`` maps)."""
        return TapStructure((1, 1), 1, 0, shift=0) if self._conv_like() else None

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    def sqnorm(self, **kwargs) -> float:
        return 1.0

    def sqnorm_bound(self, scale=None):
        """``||diag(scale)||^2 = max(scale^2)`` (exactly 1 without a scale)."""
        if scale is None:
            return torch.ones((), dtype=torch.float64)
        return scale.detach().to(torch.float64).square().max() * (1.0 + ROUNDING_MARGIN)

    def tosparse(self):
        import scipy.sparse as sp

        return sp.eye_array(self.in_size, format="csr")


class Shortcut(Operator):
    """Parameter-free "option A" ResNet shortcut: subsample, then zero-pad channels.

    ``forward(x) = pad_channels(x[:, :, ::s, ::s])`` with ``pad_before`` zero
    channels before (default ``(C_out - C_in) // 2``) and the rest after; output
    size ``ceil(H / s)``, the same as a stride-``s`` 3x3 convolution with padding
    1. The adjoint takes the kept channels and scatters them back onto the
    subsampled grid (zeros elsewhere). It is a partial isometry, so
    ``||A||^2 = 1``.
    """

    kind = "shortcut"
    draw_weights = (2.0, 0.0)

    @classmethod
    def shape_rule(cls, attrs, src, size):
        """``(C_out, ceil(H / s), ceil(W / s))`` with ``C_out >= C`` and
        ``pad_before <= C_out - C``."""
        if size is None:
            raise ValueError(f"op {cls.kind!r} needs the output size ('channels' or 'features')")
        if len(src) == 3 and size[0] == "channels":
            value = size[1]
            if value < src[0]:
                raise ValueError(f"a shortcut cannot reduce {src[0]} channels to {value}")
            if "pad_before" in attrs and attrs["pad_before"] > value - src[0]:
                raise ValueError(
                    f"pad_before={attrs['pad_before']} exceeds the {value - src[0]} "
                    f"channels the shortcut adds ({src[0]} -> {value})"
                )
        return _map_shape(cls.kind, src, size, 1, int(attrs.get("stride", 1)), 0)

    @classmethod
    def default_size(cls, src):
        """Into a node-centric node: as many channels as the source."""
        return ("channels", src[0]) if len(src) == 3 else None

    @classmethod
    def spec(cls, attrs, in_shape, out_shape, key):
        return OpSpec(
            "shortcut",
            tuple(in_shape),
            tuple(out_shape),
            stride=attrs.get("stride", 1),
            pad_before=attrs.get("pad_before"),
        )

    @classmethod
    def from_spec(cls, spec, weights):
        return Shortcut(
            spec.in_shape, spec.out_shape[0], stride=spec.stride, pad_before=spec.pad_before
        )

    @classmethod
    def draw(cls, rng, src, limits):
        rng.randint(1, limits.max_channels)  # the draw a learned 1x1 map makes, kept aligned
        s, attrs = _draw_stride(rng, limits)
        c = rng.randint(src[0], max(src[0], limits.max_channels))
        return attrs, (c, _sub_size(src[1], s), _sub_size(src[2], s))

    @classmethod
    def between(cls, rng, src, dst, limits):
        if len(src) != 3 or len(dst) != 3 or dst[0] < src[0]:
            return []
        return [{"stride": s} for s in _strides_between(src, dst, limits.strides)]

    attributes = ("stride", "pad_before")
    reduces_channels = False

    @classmethod
    def torch_reference(cls, attrs, x, out_size):
        """``F.max_pool2d`` with a 1x1 window and ``stride`` (the subsampling), then
        ``F.pad`` of the channels (``pad_before`` in front, default half)."""
        sub = F.max_pool2d(x, kernel_size=1, stride=attrs.get("stride", 1))
        before = attrs.get("pad_before", (out_size - x.shape[1]) // 2)
        return F.pad(sub, (0, 0, 0, 0, before, out_size - x.shape[1] - before))

    @classmethod
    def torch_edge(
        cls, weight, src_shape, *, stride=1, out_channels=0, pad_before=0, scale=None, **unused
    ):
        """A ``shortcut`` edge (``pad_before`` when not the default), an ``identity``
        when it neither subsamples nor pads, the learned selection with a ``scale``."""
        if scale is not None:
            return _scaled_selection(src_shape, out_channels, stride, pad_before, scale)
        c_in = src_shape[0]
        if stride == 1 and out_channels == c_in:
            return Identity.torch_edge(None, src_shape)
        attrs = {"op": Shortcut.kind, "stride": int(stride)}
        if pad_before != (out_channels - c_in) // 2:
            attrs["pad_before"] = int(pad_before)
        return attrs, None

    @classmethod
    def torch_subsampled(cls, stride, step):
        """Subsampling a shortcut's output: the shortcut with stride ``r s``."""
        return Shortcut, stride * step

    def __init__(
        self,
        in_shape: Sequence[int],
        out_channels: int,
        stride: int = 1,
        pad_before: int | None = None,
    ):
        c, h, w = (int(s) for s in in_shape)
        if out_channels < c:
            raise ValueError(f"Shortcut: cannot reduce {c} channels to {out_channels}")
        if pad_before is None:
            pad_before = (out_channels - c) // 2
        if not 0 <= pad_before <= out_channels - c:
            raise ValueError(
                f"Shortcut: pad_before={pad_before} must lie in [0, {out_channels - c}] "
                f"({c} -> {out_channels} channels)"
            )
        self.stride = int(stride)
        self.pad_before = int(pad_before)
        super().__init__((c, h, w), (out_channels, -(-h // stride), -(-w // stride)))

    def forward(self, x):
        c = self.in_shape[0]
        sub = x[:, :, :: self.stride, :: self.stride]
        after = self.out_shape[0] - c - self.pad_before
        return F.pad(sub, (0, 0, 0, 0, self.pad_before, after))

    def taps(self):
        """One tap with this stride; output channel ``c`` reads ``c - pad_before``."""
        return TapStructure((1, 1), self.stride, 0, shift=self.pad_before)

    def adjoint(self, y):
        c, h, w = self.in_shape
        kept = y[:, self.pad_before : self.pad_before + c]
        if self.stride == 1:
            return kept
        out = y.new_zeros((y.shape[0], c, h, w))
        out[:, :, :: self.stride, :: self.stride] = kept
        return out

    def sqnorm(self, **kwargs) -> float:
        return 1.0

    def sqnorm_bound(self, scale=None):
        """A partial isometry selecting at least one entry of each kept channel:
        ``||A||^2 = 1``, and ``max(scale^2)`` over the kept channels with a scale."""
        if scale is None:
            return torch.ones((), dtype=torch.float64)
        kept = scale.detach().to(torch.float64)[
            self.pad_before : self.pad_before + self.in_shape[0]
        ]
        return kept.square().max() * (1.0 + ROUNDING_MARGIN)

    def tosparse(self):
        import numpy as np
        import scipy.sparse as sp

        c, h, w = self.in_shape
        co, ho, wo = self.out_shape
        ch, y, x = np.meshgrid(np.arange(c), np.arange(ho), np.arange(wo), indexing="ij")
        rows = (((ch + self.pad_before) * ho + y) * wo + x).ravel()
        cols = ((ch * h + y * self.stride) * w + x * self.stride).ravel()
        return sp.csr_array(
            sp.coo_array((np.ones(rows.size), (rows, cols)), shape=(self.out_size, self.in_size))
        )
