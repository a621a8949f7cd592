"""One run of the importer: the graph and weights built as a traced model is read.

:class:`_Import` holds the architecture graph under construction and the
operations that change it (a ReLU closing a sum into an activation node,
additions merging sums, conv / linear / batch-norm maps on values);
:func:`_finish` reads the classifier head and validates the graph;
:func:`_check` compiles the result and compares its logits with the model's.
"""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import torch

from .. import ops
from ..dictionary import node_key
from ..graph import ArchitectureError, validate
from ..terms import edge_key
from .terms import (
    _DOCS,
    _Affine,
    _bias,
    _Cat,
    _describe,
    _edge,
    _f64,
    _Features,
    _fold_bn,
    _Node,
    _sum_maps,
    _Term,
    _zeros,
)


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
            term = _Term(v.name, v.shape, ops.Identity, out_channels=v.shape[0])
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
                        f"two maps ({s.label} and {t.label}) from node {t.src!r} into one sum that "
                        "do not add up to one conv or dense map",
                        "a graph has at most one edge between two nodes",
                    )
            return terms[:i] + [merged] + terms[i + 1 :]
        return terms + [t]

    def conv(self, v, weight, bias, stride, padding, dilation, groups, padding_mode="zeros"):
        try:
            attrs = ops.Conv.read_torch(weight, stride, padding, dilation, groups, padding_mode)
        except ValueError as exc:
            raise self.fail(str(exc)) from None
        parts = self.node_parts(v, "the convolution")
        weight = _f64(weight)
        if attrs["groups"] > 1 and len(parts) > 1:  # channels of several nodes: split ungrouped
            weight, attrs["groups"] = ops.block_diagonal(weight, attrs["groups"]), 1
        channels = sum(part.shape[0] for part in parts)
        if weight.shape[1] * attrs["groups"] != channels:
            raise self.fail(
                f"a convolution with weight {tuple(weight.shape)} and groups={attrs['groups']} "
                f"of {channels} input channels"
            )
        terms, start = [], 0
        for part in parts:
            if len(part.shape) != 3:
                raise self.fail(f"a convolution of the dense activation {part.name!r}")
            c = part.shape[0] // attrs["groups"]
            term = _Term(
                part.name,
                part.shape,
                ops.Conv,
                weight[:, start : start + c].clone(),
                origin=self.origin(),
                **attrs,
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
            w = _f64(weight[:, start : start + width])
            term = _Term(
                node.name, node.shape, ops.Dense, w, origin=self.origin(), pooled=mode == "pooled"
            )
            terms = self.merge(terms, term)
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
    if t.pooled or (t.kind is ops.Dense and math.prod(t.src_shape[1:]) == 1):
        head = t.weight.reshape(t.weight.shape[0], -1)
    else:
        raise imp.fail(
            f"the last layer reads node {t.src!r} ({t.label} of its {t.src_shape} map)",
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
    from ..pursuit import compile

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
