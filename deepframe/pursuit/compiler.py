"""``compile``: an architecture graph (and optionally its weights) into a PursuitNet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import networkx as nx
import torch

from ..graph import validate
from ..terms import structure
from .net import PursuitNet
from .options import CompileOptions
from .parameters import _imported_weights, _load_weights

__all__ = ["compile"]


def compile(
    graph: nx.DiGraph,
    method: str = "deep",
    iterations: int = 0,
    *,
    alpha: float | str = 0.0,
    beta: float | str = "learned",
    learn_lambda: bool = True,
    threshold: str = "step",
    schedule: str = "gauss-seidel",
    layered_init: str = "final",
    num_classes: int | None = None,
    mean=None,
    std=None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device=None,
    checkpoint_sweeps: bool | int = False,
    channels_last: bool = False,
    torch_compile: bool | Mapping = False,
    weights: Mapping[str, torch.Tensor] | None = None,
    negative_bias: str = "error",
) -> PursuitNet:
    """Compile an architecture graph into a pursuit solver + classifier.

    Parameters
    ----------
    graph : networkx.DiGraph
        Architecture (validated here).
    method : {"feedforward", "layered", "deep"}
        L-TP, L-BP (Algorithm 1) or DP (Algorithm 2; DP-res on graphs with skips).
    iterations : int
        ``T``, the number of unrolled iterations (ignored by ``"feedforward"``).
    alpha : float in [0, 1) or ``"fista"``
        Extrapolation ``w^ = w^[t-1] + alpha (w^[t-1] - w^[t-2])`` (Eq. 14), fixed,
        or the FISTA momentum schedule.
    beta : ``"learned"`` or float in (0, 1]
        Step ``s_j = 1 / (beta_j L_j)``: learned per node (initialised just below
        1) or fixed.
    learn_lambda : bool
        Learn ``lambda_j = softplus(rho_j) >= 0`` per channel (initialised from the
        nodes' ``bias``, at least 1e-4).
    threshold : {"step", "paper"}
        ``"step"`` thresholds by ``s_j lambda_j`` (fixed points = minimisers of F);
        ``"paper"`` by ``lambda_j``, literally Eq. 13.
    schedule : {"gauss-seidel", "jacobi"}
        Deep pursuit order: newest values of every block (Gauss-Seidel, Algorithm 2)
        or all blocks from the previous sweep (Jacobi; parallel, but the block
        step ``1 / L_j`` no longer guarantees descent).
    layered_init : {"final", "feedforward"}
        Where layered pursuit starts node j. ``"feedforward"``: its feed-forward
        code ``w_j^[0] = ReLU(B_j^T w_{j-1}^[0] - lambda_j)``, Eq. 9 read
        literally. ``"final"`` (default): the same threshold applied to the
        predecessors' *final* codes, ``ReLU(B_j^T w_{j-1}^[T] - lambda_j)``, a
        start consistent with the local problem (Eq. 7), which reconstructs
        ``w_{j-1}^[T]``; the default because the trained L-BP models of this
        project use it. Both coincide for the first node and for ``T = 0``.
    num_classes : int, optional
        Outputs of the linear head (default: the rows of ``weights["head.weight"]``,
        else 10).
    mean, std : sequence of float, optional
        Per-channel input normalisation applied inside the model.
    seed : int
        Seed of the initial weights (the same He-style weights as
        ``deepframe.dictionary(graph, seed=seed)``).
    checkpoint_sweeps : bool or int
        Recompute the iterations (DP sweeps, L-BP local steps) in the backward
        pass instead of storing their activations (``torch.utils.checkpoint``,
        non-reentrant): training memory grows with ``T`` by one code-sized state
        per segment instead of all of a sweep's activations, for about one more
        forward pass of the iterations. ``True`` recomputes segments of
        ``round(sqrt(T / 3))`` iterations (at least 1), an int ``k >= 1`` segments
        of ``k``.
        Gradients equal the stored path's; inference (no autograd) is unaffected.
    channels_last : bool
        Keep convolution weights and activations in ``torch.channels_last``
        memory format (the input is converted inside the model); usually faster
        with cuDNN on a GPU, same results.
    torch_compile : bool or mapping
        Run the pursuit through ``torch.compile(..., fullgraph=True)`` (built on
        the first call); a mapping passes its options (``backend``, ``mode``,
        ...) to ``torch.compile``. ``encode(x, trace=True)`` stays eager.
    weights : mapping, optional
        Initial weights instead of random ones: every edge weight under the keys
        of :func:`deepframe.dictionary.parameter_shapes`, and optionally
        ``"lambda:j"``, batch-norm statistics and the head (the mapping
        :func:`deepframe.from_torch` returns; see
        :func:`deepframe.dictionary.split_weights`). A solver that never
        iterates (``"feedforward"``, or ``iterations=0``) keeps the lambdas
        exactly, of any sign (``lambda_j = -bias_j`` of the imported network),
        as free parameters: it is the imported network, in float64 to rounding.
        A pursuit keeps them through ``lambda = softplus(rho)`` (at least 1e-4).
    negative_bias : {"error", "clip"}
        What a pursuit (``"layered"`` / ``"deep"`` with ``iterations > 0``) does
        with ``lambda_j < 0`` in ``weights`` (a trained network's positive
        biases; they make F unbounded below): ``"error"`` refuses them
        (ValueError naming the nodes); ``"clip"`` projects every lambda onto
        ``[0, inf)``, ``lambda_j <- max(lambda_j, 0)`` per channel (for a
        batch-norm node ``lambda_j`` is minus the batch norm's shift ``beta``).
        The projection changes the feed-forward initialisation wherever a
        lambda was negative.
    """
    options = CompileOptions(
        method=method,
        iterations=iterations,
        alpha=alpha,
        beta=beta,
        learn_lambda=learn_lambda,
        threshold=threshold,
        schedule=schedule,
        layered_init=layered_init,
        num_classes=num_classes,
        mean=mean,
        std=std,
        seed=seed,
        dtype=dtype,
        checkpoint_sweeps=checkpoint_sweeps,
        channels_last=channels_last,
        torch_compile=torch_compile,
        negative_bias=negative_bias,
    )
    return _build(graph, options, weights=weights, device=device)


def _build(
    graph: nx.DiGraph,
    options: CompileOptions,
    *,
    weights: Mapping[str, torch.Tensor] | None = None,
    device=None,
) -> PursuitNet:
    """:func:`compile` with its options given as one validated :class:`CompileOptions`."""
    g = structure(validate(graph))  # built once, handed down to the solver
    channels = g.input_shape[0]
    for name in ("mean", "std"):
        value = getattr(options, name)
        count = None if value is None else torch.as_tensor(value).numel()
        if count not in (None, 1, channels):
            raise ValueError(
                f"compile: {name} has {count} values for an input of {channels} channels "
                f"(shape {g.input_shape}): give one per channel, or one for all"
            )
    from ..memory import Unroll, check_memory  # refuses before allocating (MemoryBudgetError)

    unroll = Unroll.from_options(options)
    check_memory(
        g, "pursuit" if options.iterates else "weights", dtype=options.dtype, unroll=unroll
    )
    if options.method == "feedforward":
        options = replace(options, iterations=0)
    imported = None
    num_classes = options.num_classes
    if weights is not None:
        imported = _imported_weights(g, weights, options.iterations, options.negative_bias)
        classes = imported[3]
        if classes is not None and num_classes is not None and num_classes != classes:
            raise ValueError(
                f"compile: num_classes={num_classes} but weights['head.weight'] has {classes} rows"
            )
        num_classes = classes if num_classes is None else num_classes
    options = replace(options, num_classes=10 if num_classes is None else num_classes)
    net = PursuitNet(g, options, free_lambda=imported is not None and options.iterations == 0)
    net = net.to(dtype=options.dtype, device=device)
    if imported is not None:
        edges, lambdas, nodes, _, head = imported
        _load_weights(net, edges, lambdas, nodes, head)
    if options.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net
