"""One reader per torch module, tensor method and function the importer understands.

:func:`_dispatch` sends each tensor-valued fx node to :func:`_module`,
:func:`_method` or :func:`_function`, which read it as a value of
:mod:`.terms` through the :class:`~.importer._Import` run (reshapes, pooling,
channel padding, subsampling and concatenation have a reader each below).
Anything else is an :class:`~deepframe.graph.ArchitectureError` with a hint.
"""

from __future__ import annotations

import math
import operator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .importer import _Import, _op_name
from .terms import _DOCS, _Affine, _Cat, _describe, _Features, _features, _Node, _pair, _zeros

# --------------------------------------------------------------------------
# the op tables
# --------------------------------------------------------------------------
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__"}
_NO_OP_METHODS = {"contiguous"}
_NONLINEAR = (
    "sigmoid",
    "tanh",
    "gelu",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "relu6",
    "prelu",
    "silu",
    "mish",
    "softplus",
    "softmax",
    "log_softmax",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "threshold",
    "abs",
)


def _hint(name: str) -> str:
    low = name.lower().replace("_", "")
    if "maxpool" in low or "max" == low.rsplit(".", 1)[-1]:
        return "max pooling is not a linear map: deepframe models conv/linear maps + ReLU"
    if any(op.replace("_", "") in low.rsplit(".", 1)[-1] for op in _NONLINEAR):
        return "the only nonlinearity deepframe models is ReLU (each ReLU output is a sparse code)"
    return _DOCS


def _dispatch(imp: _Import, n, arg, out_shape: tuple):
    """The symbolic value of one tensor-valued fx node."""
    args = [arg(a) for a in n.args]
    kwargs = {k: arg(v) for k, v in n.kwargs.items()}
    if n.op == "call_module":
        return _module(imp, n, imp.gm.get_submodule(n.target), args, kwargs, out_shape)
    if n.op == "call_method":
        return _method(imp, n, n.target, args, kwargs, out_shape)
    return _function(imp, n, n.target, args, kwargs, out_shape)


