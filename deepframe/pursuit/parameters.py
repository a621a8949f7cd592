"""The solver's parameters as the graph names them, and imported weights put into them.

Constants of the parametrisation (``lambda = softplus(rho)``, ``beta =
exp(-softplus(rho))``, the batch norm's eps and momentum), parameter names
safe for ``nn.ParameterDict``, the ``negative_bias`` policy for imported
lambdas and the copy of imported weights into a freshly built
:class:`~deepframe.pursuit.PursuitNet`.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..dictionary import node_lambdas, random_weights, split_weights

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1
_LAMBDA_FLOOR = 1e-4  # softplus cannot reach 0: a requested lambda of 0 starts here
_BETA_INIT = 1.0 - 1e-4  # beta = exp(-softplus(rho)) cannot reach 1: learned beta starts here


def _round_up(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``value`` (float64) converted to ``dtype``, rounded towards +infinity."""
    value = torch.as_tensor(value, dtype=torch.float64)
    low = value.to(dtype)
    up = torch.nextafter(low, torch.full_like(low, math.inf))
    return torch.where(low.to(torch.float64) < value, up, low)


def _drop_power_buffers(state_dict, prefix, *args) -> None:
    """Checkpoints written before L_j became a bound carry power-iteration buffers
    (``power_<term>_<block>_v`` / ``_sq``); the solver no longer has them."""
    for key in [
        k for k in state_dict if re.fullmatch(re.escape(prefix) + r"power_\d+_\w+_(v|sq)", k)
    ]:
        del state_dict[key]


def _safe_name(key: str, taken: set) -> str:
    name = re.sub(r"[^0-9A-Za-z_]", "_", key.replace("->", "__"))
    base, i = name, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _imported_weights(g, weights, iterations: int, negative_bias: str):
    """Split ``weights`` (:func:`split_weights`) and apply the ``negative_bias`` policy.

    Returns ``(edges, lambdas, nodes, classes, head)`` with ``lambdas`` projected onto
    ``[0, inf)`` for ``negative_bias="clip"`` and ``classes`` the head's rows (or None).
    """
    edges, nodes, head = split_weights(g, weights)
    lambdas = dict(nodes["lambda"])
    if negative_bias == "clip":
        lambdas = {j: lam.clamp_min(0) for j, lam in lambdas.items()}
    elif iterations > 0:
        negative = {j: lam for j, lam in lambdas.items() if bool((lam < 0).any())}
        if negative:
            listed = ", ".join(
                f"{j!r} ({int((lam < 0).sum())} of {lam.numel()}, min {float(lam.min()):.3g})"
                for j, lam in list(negative.items())[:3]
            )
            more = f" and {len(negative) - 3} more nodes" if len(negative) > 3 else ""
            raise ValueError(
                f"compile: lambda < 0 (a positive bias of the imported network) at nodes "
                f"{listed}{more}: the pursuit objective F is unbounded below then. "
                "Compile method='feedforward' (exact), or pass negative_bias='clip' to project "
                "lambda onto [0, inf) (docs/bring-your-own-model.md)"
            )
    classes = int(head["weight"].shape[0]) if head else None
    return edges, lambdas, nodes, classes, head


def _load_weights(net, edges, lambdas, nodes, head) -> None:
    """Copy imported weights into a freshly built solver (after its dtype/device move)."""
    with torch.no_grad():
        for key, w in edges.items():
            net.weights[net._weight_names[key]].copy_(w)
        for j, lam in lambdas.items():
            name = net._names[j]
            if net.free_lambda:
                net.lambda_free[name].copy_(lam)
            else:  # the inverse of softplus, stable for large lambda
                lam = lam.double().clamp_min(_LAMBDA_FLOOR)
                net.lambda_rho[name].copy_(lam + torch.log(-torch.expm1(-lam)))
        for j, gamma in nodes["bn_scale"].items():
            name = net._names[j]
            eps = nodes["bn_eps"].get(j)
            var = nodes["bn_var"][j].double()
            if eps is not None:  # the solver's batch norm uses eps = _BN_EPS
                var = var + float(eps) - _BN_EPS
            if bool((var < 0).any()):
                raise ValueError(
                    f"compile: node {j!r}: running variance + eps is below the solver's "
                    f"batch-norm eps {_BN_EPS}; fold this batch norm into the weights instead"
                )
            net.bn_scale[name].copy_(gamma)
            getattr(net, f"bn_mean_{name}").copy_(nodes["bn_mean"][j])
            getattr(net, f"bn_var_{name}").copy_(var)
        if head:
            net.head.weight.copy_(head["weight"])
            net.head.bias.copy_(head["bias"])


