"""``from_torch``: trace a model with torch.fx, propagate shapes, read every node.

See docs/bring-your-own-model.md for the reading rules and the supported subset.
"""

from __future__ import annotations

import copy
import operator
import os
from collections.abc import Mapping

import networkx as nx
import torch
import torch.nn.functional as F
from torch import nn

from ..graph import ArchitectureError
from .importer import _check, _finish, _Import, _op_name
from .readers import _dispatch, _hint
from .terms import _Node
from .weights import _load_into, load_state_dict

BATCHNORM_MODES = ("fold", "node")


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

    Supported (in these spellings): ``nn.Conv2d`` / ``F.conv2d`` (kernel, stride,
    padding and dilation per axis, any groups, with or without bias), ``nn.Linear`` /
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
