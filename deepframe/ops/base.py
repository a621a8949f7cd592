"""The operator base class, its weight-independent descriptions and the registry of edge kinds.

Every operator ``A`` maps a *source* activation (shape ``in_shape``) to a
*destination* pre-activation (shape ``out_shape``). :class:`Operator` states
the interface every edge kind implements (the two maps, the norm bound, the
class-level hooks that describe the kind from graph attributes) and the parts
shared by all (dense and sparse export, power-iteration norm, dot test).
:class:`OpSpec` is an operator described before any weight exists,
:class:`TapStructure` the per-axis reading pattern the structured Gram needs.
:data:`EDGE_KINDS` is the registry (:func:`register_edge_kind`,
:func:`edge_kind`); the shape rules several kinds share are here too.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .linalg import dot_test, power_iteration

Shape = tuple[int, ...]

__all__ = [
    "ROUNDING_MARGIN",
    "EDGE_KINDS",
    "register_edge_kind",
    "edge_kind",
    "OpSpec",
    "TapStructure",
    "Operator",
    "conv_output_size",
    "pair",
]


# Relative margin on every squared-norm bound. The bounds are computed in float64
# (an FFT, a Gram matrix, a Hermitian eigensolver or an SVD); each step has a
# backward error of a small multiple of n * 2^-53 relative to the norm, at most
# ~1e-13 for the sizes used here, so 1e-10 covers the rounding with room to spare
# while changing no step size by a measurable amount. Without it a bound that is
# attained exactly (a 1x1 convolution, a dense layer) could round below the
# true value.
ROUNDING_MARGIN = 1e-10


def conv_output_size(
    size: int, kernel_size: int, stride: int, padding: int, dilation: int = 1
) -> int:
    """Spatial size after a convolution: ``floor((size + 2 p - d (k - 1) - 1) / s) + 1``
    (``floor((size + 2 p - k) / s) + 1`` without dilation).

    May be ``<= 0``; callers treat that as an empty map.
    """
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def pair(value) -> tuple[int, int]:
    """``(height, width)`` of a per-axis attribute given as one integer or a pair
    (torch's ``int or (int, int)``; JSON gives a list). Values are not checked here:
    :func:`deepframe.validate` type-checks graph attributes."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != 2:
            raise ValueError(f"expected one integer or a pair (height, width), got {value!r}")
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


def _axes_text(values: tuple[int, int]) -> str:
    """``3`` for ``(3, 3)``, ``(3, 5)`` otherwise: a per-axis value in messages."""
    return str(values[0]) if values[0] == values[1] else f"({values[0]}, {values[1]})"


def _scaled_kernel(weight: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``diag(scale) W`` in float64, detached (scale on the output-channel axis)."""
    w = weight.detach().to(torch.float64)
    if scale is None:
        return w
    return w * scale.detach().to(w).reshape(-1, *([1] * (w.dim() - 1)))


# --------------------------------------------------------------------------
# weight-independent descriptions
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class OpSpec:
    """A weight-independent description of one operator of a term.

    Made by the edge kind's :meth:`Operator.spec` from graph attributes;
    :meth:`build` asks the registry for the class of ``kind`` (the operator
    kind, which differs from the graph's ``op`` for a ``project`` edge between
    dense activations: ``kind="dense"``).
    """

    kind: str
    in_shape: tuple
    out_shape: tuple
    stride: int | tuple[int, int] = 1
    kernel_size: int | tuple[int, int] = 1
    padding: int | tuple[int, int] = 0
    weight_key: str | None = None
    pad_before: int | None = None
    dilation: int | tuple[int, int] = 1
    groups: int = 1

    def build(self, weights: Mapping[str, torch.Tensor]) -> Operator:
        """The operator with its weight taken from ``weights`` (under :attr:`weight_key`)."""
        return edge_kind(self.kind).from_spec(self, weights)

    def bound_bytes(self) -> int:
        """Bytes the operator's :meth:`Operator.sqnorm_bound` works in (memory estimates)."""
        return edge_kind(self.kind).bound_bytes(self)


@dataclass(frozen=True)
class TapStructure:
    """How an operator between two ``(C, H, W)`` maps reads its source, axis by axis.

    Every such edge kind is a (possibly strided, dilated, zero-padded, grouped)
    correlation ``(A x)[c, o_h, o_w] = sum_{c', a, b} K[c, c', a, b] x[c', s_h o_h
    - p_h + d_h a, s_w o_w - p_w + d_w b]`` whose channel map ``K`` is either
    learned (the weight, ``shift is None``; block diagonal with ``groups``
    blocks: output channel ``c`` of group ``c // (C_out / groups)`` reads only
    the input channels of that group) or a fixed selection: output channel
    ``c`` reads input channel ``c - shift`` when that exists (identity
    ``shift = 0``, the option-A shortcut ``shift = pad_before``). The structured
    Gram of :mod:`deepframe.geometry` (docs/geometry.md) only needs this
    description: which residual position an atom position reaches through
    which tap (:meth:`incidence`) and which channels can meet
    (:meth:`selection`, :meth:`channel_pattern`).

    Attributes
    ----------
    kernel_size : (k_h, k_w)
        Taps per axis.
    stride, padding, dilation : (int, int)
        Per axis (height, width); an integer given for any of them means both axes.
    shift : int or None
        ``None`` for a learned channel map, else the channel offset of the selection.
    groups : int
        Blocks of a learned channel map (1: every input channel meets every output).
    """

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    shift: int | None = None
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self):
        for name in ("kernel_size", "stride", "padding", "dilation"):
            object.__setattr__(self, name, pair(getattr(self, name)))

    @property
    def learned(self) -> bool:
        """Whether the channel map is the learned weight (else a fixed selection)."""
        return self.shift is None

    def incidence(self, axis: int, size: int, res_size: int, transposed: bool):
        """``inc[y, alpha]``: the residual index atom position ``y`` reaches through tap
        ``alpha`` along ``axis`` (0: height, 1: width), or -1 (zero padding).

        A column block ``D_t[a]`` of node ``a`` in term ``t`` is ``A^T``
        (``transposed=True``, node ``a`` synthesised: ``y`` indexes the
        operator's *output*, ``size`` its length, and ``u = s y - p + d alpha``)
        or ``-A`` (``transposed=False``, node ``a`` a target: ``y`` indexes the
        operator's *input* and ``u`` solves ``s u - p + d alpha = y``). ``res_size``
        is the length of the residual (the other side) along ``axis``.

        Returns
        -------
        numpy.ndarray
            ``(size, k_axis)`` int64, entries in ``[0, res_size)`` or ``-1``.
        """
        import numpy as np

        s, p, d = self.stride[axis], self.padding[axis], self.dilation[axis]
        y = np.arange(size)[:, None]
        a = np.arange(self.kernel_size[axis])[None, :] * d
        if transposed:
            u = y * s - p + a
            ok = np.ones_like(u, dtype=bool)
        else:
            num = y + p - a
            ok = num % s == 0
            u = num // s
        ok &= (u >= 0) & (u < res_size)
        return np.where(ok, u, -1)

    def selection(self, node_channels: int, res_channels: int, transposed: bool):
        """``sel[c]``: the residual channel node channel ``c`` meets, or -1; ``None``
        for a learned channel map.

        ``transposed`` as in :meth:`incidence`: node channels are the
        operator's output channels (``sel[c] = c - shift``) or its input
        channels (``sel[c] = c + shift``).
        """
        if self.shift is None:
            return None
        import numpy as np

        sel = np.arange(node_channels) + (-self.shift if transposed else self.shift)
        return np.where((sel >= 0) & (sel < res_channels), sel, -1)

    def channel_pattern(self, node_channels: int, res_channels: int, transposed: bool):
        """``(node_channels, res_channels)`` bool: which channel pairs the map can join.

        A learned map: its ``groups`` diagonal blocks (all pairs for one group);
        a selection: ``c`` with :meth:`selection`'s ``sel[c]``.
        """
        import numpy as np

        if self.shift is None:
            node_group = np.arange(node_channels) // (node_channels // self.groups)
            res_group = np.arange(res_channels) // (res_channels // self.groups)
            return node_group[:, None] == res_group[None, :]
        sel = self.selection(node_channels, res_channels, transposed)
        return (sel[:, None] == np.arange(res_channels)[None, :]) & (sel[:, None] >= 0)


# --------------------------------------------------------------------------
# the registry of edge kinds
# --------------------------------------------------------------------------
#: ``{op name: Operator subclass}``: every edge kind a graph may name, in
#: registration order (:data:`deepframe.graph.EDGE_OPS` lists the names).
EDGE_KINDS: dict[str, type[Operator]] = {}


def register_edge_kind(cls: type[Operator]) -> type[Operator]:
    """Class decorator: register an :class:`Operator` subclass as edge kind ``cls.kind``.

    The class must implement the maps (``forward``, ``adjoint``,
    ``sqnorm_bound``) and the class-level hooks of its kind
    (:meth:`Operator.shape_rule`, :meth:`Operator.spec`,
    :meth:`Operator.from_spec`, :meth:`Operator.draw`,
    :meth:`Operator.between`; :meth:`Operator.weight_shape`,
    :meth:`Operator.bound_bytes`, :meth:`Operator.taps` and
    :meth:`Operator.with_weight` for a parametrised or conv-like kind).
    """
    name = cls.kind
    if not isinstance(name, str) or not name or name == Operator.kind:
        raise ValueError(f"register_edge_kind: {cls.__name__} needs its own string 'kind'")
    if name in EDGE_KINDS and EDGE_KINDS[name] is not cls:
        raise ValueError(
            f"register_edge_kind: kind {name!r} is already {EDGE_KINDS[name].__name__}"
        )
    EDGE_KINDS[name] = cls
    return cls


def edge_kind(name: Any) -> type[Operator]:
    """The registered class of edge kind ``name``.

    Raises
    ------
    ValueError
        ``name`` is not a string or not registered; the message lists the kinds.
    """
    if not isinstance(name, str):
        raise ValueError(f"attribute 'op' must be a string, got {name!r}")
    try:
        return EDGE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; expected one of {tuple(EDGE_KINDS)}") from None


def _map_shape(name: str, src: Shape, size, k, stride, padding, dilation=1) -> Shape:
    """Shape rule shared by the kinds between ``(C, H, W)`` maps (conv arithmetic);
    ``k``, ``stride``, ``padding`` and ``dilation`` are integers or per-axis pairs."""
    key, value = size
    if len(src) != 3:
        raise ValueError(f"op {name!r} needs a (C, H, W) source, got shape {src}")
    if key != "channels":
        raise ValueError(
            f"op {name!r} produces a conv activation; the destination must declare "
            f"'channels', not 'features'"
        )
    k, stride, padding, dilation = pair(k), pair(stride), pair(padding), pair(dilation)
    h, w = (conv_output_size(src[1 + i], k[i], stride[i], padding[i], dilation[i]) for i in (0, 1))
    if h < 1 or w < 1:
        dilated = "" if dilation == (1, 1) else f", dilation {_axes_text(dilation)}"
        raise ValueError(
            f"op {name!r} (kernel {_axes_text(k)}, stride {_axes_text(stride)}, padding "
            f"{_axes_text(padding)}{dilated}) shrinks the {src[1]}x{src[2]} map to nothing "
            f"({h}x{w})"
        )
    return (value, h, w)


def _dense_shape(name: str, size) -> Shape:
    key, value = size
    if key != "features":
        raise ValueError(
            f"a {name} op produces a dense activation; the destination must "
            f"declare 'features', not 'channels'"
        )
    return (value,)


def _sub_size(size: int, stride: int) -> int:
    """``ceil(size / stride)``: the length a stride-``s`` 1x1 map keeps."""
    return -(-size // stride)


def _draw_stride(rng, limits) -> tuple[int, dict]:
    """A stride from ``limits.strides`` and the attributes that state it (sometimes
    also the default 1)."""
    s = rng.choice(limits.strides)
    return s, ({"stride": s} if (s != 1 or rng.random() < 0.3) else {})


def _strides_between(src: Shape, dst: Shape, strides: Sequence[int]) -> list[int]:
    """Strides ``s`` with ``ceil(src / s) == dst`` on both axes (1x1 maps)."""
    return [s for s in strides if _sub_size(src[1], s) == dst[1] and _sub_size(src[2], s) == dst[2]]


class Operator(ABC):
    """A linear map between two activation shapes.

    Subclasses implement :meth:`forward` and :meth:`adjoint`; everything else
    (norm, dense and sparse export, dot test) is shared. A subclass registered
    with :func:`register_edge_kind` is an *edge kind*: its class-level hooks
    (:meth:`shape_rule`, :meth:`weight_shape`, :meth:`spec`, :meth:`from_spec`,
    :meth:`bound_bytes`, :meth:`draw`, :meth:`between`) describe the kind from
    graph attributes, before any weight exists.

    Attributes
    ----------
    in_shape, out_shape : tuple of int
        Shapes of one source / destination sample (no batch dimension).
    weight : torch.Tensor or None
        The learned parameter, or ``None`` for parameter-free operators.
    """

    kind: str = "operator"
    weight: torch.Tensor | None = None

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape: Shape = tuple(int(s) for s in in_shape)
        self.out_shape: Shape = tuple(int(s) for s in out_shape)

    # -- the edge kind, from graph attributes (class-level hooks) -------------
    @classmethod
    def shape_rule(cls, attrs: Mapping, src: Shape, size: tuple[str, int] | None) -> Shape:
        """Output shape of this kind with attributes ``attrs`` applied to ``src``.

        ``size`` is the destination's declared ``("channels", C)`` or
        ``("features", d)``, ``None`` when it declares none. Integer attributes
        are type-checked by :func:`deepframe.validate` before this is called.

        Raises
        ------
        ValueError
            The kind cannot map ``src`` onto ``size`` (the message names what;
            the caller prefixes where).
        """
        raise NotImplementedError(f"{cls.__name__}.shape_rule: implement the kind's shape rule")

    @classmethod
    def default_size(cls, src: Shape) -> tuple[str, int] | None:
        """The output size an edge into a node-centric node has when it declares none
        (``None``: the identity's "same as the source")."""
        return None

    @classmethod
    def weight_shape(
        cls, attrs: Mapping, in_shape: Shape, out_shape: Shape
    ) -> tuple[Shape, int] | None:
        """``(weight shape, fan_in)`` of the learned weight, ``None`` if parameter-free."""
        return None

    @classmethod
    def spec(cls, attrs: Mapping, in_shape: Shape, out_shape: Shape, key: str) -> OpSpec:
        """The weight-independent :class:`OpSpec` of an edge (or node operator) of this
        kind with graph attributes ``attrs``; ``key`` names its weight."""
        raise NotImplementedError(f"{cls.__name__}.spec: describe the kind from attributes")

    @classmethod
    def from_spec(cls, spec: OpSpec, weights: Mapping[str, torch.Tensor]) -> Operator:
        """The operator of ``spec`` with its weight from ``weights``."""
        raise NotImplementedError(f"{cls.__name__}.from_spec: build the kind from its spec")

    @classmethod
    def bound_bytes(cls, spec: OpSpec) -> int:
        """Bytes :meth:`sqnorm_bound` works in for ``spec`` (0: nothing beyond a scalar)."""
        return 0

    @classmethod
    def draw(cls, rng, src: Shape, limits) -> tuple[dict, Shape] | None:
        """Draw attributes of this kind applicable to ``src``: ``(attrs, out_shape)`` or
        ``None`` (the test generators, :func:`deepframe.testing.random_architecture`).

        ``rng`` has ``randint`` / ``random`` / ``choice``; ``limits`` has
        ``max_channels``, ``max_features``, ``max_size``, ``kernel_sizes`` and
        ``strides``. ``attrs`` holds the kind's own attributes, not the output size.
        """
        raise NotImplementedError(f"{cls.__name__}.draw: draw the kind for the generators")

    @classmethod
    def between(cls, rng, src: Shape, dst: Shape, limits) -> list[dict]:
        """Every attribute set (at most a drawn few) of this kind mapping ``src`` onto
        exactly ``dst``: the generators' skip edges."""
        raise NotImplementedError(f"{cls.__name__}.between: list the kind's maps src -> dst")

    #: Whether operators of this kind that agree in shapes, stride, kernel size and
    #: padding apply together as one grouped ``conv2d`` of their concatenated weights
    #: (the Jacobi sweep of :mod:`deepframe.solvers` groups them).
    grouped_conv: ClassVar[bool] = False

    #: The integer attributes the kind reads from a graph (``kernel_size``, ...).
    attributes: ClassVar[tuple[str, ...]] = ()
    #: Those of :attr:`attributes` a graph may give per axis: one integer (both axes) or
    #: a pair ``[height, width]`` (a conv's ``kernel_size``, ``stride``, ...).
    pair_attributes: ClassVar[tuple[str, ...]] = ()
    #: The attributes it cannot do without (a conv needs its ``kernel_size``).
    required_attributes: ClassVar[tuple[str, ...]] = ()
    #: Whether its shape rule allows fewer output channels than input channels.
    reduces_channels: ClassVar[bool] = True

    #: ``(conv source, dense source)``: how often the generators try this kind after
    #: a ``(C, H, W)`` / a ``(d,)`` activation (0: never).
    draw_weights: ClassVar[tuple[float, float]] = (0.0, 0.0)

    # -- the kind in a PyTorch model (deepframe.interop, deepframe.testing) ---
    @classmethod
    def torch_reference(cls, attrs: Mapping, x: torch.Tensor, out_size: int) -> torch.Tensor:
        """The kind's map with attributes ``attrs`` on the batch ``x``, computed by
        ``torch.nn.functional`` with zero weights, for ``out_size`` output channels
        (features).

        Written apart from :meth:`shape_rule` and the operator classes: the test
        helpers (:func:`deepframe.testing.torch_forward`) check the shape rule
        against what torch computes.
        """
        raise NotImplementedError(f"{cls.__name__}.torch_reference: the kind's map in torch")

    @classmethod
    def torch_edge(
        cls,
        weight: torch.Tensor | None,
        src_shape: Shape,
        *,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        out_channels: int = 0,
        pad_before: int = 0,
        scale: torch.Tensor | None = None,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
    ) -> tuple[dict, torch.Tensor | None]:
        """The graph attributes (``op`` included) and the weight of an edge of this kind
        that computes a map read from a PyTorch model (:func:`deepframe.from_torch`).

        ``weight`` is the map's weight in torch's layout (``None`` for a
        parameter-free kind), ``src_shape`` its source's shape; ``stride``,
        ``padding``, ``dilation`` (integers or per-axis pairs), ``groups``,
        ``out_channels`` and ``pad_before`` describe it as the importer read
        it; ``scale`` is a per-output-channel factor a batch norm
        put on a parameter-free map. The edge may be of another kind when that
        states the same map more simply (an option-A shortcut that neither
        subsamples nor pads is an identity; a scaled selection is a learned 1x1
        map with the selection as its weight).
        """
        raise NotImplementedError(f"{cls.__name__}.torch_edge: write the kind as an edge")

    @classmethod
    def torch_subsampled(cls, stride: int, step: int) -> tuple[type[Operator], int]:
        """``(kind, stride)`` of this kind's map (with ``stride``) followed by the
        subsampling ``x[:, :, ::step, ::step]`` of its output, as an edge kind.

        Raises
        ------
        ValueError
            The kind's output is not a feature map that subsampling applies to.
        """
        raise ValueError(f"op {cls.kind!r}: its output cannot be subsampled as a feature map")

    # -- the operator's structure ---------------------------------------------
    def taps(self) -> TapStructure | None:
        """The per-axis tap structure of an operator between two ``(C, H, W)`` maps,
        ``None`` for any other (a dense map, or a map touching a vector): the
        description the structured Gram reads (:class:`TapStructure`)."""
        return None

    def with_weight(self, weight: torch.Tensor) -> Operator:
        """The same operator with another weight (parameter-free kinds: itself)."""
        if self.weight is None:
            return self
        raise NotImplementedError(f"{type(self).__name__}.with_weight: rebuild with a weight")

    def unscaled(self) -> tuple[Operator, torch.Tensor | None]:
        """``(A, s)`` for ``diag(s) A`` (:class:`Scaled`); ``(self, None)`` otherwise."""
        return self, None

    def _conv_like(self) -> bool:
        return len(self.in_shape) == 3 and len(self.out_shape) == 3

    # -- the two maps -------------------------------------------------------
    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The analysis map ``A x``: ``(B, *in_shape) -> (B, *out_shape)``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The exact adjoint ``A^T y``: ``(B, *out_shape) -> (B, *in_shape)``."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    # -- derived ------------------------------------------------------------
    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    def _like(self) -> tuple[torch.dtype, torch.device]:
        if self.weight is not None:
            return self.weight.dtype, self.weight.device
        return torch.float64, torch.device("cpu")

    def sqnorm(
        self,
        *,
        iterations: int = 200,
        tol: float = 1e-10,
        seed: int = 0,
        exact: bool = False,
    ) -> float:
        """Squared spectral norm ``||A||_2^2 = lambda_max(A^T A)``.

        By power iteration on ``A^T A`` at this operator's actual sizes
        (boundary effects included). With ``exact=True`` the largest singular
        value of the dense matrix is computed instead (small operators only).
        """
        if exact:
            return float(torch.linalg.matrix_norm(self.todense().double(), ord=2) ** 2)
        dtype, device = self._like()
        return power_iteration(
            lambda v: self.adjoint(self.forward(v)),
            self.in_shape,
            dtype=dtype,
            device=device,
            iterations=iterations,
            tol=tol,
            seed=seed,
        )

    def sqnorm_bound(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """A provable upper bound on ``||diag(scale) A||_2^2`` (``scale`` on the output
        channels, default 1): a detached 0-dim float64 tensor.

        Each operator kind implements it: exact for dense, identity and
        shortcut operators, the periodic-extension bound
        (:func:`conv_sqnorm_bound`) for convolutions. Includes the relative
        rounding margin ``ROUNDING_MARGIN``.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.sqnorm_bound: no squared-norm bound for this "
            "operator kind; implement sqnorm_bound() in the subclass"
        )

    def change_norm_bound(self, delta: torch.Tensor) -> torch.Tensor | None:
        """A cheap provable upper bound on ``||A(W + delta) - A(W)||_2 = ||A(delta)||_2``.

        The learned kinds are linear in their weight, so the change of the
        operator is the operator of the weight change ``delta`` (same shape as
        ``weight``). The pursuit bounds ``||A(W)|| <= ||A(W_0)|| + ||A(W - W_0)||``
        between exact recomputations with it (docs/solvers.md, "Cost"). A
        detached 0-dim float64 tensor, without the rounding margin (the caller
        adds it); ``None`` for a kind that states none (parameter-free kinds:
        their norm never changes).
        """
        return None

    def todense(self) -> torch.Tensor:
        """The matrix of :meth:`forward`, shape ``(out_size, in_size)``, by probing.

        Column ``i`` is ``forward(e_i)``; costs ``in_size`` operator applications.
        """
        dtype, device = self._like()
        eye = torch.eye(self.in_size, dtype=dtype, device=device)
        with torch.no_grad():
            cols = self.forward(eye.reshape(self.in_size, *self.in_shape))
        return cols.reshape(self.in_size, self.out_size).T.contiguous()

    def tosparse(self):
        """The matrix of :meth:`forward` as a ``scipy.sparse.csr_array``."""
        import scipy.sparse as sp

        return sp.csr_array(self.todense().detach().cpu().numpy())

    def dottest(self, *, seed: int = 0, batch: int = 2) -> float:
        """Relative error of ``<A u, v> = <u, A^T v>`` for random ``u, v`` (:func:`dot_test`)."""
        dtype, device = self._like()
        return dot_test(
            self.forward,
            self.adjoint,
            self.in_shape,
            self.out_shape,
            dtype=dtype,
            device=device,
            seed=seed,
            batch=batch,
        ).error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"