def register_parameters(net, st, o, free_lambda: bool) -> None:
    """Register the parameters and buffers of a new :class:`~deepframe.pursuit.PursuitNet`.

    ``st`` is the graph's :class:`~deepframe.dictionary.Structure`, ``o`` the
    net's :class:`~deepframe.pursuit.CompileOptions` (``num_classes``
    resolved). The edge weights are He-style draws from ``seed`` (those of
    ``deepframe.dictionary(graph, seed=seed)``), the head's from ``seed + 1``;
    ``lambda_j`` starts at the nodes' ``bias`` (at least ``_LAMBDA_FLOOR``
    through softplus, as is with ``free_lambda``), ``beta_j`` just below 1,
    batch norm at the identity, the input normalisation at ``mean`` / ``std``.
    """
    taken: set = set()
    net._weight_names = {}  # weight key -> parameter name
    net._names = {}  # node -> parameter name of its lambda, beta, batch norm
    net.weights = nn.ParameterDict()
    # Drawn in float64 (as deepframe.dictionary draws them); compile() casts the
    # module to its dtype, so a float64 model holds exactly the same weights.
    for key, w in random_weights(st, seed=o.seed, dtype=torch.float64).items():
        net._weight_names[key] = _safe_name(key, taken)
        net.weights[net._weight_names[key]] = nn.Parameter(w)
    net.lambda_rho = nn.ParameterDict()
    net.lambda_free = nn.ParameterDict()
    net.free_lambda = bool(free_lambda)
    net.beta_rho = nn.ParameterDict()
    net.bn_scale = nn.ParameterDict()
    net._fixed_beta = None if o.beta == "learned" else float(o.beta)
    for j, lam in node_lambdas(st, dtype=torch.float64).items():
        name = _safe_name(str(j), taken)
        net._names[j] = name
        if net.free_lambda:
            net.lambda_free[name] = nn.Parameter(lam.clone(), requires_grad=o.learn_lambda)
        else:
            rho = torch.log(torch.expm1(lam.clamp_min(_LAMBDA_FLOOR)))
            net.lambda_rho[name] = nn.Parameter(rho, requires_grad=o.learn_lambda)
        if net._fixed_beta is None:
            net.beta_rho[name] = nn.Parameter(
                torch.tensor(math.log(math.expm1(-math.log(_BETA_INIT))))
            )
        if st.graph.nodes[j].get("batchnorm", False):
            c = st.graph.nodes[j]["shape"][0]
            net.bn_scale[name] = nn.Parameter(torch.ones(c))
            net.register_buffer(f"bn_mean_{name}", torch.zeros(c))
            net.register_buffer(f"bn_var_{name}", torch.ones(c))

    c_out = st.graph.nodes[net.output]["shape"][0]
    net.head = nn.Linear(c_out, o.num_classes)
    gen = torch.Generator().manual_seed(o.seed + 1)
    with torch.no_grad():
        bound = 1.0 / math.sqrt(c_out)
        net.head.weight.copy_(torch.rand(net.head.weight.shape, generator=gen) * 2 * bound - bound)
        net.head.bias.zero_()

    mean, std = o.mean, o.std
    shape = (-1, 1, 1) if len(net.input_shape) == 3 else (-1,)
    mean = (
        torch.zeros(net.input_shape[0])
        if mean is None
        else torch.as_tensor(mean, dtype=torch.float64)
    )
    std = (
        torch.ones(net.input_shape[0]) if std is None else torch.as_tensor(std, dtype=torch.float64)
    )
    net.register_buffer("input_mean", mean.to(torch.float64).reshape(shape).clone())
    net.register_buffer("input_std", std.to(torch.float64).reshape(shape).clone())
