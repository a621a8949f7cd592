"""Linear operators, one per edge kind of an architecture graph.

Every operator ``A`` maps a *source* activation (shape ``in_shape``) to a
*destination* pre-activation (shape ``out_shape``):

* ``A.forward(x)`` is the analysis map (what the feed-forward network computes,
  e.g. ``conv2d``);
* ``A.adjoint(y)`` is its exact adjoint ``A^T``, the synthesis map ``B = A^T``
  of the seed paper (``conv_transpose2d`` with the output padding that restores
  the source's exact shape);
* ``A.sqnorm()`` is ``||A||_2^2``, the squared spectral norm, by power
  iteration on ``A^T A`` at the actual spatial size (seeded, deterministic).

All maps are batched: ``forward`` takes ``(B, *in_shape)`` and returns
``(B, *out_shape)``; ``adjoint`` the reverse. They work for any floating
dtype and device (that of the weight, or of the input for parameter-free
operators) and are differentiable with respect to both input and weight.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Shape = tuple[int, ...]

__all__ = [
    "Operator",
    "Conv",
    "Project",
    "Dense",
    "Identity",
    "Shortcut",
    "conv_output_size",
    "power_iteration",
]


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Spatial size after a convolution: ``floor((size + 2 p - k) / s) + 1``.

    May be ``<= 0``; callers treat that as an empty map.
    """
    return (size + 2 * padding - kernel_size) // stride + 1


def power_iteration(
    apply_gram,
    shape: Shape,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    iterations: int = 100,
    tol: float = 1e-10,
    seed: int = 0,
    block: int = 4,
) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite map by block power iteration.

    Subspace iteration on ``block`` vectors at once (through the batch
    dimension): ``Q <- orth(M Q)``, estimate = the largest eigenvalue of the
    Rayleigh-Ritz matrix ``Q^T M Q``. A single vector converges like
    ``(lambda_2 / lambda_1)^t``, which is slow when the top eigenvalues
    cluster (the x/y symmetry of a square convolution does that); a block of 4
    converges like ``(lambda_5 / lambda_1)^t``.

    Parameters
    ----------
    apply_gram : callable
        ``V -> M V`` for a batch of vectors of shape ``(b, *shape)``.
    shape : tuple of int
        Shape of one vector (without the batch dimension).
    iterations : int
        Maximum number of iterations.
    tol : float
        Stop when the estimate changes by less than ``tol`` (relative).
    seed : int
        Seed of the random start block (a private generator; no global state).
    block : int
        Number of vectors iterated together (at most the dimension).

    Returns
    -------
    float
        The largest Ritz value, a lower bound on ``lambda_max(M)`` that converges
        to it.
    """
    n = math.prod(shape)
    b = max(1, min(block, n))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn((n, b), generator=generator, dtype=torch.float64)
    q = torch.linalg.qr(q.to(dtype=dtype, device=device)).Q
    estimate = 0.0
    with torch.no_grad():
        for _ in range(iterations):
            mq = apply_gram(q.T.reshape(b, *shape)).reshape(b, n).T
            h = q.T @ mq
            new = float(torch.linalg.eigvalsh((h + h.T) / 2)[-1])
            if new <= 0.0:
                return 0.0
            q = torch.linalg.qr(mq).Q
            converged = abs(new - estimate) <= tol * abs(new)
            estimate = new
            if converged:
                break
    return estimate


class Operator(ABC):
    """A linear map between two activation shapes.

    Subclasses implement :meth:`forward` and :meth:`adjoint`; everything else
    (norm, dense and sparse export, dot test) is shared.

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
        """Relative error of ``<A u, v> = <u, A^T v>`` for random ``u, v``."""
        dtype, device = self._like()
        g = torch.Generator(device="cpu").manual_seed(seed)
        u = torch.randn((batch, *self.in_shape), generator=g, dtype=torch.float64)
        v = torch.randn((batch, *self.out_shape), generator=g, dtype=torch.float64)
        u, v = u.to(dtype=dtype, device=device), v.to(dtype=dtype, device=device)
        with torch.no_grad():
            lhs = float((self.forward(u) * v).sum())
            rhs = float((u * self.adjoint(v)).sum())
        return abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


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

    def __init__(self, weight: torch.Tensor, in_shape: Sequence[int], stride: int = 1):
        if weight.shape[-2:] != (1, 1):
            raise ValueError(f"Project: weight must be 1x1, got {tuple(weight.shape)}")
        super().__init__(weight, in_shape, stride=stride, padding=0)


class Dense(Operator):
    """Fully connected map ``A x = W vec(x)``; a conv source is flattened (C, H, W order).

    Parameters
    ----------
    weight : torch.Tensor
        Shape ``(features_out, prod(in_shape))``.
    in_shape : tuple of int
    """

    kind = "dense"

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

    def todense(self):
        return self.weight.detach()

    def tosparse(self):
        import scipy.sparse as sp

        return sp.csr_array(self.weight.detach().cpu().numpy())


class Identity(Operator):
    """The identity between two activations of the same shape (``||I||^2 = 1``)."""

    kind = "identity"

    def __init__(self, shape: Sequence[int]):
        super().__init__(shape, shape)

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    def sqnorm(self, **kwargs) -> float:
        return 1.0

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

    def adjoint(self, y):
        c, h, w = self.in_shape
        kept = y[:, self.pad_before : self.pad_before + c]
        if self.stride == 1:
            return kept
        out = y.new_zeros((y.shape[0], c, h, w))
        out[:, :, :: self.stride, :: self.stride] = kept
        return out

    def _like(self):
        return torch.float64, torch.device("cpu")

    def sqnorm(self, **kwargs) -> float:
        return 1.0

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
