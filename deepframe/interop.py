"""Import trained PyTorch models as architecture graphs with their weights.

See docs/bring-your-own-model.md for the reading rules and the supported subset.

:func:`from_torch` traces a model with ``torch.fx`` (symbolic tracing, then
shape propagation on an example input) and reads it as the edge-centric graph
of docs/concepts.md:

* every ReLU output is an activation node ``w_j = ReLU(a_j - lambda_j)``;
* every conv / linear map between ReLUs is an edge ``k -> j`` whose weight is
  the module's weight, its bias goes to the node, ``lambda_j = -bias_j``
  (a trained network's positive biases give ``lambda_j < 0``);
* residual additions are merges (one more incoming edge), a concatenation
  along channels feeding a conv or linear is one edge per part, an option-A
  shortcut (strided slicing plus channel zero padding) is a ``shortcut``
  edge;
* batch norm in eval mode is the affine map
  ``BN(a) = s (a - mean) + beta`` with ``s = gamma / sqrt(var + eps)``,
  folded into the edges that feed it (``A_jk <- diag(s) A_jk``: the synthesis
  blocks ``B_kj`` of column block j scaled by ``s``, a column scaling of D)
  and into the node's lambda (``lambda_j = s mean - beta - s c`` for the sum of
  the biases ``c`` before it), or, with ``batchnorm="node"``, kept as the
  node's own batch norm;
* global average pooling followed by the last ``Linear`` is the classifier
  head, which is not part of D.

Anything else is an :class:`~deepframe.graph.ArchitectureError` that names
the module and the op: nothing is approximated. The import is checked: the
compiled feed-forward solver must reproduce the model's logits on the
example input (float64).

The weights come back as one flat mapping (see
:func:`deepframe.dictionary.split_weights`): ``"k->j"`` edge weights,
``"lambda:j"``, batch-norm statistics of ``batchnorm=True`` nodes, and
``"head.weight"`` / ``"head.bias"``, all float64.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import operator
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import state_dict_mismatch
from .dictionary import edge_key, node_key
from .graph import ArchitectureError, validate

__all__ = [
    "from_torch",
    "load_state_dict",
    "load_torch_model",
    "from_torch_spec",
    "parse_input_shape",
    "from_torch_args",
]

BATCHNORM_MODES = ("fold", "node")
_DOCS = "docs/bring-your-own-model.md lists what is supported"


# --------------------------------------------------------------------------
# symbolic values: what each fx node computes, in graph terms
# --------------------------------------------------------------------------
@dataclass
class _Node:
    """An activation node of the graph (or the input): a code ``w_j``."""

    name: str
    shape: tuple


@dataclass
class _Term:
    """One linear map from a node into a sum: becomes an edge when a ReLU closes the sum.

    ``op``: ``conv`` (weight ``(C_out, C_in, k, k)``), ``dense`` (weight
    ``(d, prod(src_shape))``, the source flattened), ``pooled`` (weight
    ``(d, C)`` applied to the source's global average), ``identity`` and
    ``shortcut`` (parameter-free, with an optional per-output-channel
    ``scale`` from a batch norm).
    """

    src: str
    src_shape: tuple
    op: str
    weight: torch.Tensor | None = None
    stride: int = 1
    padding: int = 0
    pad_before: int = 0
    out_channels: int = 0
    scale: torch.Tensor | None = None
    origin: str = ""

    def key(self) -> tuple:
        kernel = None if self.weight is None else tuple(self.weight.shape)
        return (self.op, kernel, self.stride, self.padding, self.pad_before, self.out_channels)


@dataclass
class _Affine:
    """``sum_t A_t w_src(t) + const`` (per channel): a pre-activation under construction.

    ``bn`` is a batch norm waiting for its ReLU (``batchnorm="node"``).
    """

    terms: list
    const: torch.Tensor
    shape: tuple
    bn: dict | None = None


@dataclass
class _Cat:
    """Values concatenated along channels."""

    parts: list
    shape: tuple


@dataclass
class _Features:
    """A vector read from activation nodes: flattened (``"flat"``) or globally
    average-pooled (``"pooled"``), concatenated; ``ones`` trailing axes of size 1
    (``(B, d, 1, 1)`` after pooling with ``keepdim``)."""

    parts: list  # (_Node, mode)
    ones: int = 0
    shape: tuple = field(default=())


def _features(parts, ones: int = 0) -> _Features:
    d = sum(math.prod(n.shape) if mode == "flat" else n.shape[0] for n, mode in parts)
    return _Features(parts, ones, (d,) + (1,) * ones)


class _Import:
    """One run of the importer over a traced model."""

    def __init__(self, gm, batchnorm: str):
        self.gm = gm
        self.batchnorm = batchnorm
        self.graph = nx.DiGraph()
        self.weights: dict[str, torch.Tensor] = {}
        self.input: _Node | None = None
        self.batch = None
        self.fx_node = None  # the fx node being read (for messages)

    # -- messages -------------------------------------------------------------
    def where(self, n=None) -> str:
        n = self.fx_node if n is None else n
        if n is None:
            return "from_torch"
        if n.op == "call_module":
            module = self.gm.get_submodule(n.target)
            return f"module '{n.target}' ({type(module).__name__})"
        stack = n.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            owner = f"module '{path}' ({getattr(cls, '__name__', cls)})"
        else:
            owner = "the model's forward"
        return f"{owner}, op {_op_name(n)}"

    def fail(self, problem: str, hint: str = "") -> ArchitectureError:
        text = f"from_torch: {self.where()}: {problem}"
        return ArchitectureError(text + (f"; {hint}" if hint else ""))

    # -- helpers ----------------------------------------------------------------
    def settle(self, v):
        """Fold a batch norm that waits for a ReLU when something else consumes it."""
        if isinstance(v, _Affine) and v.bn is not None:
            return _fold_bn(replace(v, bn=None), **v.bn)
        if isinstance(v, _Cat):
            return _Cat([self.settle(p) for p in v.parts], v.shape)
        return v

    def as_affine(self, v) -> _Affine:
        v = self.settle(v)
        if isinstance(v, _Affine):
            return v
        if isinstance(v, _Node):
            term = _Term(v.name, v.shape, "identity", out_channels=v.shape[0])
            return _Affine([term], _zeros(v.shape[0]), v.shape)
        raise self.fail(
            f"expected a tensor computed from activations, got {_describe(v)}",
            "ReLU, conv/linear, batch norm, additions, concatenations and option-A "
            f"shortcuts are supported ({_DOCS})",
        )

    def node_parts(self, v, what: str) -> list[_Node]:
        """The activation nodes a linear map reads (one per part of a concatenation)."""
        v = self.settle(v)
        if isinstance(v, _Node):
            return [v]
        if isinstance(v, _Cat) and all(isinstance(p, _Node) for p in v.parts):
            return list(v.parts)
        if isinstance(v, _Affine | _Cat):
            raise self.fail(
                f"{what} reads the output of another linear map with no ReLU in between",
                "each linear map must end at a ReLU (every ReLU output is an activation "
                "node); a linear path without a ReLU cannot be an activation",
            )
        raise self.fail(f"{what} reads {_describe(v)}", _DOCS)

    # -- graph building -----------------------------------------------------------
    def relu(self, v, name: str):
        v = v if isinstance(v, _Affine) else self.settle(v)
        if isinstance(v, _Node):
            if v is not self.input:
                return v  # ReLU(w) = w for a code w >= 0
            return self.activation(self.as_affine(v), name)
        if isinstance(v, _Affine):
            return self.activation(v, name)
        if isinstance(v, _Cat):
            return _Cat([self.relu(p, f"{name}_{i}") for i, p in enumerate(v.parts)], v.shape)
        if isinstance(v, _Features) and all(n is not self.input for n, _ in v.parts):
            return v  # averages and entries of codes are >= 0 already
        raise self.fail(f"ReLU of {_describe(v)}", _DOCS)

    def activation(self, v: _Affine, name: str) -> _Node:
        """Close a sum by a ReLU: a new activation node with one edge per term."""
        size = {"channels": v.shape[0]} if len(v.shape) == 3 else {"features": v.shape[0]}
        attrs = dict(size)
        if v.bn is not None:
            attrs["batchnorm"] = True
        stack = self.fx_node.meta.get("nn_module_stack") or {}
        if self.fx_node.op == "call_module":
            attrs["label"] = str(self.fx_node.target)
        elif stack:
            attrs["label"] = list(stack.values())[-1][0]
        self.graph.add_node(name, **attrs)
        for term in v.terms:
            edge, weight = _edge(term)
            if term.origin:
                edge["label"] = term.origin
            self.graph.add_edge(term.src, name, **edge)
            if weight is not None:
                self.weights[edge_key(term.src, name)] = weight
        if v.bn is None:
            self.weights[node_key(name, "lambda")] = -v.const
        else:
            bn = v.bn
            self.weights[node_key(name, "lambda")] = -bn["beta"]
            self.weights[node_key(name, "bn_scale")] = bn["gamma"]
            self.weights[node_key(name, "bn_mean")] = bn["mean"] - v.const
            self.weights[node_key(name, "bn_var")] = bn["var"]
            self.weights[node_key(name, "bn_eps")] = torch.tensor(bn["eps"], dtype=torch.float64)
        return _Node(name, v.shape)

    def add(self, a, b):
        for x, y in ((a, b), (b, a)):
            if isinstance(x, int | float) and x == 0:
                return y
        if not all(isinstance(x, _Node | _Affine) for x in (a, b)):
            raise self.fail(
                f"addition of {_describe(a)} and {_describe(b)}",
                "residual additions of tensors computed from activations are supported",
            )
        a, b = self.as_affine(a), self.as_affine(b)
        terms = list(a.terms)
        for t in b.terms:
            terms = self.merge(terms, t)
        return _Affine(terms, a.const + b.const, a.shape)

    def merge(self, terms: list, t: _Term) -> list:
        for i, s in enumerate(terms):
            if s.src != t.src:
                continue
            if s.key() == t.key() and s.weight is not None:
                merged = replace(s, weight=s.weight + t.weight)
            elif s.key() == t.key():
                ones = torch.ones(s.out_channels, dtype=torch.float64)
                sa = ones if s.scale is None else s.scale
                ta = ones if t.scale is None else t.scale
                merged = replace(s, scale=sa + ta)
            else:
                merged = _sum_maps(s, t)
                if merged is None:
                    raise self.fail(
                        f"two maps ({s.op} and {t.op}) from node {t.src!r} into one sum that "
                        "do not add up to one conv or dense map",
                        "a graph has at most one edge between two nodes",
                    )
            return terms[:i] + [merged] + terms[i + 1 :]
        return terms + [t]

    def conv(self, v, weight, bias, stride, padding, dilation, groups, padding_mode="zeros"):
        if groups != 1:
            raise self.fail(f"grouped convolution (groups={groups})", "only groups=1 is supported")
        if _pair(dilation) != (1, 1):
            raise self.fail(f"dilated convolution (dilation={dilation})", "only dilation=1")
        if padding_mode != "zeros":
            raise self.fail(f"padding_mode={padding_mode!r}", "only zero padding is supported")
        if weight.dim() != 4:
            raise self.fail(
                f"a conv weight of shape {tuple(weight.shape)}", "only 2-D convolutions"
            )
        k = weight.shape[-1]
        if weight.shape[-2] != k:
            raise self.fail(f"a non-square kernel {tuple(weight.shape[-2:])}", "square kernels")
        s = _pair(stride)
        if s[0] != s[1]:
            raise self.fail(f"stride {stride}", "equal strides along both axes are supported")
        if padding == "valid":
            p = (0, 0)
        elif padding == "same":
            if k % 2 == 0 or s[0] != 1:
                raise self.fail("padding='same' with an even kernel or a stride", "use numbers")
            p = (k // 2, k // 2)
        else:
            p = _pair(padding)
        if p[0] != p[1]:
            raise self.fail(f"padding {padding}", "equal padding along both axes is supported")
        parts = self.node_parts(v, "the convolution")
        terms, start = [], 0
        for part in parts:
            if len(part.shape) != 3:
                raise self.fail(f"a convolution of the dense activation {part.name!r}")
            c = part.shape[0]
            term = _Term(
                part.name,
                part.shape,
                "conv",
                _f64(weight[:, start : start + c]),
                stride=s[0],
                padding=p[0],
                origin=self.origin(),
            )
            terms = self.merge(terms, term)
            start += c
        return terms, _bias(bias, weight.shape[0])

    def linear(self, v, weight, bias):
        v = self.settle(v)
        if isinstance(v, _Node) and len(v.shape) == 1:
            parts = [(v, "flat")]
        elif isinstance(v, _Cat) and all(
            isinstance(p, _Node) and len(p.shape) == 1 for p in v.parts
        ):
            parts = [(p, "flat") for p in v.parts]
        elif isinstance(v, _Features) and not v.ones:
            parts = v.parts
        elif isinstance(v, _Node):
            raise self.fail(
                f"a Linear layer on the {v.shape} map of node {v.name!r} acts on its last axis",
                "flatten or globally average-pool the map first",
            )
        else:
            self.node_parts(v, "the Linear layer")  # raises the right message
            raise self.fail(f"a Linear layer on {_describe(v)}", _DOCS)
        terms, start = [], 0
        for node, mode in parts:
            width = math.prod(node.shape) if mode == "flat" else node.shape[0]
            op = "pooled" if mode == "pooled" else "dense"
            w = _f64(weight[:, start : start + width])
            terms = self.merge(terms, _Term(node.name, node.shape, op, w, origin=self.origin()))
            start += width
        return terms, _bias(bias, weight.shape[0])

    def batch_norm(self, v, gamma, beta, mean, var, eps):
        c = mean.shape[0]
        gamma = torch.ones(c, dtype=torch.float64) if gamma is None else _f64(gamma)
        beta = torch.zeros(c, dtype=torch.float64) if beta is None else _f64(beta)
        stats = {"gamma": gamma, "beta": beta, "mean": _f64(mean), "var": _f64(var), "eps": eps}
        if isinstance(v, _Cat):
            parts, start = [], 0
            for p in v.parts:
                n = p.shape[0]
                part = {k: x if k == "eps" else x[start : start + n] for k, x in stats.items()}
                parts.append(self.batch_norm(p, **part))
                start += n
            return _Cat(parts, v.shape)
        a = self.as_affine(v)
        if self.batchnorm == "node":
            return replace(a, bn=stats)
        return _fold_bn(a, **stats)

    def origin(self) -> str:
        n = self.fx_node
        if n.op == "call_module":
            return str(n.target)
        stack = n.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""


def _fold_bn(a: _Affine, gamma, beta, mean, var, eps) -> _Affine:
    """Fold an eval-mode batch norm into a sum of maps.

    ``BN(sum_t A_t w + c) = sum_t (s A_t) w + s (c - mean) + beta`` with
    ``s = gamma / sqrt(var + eps)`` per channel.
    """
    s = gamma / torch.sqrt(var + eps)
    terms = []
    for t in a.terms:
        if t.weight is not None:
            terms.append(replace(t, weight=t.weight * s.reshape(-1, *([1] * (t.weight.dim() - 1)))))
        else:
            terms.append(replace(t, scale=s.clone() if t.scale is None else t.scale * s))
    return _Affine(terms, s * (a.const - mean) + beta, a.shape)


def _sum_maps(s: _Term, t: _Term) -> _Term | None:
    """Two different maps from one node into one sum, as one map (None if impossible).

    The graph holds one edge per pair of nodes, so parallel maps are summed:
    a dense map plus an identity is ``W + diag(scale)``; convolutions and
    parameter-free maps (an identity or shortcut is a 1x1 kernel with padding
    0) with the same stride are embedded, centred, in the larger kernel and
    added, where their paddings then agree.
    """
    if "pooled" in (s.op, t.op):
        return None
    if len(s.src_shape) == 1:
        return replace(s, op="dense", weight=_dense_weight(s) + _dense_weight(t), scale=None)
    if s.stride != t.stride:
        return None
    size = max(_kernel(s), _kernel(t))
    if any((size - _kernel(u)) % 2 for u in (s, t)):
        return None
    pads = {u.padding + (size - _kernel(u)) // 2 for u in (s, t)}
    if len(pads) != 1:
        return None
    weight = _conv_weight(s, size) + _conv_weight(t, size)
    origin = " + ".join(u.origin for u in (s, t) if u.origin)
    return _Term(s.src, s.src_shape, "conv", weight, s.stride, pads.pop(), origin=origin)


def _kernel(t: _Term) -> int:
    return 1 if t.weight is None else int(t.weight.shape[-1])


def _selection(t: _Term) -> torch.Tensor:
    """The channel map of a parameter-free term: ``M[c + pad_before, c] = scale``."""
    c_in = t.src_shape[0]
    m = torch.zeros((t.out_channels, c_in), dtype=torch.float64)
    index = torch.arange(c_in)
    scale = torch.ones(t.out_channels, dtype=torch.float64) if t.scale is None else t.scale
    m[index + t.pad_before, index] = scale[index + t.pad_before]
    return m


def _dense_weight(t: _Term) -> torch.Tensor:
    return t.weight if t.weight is not None else _selection(t)


def _conv_weight(t: _Term, size: int) -> torch.Tensor:
    if t.weight is None:
        w = torch.zeros((t.out_channels, t.src_shape[0], size, size), dtype=torch.float64)
        w[:, :, size // 2, size // 2] = _selection(t)
        return w
    d = (size - _kernel(t)) // 2
    return F.pad(t.weight, (d, d, d, d))


def _edge(t: _Term) -> tuple[dict, torch.Tensor | None]:
    """Edge attributes and weight of a term (the edge kinds of :mod:`deepframe.ops`)."""
    if t.op == "conv":
        k = t.weight.shape[-1]
        attrs = {"op": "conv", "kernel_size": int(k), "padding": int(t.padding)}
        if t.stride != 1:
            attrs["stride"] = int(t.stride)
        return attrs, t.weight
    if t.op == "dense":
        return {"op": "dense"}, t.weight.reshape(t.weight.shape[0], -1)
    if t.op == "pooled":  # mean over positions, then the weight: one dense map
        hw = math.prod(t.src_shape[1:])
        w = t.weight[:, :, None].expand(-1, -1, hw) / hw
        return {"op": "dense"}, w.reshape(t.weight.shape[0], -1).contiguous()
    c_in = t.src_shape[0]
    if t.op == "identity" and t.scale is None:
        return {"op": "identity"}, None
    if t.op == "shortcut" and t.scale is None:
        if t.stride == 1 and t.out_channels == c_in:
            return {"op": "identity"}, None
        attrs = {"op": "shortcut", "stride": int(t.stride)}
        if t.pad_before != (t.out_channels - c_in) // 2:
            attrs["pad_before"] = int(t.pad_before)
        return attrs, None
    # a parameter-free map scaled per output channel: a 1x1 conv (or dense) with that weight
    weight = _selection(t)
    if len(t.src_shape) == 1:
        return {"op": "dense"}, weight
    attrs = {"op": "conv", "kernel_size": 1, "padding": 0}
    if t.stride != 1:
        attrs["stride"] = int(t.stride)
    return attrs, weight[:, :, None, None]


def _zeros(c: int) -> torch.Tensor:
    return torch.zeros(c, dtype=torch.float64)


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64).clone()


def _bias(bias, c: int) -> torch.Tensor:
    return _zeros(c) if bias is None else _f64(bias)


def _pair(v) -> tuple:
    if isinstance(v, int):
        return (v, v)
    return tuple(v) if len(v) == 2 else (v[0], v[0])


def _describe(v) -> str:
    if isinstance(v, _Node):
        return f"activation node {v.name!r}"
    if isinstance(v, _Affine):
        return "a linear map's output (no ReLU yet)"
    if isinstance(v, _Cat):
        return "a concatenation"
    if isinstance(v, _Features):
        return "pooled / flattened features"
    if isinstance(v, torch.Tensor):
        return f"a constant tensor of shape {tuple(v.shape)}"
    return f"the value {v!r}"


def _op_name(n) -> str:
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    if n.op == "call_module":
        return n.target
    target = n.target
    module = getattr(target, "__module__", None) or ""
    module = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(module, module)
    name = getattr(target, "__name__", str(target))
    return f"{module}.{name}" if module else name


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


class _Recorder:
    """Shape propagation (``torch.fx.passes.shape_prop.ShapeProp``) that also keeps the
    non-tensor results (sizes, shapes, integers) the trace computes from the input."""

    def __new__(cls, gm):
        from torch.fx.passes.shape_prop import ShapeProp

        class Recorder(ShapeProp):
            def __init__(self, module):
                super().__init__(module)
                self.values = {}

            def run_node(self, n):
                result = super().run_node(n)
                if _plain(result):
                    self.values[n] = result
                return result

        return Recorder(gm)


def _plain(x) -> bool:
    if x is None or isinstance(x, bool | int | float | str | torch.Size | torch.dtype | slice):
        return True
    if isinstance(x, list | tuple):
        return all(_plain(i) for i in x)
    return False


def _is_inplace(n, gm) -> bool:
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__") or n.target == "__iadd__"
    if n.op == "call_function":
        positional = n.target is F.relu and len(n.args) > 1 and n.args[1] is True
        return (
            n.target in (operator.iadd, torch.relu_, F.relu_)
            or bool(n.kwargs.get("inplace"))
            or positional
        )
    if n.op == "call_module":
        return bool(getattr(gm.get_submodule(n.target), "inplace", False))
    return False


# --------------------------------------------------------------------------
# the importer
# --------------------------------------------------------------------------
def from_torch(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    state_dict: str | os.PathLike | Mapping | None = None,
    batchnorm: str = "fold",
    check: bool = True,
) -> tuple[nx.DiGraph, dict[str, torch.Tensor]]:
    """An architecture graph and its weights from a PyTorch model.

    The model is traced with ``torch.fx.symbolic_trace`` and its shapes
    propagated on ``example_input``; it is read in eval mode (running batch-norm
    statistics, dropout off) from a float64 copy, so the model itself is not
    changed. Every ReLU output is an activation node; the linear maps between
    ReLUs are the edges; the pre-activation of node ``j`` is
    ``a_j = sum_k A_jk w_k`` and its code ``w_j = ReLU(a_j - lambda_j)``
    (Eq. 4), with ``lambda_j = -bias_j`` (any sign).

    Supported (in these spellings): ``nn.Conv2d`` / ``F.conv2d`` (stride,
    padding; groups = dilation = 1, with or without bias), ``nn.Linear`` /
    ``F.linear``; ``nn.ReLU`` / ``F.relu`` / ``torch.relu`` / ``Tensor.relu``
    (in place or not); ``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` /
    ``F.batch_norm`` with running statistics, before or after a residual
    addition; additions (``+``, ``+=``, ``torch.add``, ``Tensor.add``,
    ``add_``); ``torch.cat`` along channels; option-A shortcuts
    ``F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, a, b))`` (any split ``a, b``) and
    projection shortcuts (1x1 conv + batch norm); ``flatten`` / ``view`` /
    ``reshape`` / ``squeeze``; global average pooling
    (``nn.AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``,
    ``nn.AvgPool2d`` / ``F.avg_pool2d`` over the whole map, ``x.mean((2, 3))``)
    before the last ``Linear``; ``nn.Sequential``, ``nn.Identity``, dropout
    (off in eval mode), plain Python submodules and lambda layers.

    Batch norm, ``BN(a) = s (a - mean) + beta`` with ``s = gamma / sqrt(var +
    eps)`` per channel, is affine in eval mode. ``batchnorm="fold"`` folds it
    into the maps that feed it, ``A <- diag(s) A`` (the column scaling of the
    node's synthesis blocks ``B = A^T`` in D), and into the constant of the
    sum, so that ``lambda_j = -(s (c - mean) + beta)`` for the biases ``c``
    summed before it; a parameter-free map it scales (an identity skip or an
    option-A shortcut under a batch norm placed after the addition) becomes a
    1x1 convolution with the diagonal weight ``diag(s)``. With
    ``batchnorm="node"`` a batch norm right before a ReLU is kept as the node's
    own batch norm (``batchnorm=True``; ``lambda_j = -beta``, running mean
    ``mean - c``), which trains with batch statistics; one anywhere else is
    folded.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier: one input tensor, logits out. Not modified.
    example_input : torch.Tensor
        A batch ``(B, C, H, W)`` or ``(B, d)`` the model accepts; fixes the input
        shape of the graph and is used to check the import.
    state_dict : path or mapping, optional
        Weights to load into (a copy of) the model first; a path is read with
        :func:`load_state_dict`.
    batchnorm : {"fold", "node"}
        How batch norm is imported (above).
    check : bool
        Compile the result (``method="feedforward"``, float64) and require it to
        reproduce the model's logits on ``example_input`` (relative 1e-7).

    Returns
    -------
    graph : networkx.DiGraph
        A validated architecture graph; the output node is the one the head
        pools. Node and edge ``label`` attributes name the torch modules.
    weights : dict of str to torch.Tensor
        float64: ``"k->j"`` per parametrised edge, ``"lambda:j"`` per node,
        ``"bn_scale:j"``, ``"bn_mean:j"``, ``"bn_var:j"``, ``"bn_eps:j"`` per
        ``batchnorm=True`` node, ``"head.weight"`` and ``"head.bias"``. Pass it to
        ``deepframe.compile(graph, weights=weights)`` and
        ``deepframe.dictionary(graph, weights=weights)``.

    Raises
    ------
    ArchitectureError
        An op outside the supported subset (the message names the module and
        the op), a model torch.fx cannot trace, or an import that does not
        reproduce the logits.
    ValueError
        ``example_input`` is not a batched tensor, or ``state_dict`` does not fit.
    """
    import torch.fx

    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(
            f"from_torch: batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"from_torch: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() not in (2, 4):
        raise ValueError(
            "from_torch: example_input must be a batch tensor of shape (B, C, H, W) or (B, d), "
            f"got {getattr(example_input, 'shape', example_input)!r}"
        )
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
    if state_dict is not None:
        sd = state_dict if isinstance(state_dict, Mapping) else load_state_dict(state_dict)
        _load_into(m, sd, str(state_dict) if not isinstance(state_dict, Mapping) else "state_dict")
    try:
        gm = torch.fx.symbolic_trace(m)
    except Exception as exc:
        raise ArchitectureError(
            f"from_torch: torch.fx cannot trace the model ({type(exc).__name__}: {exc}); "
            "data-dependent control flow in forward() is not traceable"
        ) from exc
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ArchitectureError(
            f"from_torch: the model's forward takes the inputs {inputs}: exactly one input "
            "tensor is supported"
        )
    x = example_input.detach().to(device="cpu", dtype=torch.float64)
    try:
        with torch.no_grad():
            m(x)
    except Exception as exc:
        raise ValueError(
            f"from_torch: the model fails on an example input of shape {tuple(x.shape)}: {exc}"
        ) from exc
    recorder = _Recorder(gm)
    with torch.no_grad():
        reference = recorder.propagate(x)
    graph, weights = _read(gm, recorder.values, batchnorm, x.shape[0])
    if check:
        _check(graph, weights, x, reference)
    return graph, weights


def _read(gm, values: dict, batchnorm: str, batch: int):
    """Walk the fx graph and build the architecture graph and its weights."""
    imp = _Import(gm, batchnorm)
    env: dict = {}
    nodes = list(gm.graph.nodes)
    output_value = None

    def arg(a):
        if hasattr(a, "op") and hasattr(a, "users"):  # an fx.Node
            return env[a]
        if isinstance(a, list | tuple):
            return type(a)(arg(i) for i in a)
        if isinstance(a, dict):
            return {k: arg(v) for k, v in a.items()}
        return a

    for n in nodes:
        imp.fx_node = n
        if n.op == "placeholder":
            if imp.input is not None:
                raise imp.fail(
                    f"a second input {n.name!r}", "exactly one input tensor is supported"
                )
            shape = tuple(n.meta["tensor_meta"].shape[1:])
            imp.input = _Node(n.name, shape)
            imp.graph.add_node(n.name, kind="input", shape=shape)
            env[n] = imp.input
            continue
        if n.op == "get_attr":
            env[n] = _fetch(gm, n.target)
            continue
        if n.op == "output":
            output_value = n.args[0]
            break
        if n in values:  # sizes, shapes and integer arithmetic: the recorded values
            env[n] = values[n]
            continue
        meta = n.meta.get("tensor_meta")
        if not hasattr(meta, "shape"):
            raise imp.fail("an op that returns several tensors", _hint(_op_name(n)))
        out_shape = tuple(meta.shape)
        if len(out_shape) < 2 or out_shape[0] != batch:
            raise imp.fail(
                f"the result has shape {out_shape}: the batch axis of size {batch} is not kept",
                "ops must act on each sample separately",
            )
        value = _dispatch(imp, n, arg, out_shape[1:])
        got = getattr(value, "shape", None)
        if got != out_shape[1:]:
            raise imp.fail(f"internal: read shape {got}, the model computes {out_shape[1:]}")
        env[n] = value
        if _is_inplace(n, gm) and hasattr(n.args[0], "users"):
            env[n.args[0]] = value  # later reads of the mutated tensor see the new value

    imp.fx_node = None
    if hasattr(output_value, "op"):
        imp.fx_node = output_value
        out = env[output_value]
    else:
        raise ArchitectureError(
            "from_torch: the model must return one tensor of logits, got "
            f"{type(output_value).__name__}"
        )
    return _finish(imp, out)


def _fetch(gm, target: str):
    obj = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


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
                op="shortcut",
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
        if t.op == "conv":  # subsampling a stride-r conv = a stride-(r s) conv
            terms.append(replace(t, stride=t.stride * s))
        else:
            terms.append(replace(t, op="shortcut", stride=t.stride * s))
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


def _finish(imp: _Import, out) -> tuple[nx.DiGraph, dict]:
    """The head (last Linear on pooled features of one node), pruning, validation."""
    out = imp.settle(out)
    head_problem = (
        "the model must end with one Linear layer (the classifier head) reading the "
        "globally average-pooled (or dense) features of one ReLU output"
    )
    if not isinstance(out, _Affine) or len(out.shape) != 1 or len(out.terms) != 1:
        raise imp.fail(f"the model returns {_describe(out)}", head_problem)
    t = out.terms[0]
    if t.src == imp.input.name:
        raise imp.fail("the logits are computed from the input directly", head_problem)
    if t.op == "pooled" or (t.op == "dense" and math.prod(t.src_shape[1:]) == 1):
        head = t.weight.reshape(t.weight.shape[0], -1)
    else:
        raise imp.fail(
            f"the last layer reads node {t.src!r} ({t.op} of its {t.src_shape} map)",
            head_problem,
        )
    g = imp.graph
    keep = nx.ancestors(g, t.src) | {t.src}
    g.remove_nodes_from([n for n in list(g.nodes) if n not in keep])
    weights = {}
    for key, value in imp.weights.items():
        if "->" in key:
            k, j = key.split("->", 1)
            if k in keep and j in keep:
                weights[key] = value
        elif key.partition(":")[2] in keep:
            weights[key] = value
    weights["head.weight"] = head.contiguous()
    weights["head.bias"] = out.const
    if imp.input.name not in keep:
        raise ArchitectureError("from_torch: the logits do not depend on the input")
    return validate(g), weights


def _check(graph, weights, x, reference) -> None:
    """The compiled feed-forward solver must give the model's logits."""
    from .pursuit import compile

    net = compile(graph, method="feedforward", weights=weights, dtype=torch.float64).eval()
    with torch.no_grad():
        got = net(x)
    if not isinstance(reference, torch.Tensor) or got.shape != reference.shape:
        raise ArchitectureError(
            f"from_torch: the model returns {type(reference).__name__} "
            f"{tuple(getattr(reference, 'shape', ()))}, the import gives logits {tuple(got.shape)}"
        )
    err = float((got - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    if not err <= 1e-7 * scale:
        raise ArchitectureError(
            f"from_torch: the imported graph does not reproduce the model's logits on the "
            f"example input (max difference {err:.3g}): an op was not read as the model "
            "computes it"
        )


# --------------------------------------------------------------------------
# weights files and models named on the command line
# --------------------------------------------------------------------------
def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A model's ``state_dict`` from a weights file, as training scripts write them.

    Read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no
    arbitrary code runs). Accepted: the ``state_dict`` itself, or a dict holding
    it under ``"state_dict"`` or ``"model"`` (checkpoints that also store the
    optimizer, the epoch, ...); a ``"module."`` prefix on every key (left by
    ``DataParallel`` / ``DistributedDataParallel``) is removed.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not readable with ``weights_only=True`` or holds no state
        dict; the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors all mean "not a weights file"
        raise ValueError(
            f"{path}: not a weights file torch.load(weights_only=True) can read ({exc})"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"{path}: expected a state_dict (names -> tensors), or a dict holding one under "
            "'state_dict' or 'model'"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)


def _load_into(model: nn.Module, sd: Mapping, where: str) -> None:
    problem = state_dict_mismatch(model, sd)
    if problem:
        raise ValueError(f"{where} does not fit the model: {problem}")
    model.load_state_dict(sd)


def load_torch_model(spec: str, state_dict: str | os.PathLike | None = None) -> nn.Module:
    """The model named by ``module:factory`` (or ``path/to/file.py:factory``).

    ``factory`` is a function or class called without arguments, or a module
    instance. A dotted module is imported with the current folder on
    ``sys.path``. With ``state_dict``, the weights file is loaded
    (:func:`load_state_dict`).
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(
            f"--from-torch expects module:factory (e.g. mymodels:resnet20 or "
            f"models.py:resnet20), got {spec!r}"
        )
    if target.endswith(".py") or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"no Python file at {path}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as exc:  # the user's file: report it as one line
            raise ValueError(f"running {path} failed: {type(exc).__name__}: {exc}") from exc
    else:
        added = os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ValueError(
                f"cannot import {target!r} for --from-torch: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if added:
                sys.path.remove(os.getcwd())
    if not hasattr(module, attr):
        raise ValueError(f"{target!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    try:
        model = obj if isinstance(obj, nn.Module) else obj()
    except Exception as exc:
        raise ValueError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        _load_into(model, load_state_dict(state_dict), str(state_dict))
    return model


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` or ``"3x32x32"`` (or ``"64"``) as a tuple of positive integers."""
    parts = str(text).replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) not in (1, 3) or min(shape, default=0) < 1:
        raise ValueError(f"input shape must be C,H,W or d (e.g. 3,32,32), got {text!r}")
    return shape


def from_torch_spec(
    spec: str,
    *,
    weights: str | os.PathLike | None = None,
    input_shape: str | Sequence[int],
    batchnorm: str = "fold",
) -> tuple[nx.DiGraph, dict[str, torch.Tensor]]:
    """:func:`from_torch` of the model ``module:factory`` with a weights file.

    The example input is a seeded uniform ``[0, 1)`` batch of two of shape
    ``input_shape`` (``"3,32,32"`` or a tuple).
    """
    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    model = load_torch_model(spec)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((2, *shape), generator=generator, dtype=torch.float64)
    return from_torch(model, x, state_dict=weights, batchnorm=batchnorm)


def from_torch_args(arch, spec, weights, input_shape):
    """The command line's ``--from-torch SPEC --weights FILE --input-shape C,H,W``."""
    if spec is None:
        if weights is not None:
            raise ValueError("--weights needs --from-torch module:factory")
        raise ValueError(
            "give an architecture (a builder spec or a .json file) or --from-torch module:factory"
        )
    if arch:
        raise ValueError(f"give either the architecture {arch!r} or --from-torch, not both")
    if not input_shape:
        raise ValueError("--from-torch needs --input-shape, e.g. 3,32,32")
    return from_torch_spec(spec, weights=weights, input_shape=input_shape)