def _get(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _module(imp: _Import, n, m, args, kwargs, out_shape):
    x = args[0] if args else None
    if isinstance(m, nn.ReLU):
        return imp.relu(x, n.name)
    if isinstance(m, nn.Conv2d):
        terms, c = imp.conv(
            x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, m.padding_mode
        )
        return _Affine(terms, c, out_shape)
    if isinstance(m, nn.Linear):
        terms, c = imp.linear(x, m.weight, m.bias)
        return _Affine(terms, c, out_shape)
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        want = 4 if isinstance(m, nn.BatchNorm2d) else 2
        if len(out_shape) + 1 != want:
            raise imp.fail(
                f"batch norm of a {len(out_shape) + 1}-D tensor", "(B, C, H, W) or (B, d)"
            )
        if m.running_mean is None:
            raise imp.fail(
                "batch norm without running statistics normalises by batch statistics even "
                "in eval mode",
                "construct it with track_running_stats=True",
            )
        gamma = m.weight if m.affine else None
        beta = m.bias if m.affine else None
        return imp.batch_norm(x, gamma, beta, m.running_mean, m.running_var, float(m.eps))
    if isinstance(m, nn.Identity | nn.Dropout | nn.Dropout2d | nn.Dropout1d):
        return x  # dropout is the identity in eval mode
    if isinstance(m, nn.Flatten):
        return _reshape(imp, x, out_shape)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _global_pool(imp, x, out_shape, keepdim=True)
    if isinstance(m, nn.AvgPool2d):
        return _avg_pool(imp, x, m.kernel_size, m.padding, m.divisor_override, out_shape)
    raise imp.fail("unsupported module", _hint(type(m).__name__))


def _method(imp: _Import, n, name, args, kwargs, out_shape):
    x, rest = args[0], args[1:]
    if name in ("relu", "relu_"):
        return imp.relu(x, n.name)
    if name in _ADD_METHODS:
        if kwargs.get("alpha", 1) != 1:
            raise imp.fail("an addition with alpha != 1", "plain additions only")
        return imp.add(x, rest[0] if rest else kwargs["other"])
    if name in _RESHAPE_METHODS:
        return _reshape(imp, x, out_shape)
    if name == "mean":
        return _mean(
            imp, x, _get(rest, kwargs, 0, "dim"), _get(rest, kwargs, 1, "keepdim", False), out_shape
        )
    if name in _NO_OP_METHODS:
        return x
    raise imp.fail("unsupported tensor method", _hint(name))


def _function(imp: _Import, n, f, args, kwargs, out_shape):
    if f in _RELU_FUNCTIONS:
        return imp.relu(args[0] if args else kwargs["input"], n.name)
    if f in _ADD_FUNCTIONS:
        if kwargs.get("alpha", 1) != 1 or kwargs.get("out") is not None:
            raise imp.fail("an addition with alpha or out=", "plain additions only")
        return imp.add(
            args[0] if args else kwargs["input"], args[1] if len(args) > 1 else kwargs["other"]
        )
    if f in _CAT_FUNCTIONS:
        return _cat(
            imp, _get(args, kwargs, 0, "tensors"), _get(args, kwargs, 1, "dim", 0), out_shape
        )
    if f in _RESHAPE_FUNCTIONS:
        return _reshape(imp, args[0], out_shape)
    if f is F.conv2d or f is torch.conv2d:
        x, weight = _get(args, kwargs, 0, "input"), _get(args, kwargs, 1, "weight")
        terms, c = imp.conv(
            x,
            weight,
            _get(args, kwargs, 2, "bias"),
            _get(args, kwargs, 3, "stride", 1),
            _get(args, kwargs, 4, "padding", 0),
            _get(args, kwargs, 5, "dilation", 1),
            _get(args, kwargs, 6, "groups", 1),
        )
        return _Affine(terms, c, out_shape)
    if f is F.linear:
        terms, c = imp.linear(
            _get(args, kwargs, 0, "input"),
            _get(args, kwargs, 1, "weight"),
            _get(args, kwargs, 2, "bias"),
        )
        return _Affine(terms, c, out_shape)
    if f is F.batch_norm:
        if _get(args, kwargs, 5, "training", False):
            raise imp.fail("batch norm in training mode (training=True)", "pass training=False")
        mean, var = _get(args, kwargs, 1, "running_mean"), _get(args, kwargs, 2, "running_var")
        if mean is None or var is None:
            raise imp.fail("batch norm without running statistics", "pass running_mean/var")
        return imp.batch_norm(
            args[0],
            _get(args, kwargs, 3, "weight"),
            _get(args, kwargs, 4, "bias"),
            mean,
            var,
            float(_get(args, kwargs, 7, "eps", 1e-5)),
        )
    if f is F.adaptive_avg_pool2d:
        return _global_pool(imp, args[0], out_shape, keepdim=True)
    if f is F.avg_pool2d:
        return _avg_pool(
            imp,
            args[0],
            _get(args, kwargs, 1, "kernel_size"),
            _get(args, kwargs, 3, "padding", 0),
            _get(args, kwargs, 6, "divisor_override"),
            out_shape,
        )
    if f is torch.mean:
        return _mean(
            imp,
            args[0],
            _get(args, kwargs, 1, "dim"),
            _get(args, kwargs, 2, "keepdim", False),
            out_shape,
        )
    if f is F.pad:
        return _pad(
            imp,
            args[0],
            _get(args, kwargs, 1, "pad"),
            _get(args, kwargs, 2, "mode", "constant"),
            _get(args, kwargs, 3, "value", None),
            out_shape,
        )
    if f is operator.getitem:
        return _subsample(imp, args[0], args[1], out_shape)
    if f is F.dropout:
        if _get(args, kwargs, 2, "training", True):
            raise imp.fail("dropout with training=True", "pass training=self.training")
        return args[0]
    raise imp.fail("unsupported op", _hint(_op_name(n)))


def _reshape(imp: _Import, x, out_shape: tuple):
    """``flatten`` / ``view`` / ``reshape`` / ``squeeze``: a no-op or flattening each sample."""
    x = imp.settle(x)
    in_shape = getattr(x, "shape", None)
    if in_shape == out_shape:
        return x
    if in_shape is not None and out_shape == (math.prod(in_shape),):
        if isinstance(x, _Node):
            return _features([(x, "flat")])
        if isinstance(x, _Cat) and all(isinstance(p, _Node) for p in x.parts):
            return _features([(p, "flat") for p in x.parts])
        if isinstance(x, _Affine):
            raise imp.fail(
                "flattening the output of a linear map before its ReLU",
                "apply the ReLU before flattening",
            )
    if isinstance(x, _Features) and out_shape[0] == x.shape[0] and set(out_shape[1:]) <= {1}:
        return _features(x.parts, ones=len(out_shape) - 1)  # (d, 1, 1) <-> (d, 1) <-> (d,)
    raise imp.fail(
        f"a reshape of {in_shape} to {out_shape}",
        "only flattening each sample to a vector is supported",
    )


def _pool_parts(imp: _Import, x) -> list:
    x = imp.settle(x)
    parts = imp.node_parts(x, "global average pooling")
    for p in parts:
        if len(p.shape) != 3:
            raise imp.fail(f"pooling the dense activation {p.name!r}")
    return parts


def _global_pool(imp: _Import, x, out_shape: tuple, keepdim: bool):
    parts = _pool_parts(imp, x)
    if out_shape[1:] != ((1, 1) if keepdim else ()):
        raise imp.fail(
            f"pooling to a map of shape {out_shape}, not a global average",
            "only global average pooling (output 1x1) is supported",
        )
    return _features([(p, "pooled") for p in parts], ones=2 if keepdim else 0)


def _avg_pool(imp: _Import, x, kernel, padding, divisor_override, out_shape: tuple):
    parts = _pool_parts(imp, x)
    h, w = parts[0].shape[1:]
    if _pair(kernel) != (h, w) or _pair(padding) != (0, 0) or divisor_override is not None:
        raise imp.fail(
            f"average pooling with kernel {kernel}, padding {padding} over a {h}x{w} map",
            "only global average pooling (a kernel covering the whole map, no padding) "
            "is supported",
        )
    return _global_pool(imp, x, out_shape, keepdim=True)


def _mean(imp: _Import, x, dim, keepdim, out_shape: tuple):
    ndim = len(getattr(x, "shape", ())) + 1
    dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
    if ndim != 4 or sorted(d % ndim for d in dims) != [2, 3]:
        raise imp.fail(f"a mean over axes {dim}", "only the global average x.mean((2, 3))")
    return _global_pool(imp, x, out_shape, keepdim=bool(keepdim))


def _pad(imp: _Import, x, pad, mode, value, out_shape: tuple):
    """``F.pad`` of channels only: the zero channels of an option-A shortcut."""
    pad = list(pad)
    if mode != "constant" or value not in (None, 0, 0.0):
        raise imp.fail(f"padding with mode={mode!r}, value={value!r}", "zero padding only")
    if len(getattr(x, "shape", ())) != 3 or len(pad) != 6 or any(pad[:4]) or min(pad) < 0:
        raise imp.fail(
            f"padding {tuple(pad)}",
            "only zero channels, F.pad(x, (0, 0, 0, 0, front, back)), as in option-A shortcuts",
        )
    front, back = pad[4], pad[5]
    a = imp.as_affine(x)
    terms = []
    for t in a.terms:
        if t.weight is not None:  # zero output channels of a conv
            w = t.weight
            zeros = w.new_zeros
            terms.append(
                replace(
                    t,
                    weight=torch.cat(
                        [zeros((front, *w.shape[1:])), w, zeros((back, *w.shape[1:]))]
                    ),
                )
            )
            continue
        scale = t.scale
        if scale is not None:
            scale = torch.cat([scale.new_ones(front), scale, scale.new_ones(back)])
        terms.append(
            replace(
                t,
                kind=ops.Shortcut,
                pad_before=t.pad_before + front,
                out_channels=t.out_channels + front + back,
                scale=scale,
            )
        )
    const = torch.cat([_zeros(front), a.const, _zeros(back)])
    return _Affine(terms, const, out_shape)


def _subsample(imp: _Import, x, index, out_shape: tuple):
    """``x[:, :, ::s, ::s]``: the subsampling of an option-A shortcut."""
    if not isinstance(x, _Node | _Affine):
        raise imp.fail(f"indexing {_describe(x)}", "only x[:, :, ::s, ::s] on a feature map")
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        i = index.index(Ellipsis)
        index = index[:i] + (slice(None),) * (4 - len(index) + 1) + index[i + 1 :]
    index = tuple(index) + (slice(None),) * (4 - len(index))
    full = slice(None)

    def step(s):
        ok = isinstance(s, slice) and s.start in (None, 0) and s.stop is None
        return (s.step or 1) if ok else None

    steps = [step(s) for s in index[2:]]
    if (
        len(x.shape) != 3
        or len(index) != 4
        or index[0] != full
        or index[1] != full
        or None in steps
        or steps[0] != steps[1]
    ):
        raise imp.fail(
            f"indexing with {index}",
            "only strided subsampling of both spatial axes, x[:, :, ::s, ::s]",
        )
    s = steps[0]
    if s == 1:
        return x
    a = imp.as_affine(x)
    terms = []
    for t in a.terms:
        kind, stride = t.kind.torch_subsampled(t.stride, s)  # the kind says what it becomes
        terms.append(replace(t, kind=kind, stride=stride))
    return _Affine(terms, a.const, out_shape)


def _cat(imp: _Import, tensors, dim, out_shape: tuple):
    ndim = len(out_shape) + 1
    if not isinstance(dim, int) or dim % ndim != 1:
        raise imp.fail(f"concatenation along axis {dim}", "only along channels (axis 1)")
    values = list(tensors)
    if all(isinstance(v, _Features) for v in values):
        ones = {v.ones for v in values}
        if len(ones) == 1:
            return _features([p for v in values for p in v.parts], ones=ones.pop())
    parts = []
    for v in values:
        if isinstance(v, _Cat):
            parts.extend(v.parts)
        elif isinstance(v, _Node | _Affine):
            parts.append(v)
        else:
            raise imp.fail(f"concatenation of {_describe(v)}", _DOCS)
    return _Cat(parts, out_shape)
