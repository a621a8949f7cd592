"""Assertion helpers for operators and global dictionaries.

Each helper raises ``AssertionError`` with the numbers that disagree, so it
reads well inside pytest and hypothesis tests:

* :func:`assert_dottest` -- ``<A u, v> = <u, A^T v>`` (and exact adjoint shapes);
* :func:`assert_matches_dense` -- ``A u`` equals ``A.todense() @ u``;
* :func:`assert_matches_reference` -- ``D.todense()`` and ``D.tosparse()`` equal
  the independent :func:`deepframe.testing.reference.reference_dictionary`;
* :func:`assert_shapes_match_torch` -- inferred shapes are what torch computes;
* :func:`assert_no_host_sync` -- a block (forward and backward) dispatches no
  operation that makes the host wait for the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import networkx as nx
import numpy as np
import torch

from .graphs import DEFAULT_EDGE_KIND

__all__ = [
    "assert_no_host_sync",
    "assert_dottest",
    "assert_matches_dense",
    "assert_matches_reference",
    "assert_shapes_match_torch",
    "torch_forward",
]


def _maps(a) -> tuple[Any, Any, tuple, tuple, torch.dtype, torch.device]:
    """``(forward, adjoint, in_shape, out_shape, dtype, device)`` of an operator or a dictionary."""
    if hasattr(a, "matvec") and hasattr(a, "rmatvec"):  # GlobalDictionary
        n, big_n = a.shape
        return a.matvec, a.rmatvec, (big_n,), (n,), a.dtype, a.device
    weight = getattr(a, "weight", None)
    dtype = weight.dtype if weight is not None else torch.float64
    device = weight.device if weight is not None else torch.device("cpu")
    return a.forward, a.adjoint, tuple(a.in_shape), tuple(a.out_shape), dtype, device


def assert_dottest(a, rtol: float = 1e-10, *, seed: int = 0, batch: int = 3) -> float:
    """Assert ``<A u, v> = <u, A^T v>`` for random ``u``, ``v`` (the adjoint is exact).

    Works for a :class:`deepframe.ops.Operator` (``forward`` / ``adjoint``) and a
    :class:`deepframe.GlobalDictionary` (``D @ w`` / ``D.T @ r``), with the same
    test as their ``dottest()`` (:func:`deepframe.ops.dot_test`). Also checks
    that both maps return exactly the shapes they should (an adjoint must
    restore its source's exact shape, e.g. a strided conv's odd height).

    Parameters
    ----------
    a : Operator or GlobalDictionary
    rtol : float
        Bound on ``|<A u, v> - <u, A^T v>| / max(|<A u, v>|, |<u, A^T v>|)``.
        ``1e-10`` suits float64 weights; use about ``1e-4`` for float32.
    seed : int
        Seed of the random ``u`` and ``v`` (a private generator).
    batch : int
        Number of vector pairs, applied as one batch.

    Returns
    -------
    float
        The relative error.
    """
    from ..ops import dot_test

    forward, adjoint, in_shape, out_shape, dtype, device = _maps(a)
    result = dot_test(
        forward, adjoint, in_shape, out_shape, dtype=dtype, device=device, seed=seed, batch=batch
    )
    if result.forward_shape != (batch, *out_shape):
        raise AssertionError(
            f"{a!r}: forward returned shape {result.forward_shape}, expected {(batch, *out_shape)}"
        )
    if result.adjoint_shape != (batch, *in_shape):
        raise AssertionError(
            f"{a!r}: adjoint returned shape {result.adjoint_shape}, expected {(batch, *in_shape)}"
        )
    if not result.error <= rtol:
        raise AssertionError(
            f"{a!r}: dot test failed, <A u, v> = {result.lhs!r} but <u, A^T v> = "
            f"{result.rhs!r} (relative error {result.error:.3e} > {rtol:.1e})"
        )
    return result.error


def assert_matches_dense(
    a, rtol: float = 1e-12, atol: float = 1e-12, *, seed: int = 0, batch: int = 3
) -> None:
    """Assert that ``A`` applied to random vectors equals ``A.todense()`` times them.

    For a dictionary this compares ``D @ w`` with ``D.todense() @ w`` and
    ``D.T @ r`` with ``D.todense().T @ r``; for an operator ``forward`` /
    ``adjoint`` with the matrix.
    """
    forward, adjoint, in_shape, out_shape, dtype, device = _maps(a)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn((batch, *in_shape), generator=generator, dtype=torch.float64)
    v = torch.randn((batch, *out_shape), generator=generator, dtype=torch.float64)
    matrix = a.todense().detach().cpu().double().numpy()
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    if matrix.shape != (n_out, n_in):
        raise AssertionError(f"{a!r}: todense() has shape {matrix.shape}, expected {(n_out, n_in)}")
    with torch.no_grad():
        au = forward(u.to(dtype=dtype, device=device)).double().cpu().reshape(batch, -1).numpy()
        atv = adjoint(v.to(dtype=dtype, device=device)).double().cpu().reshape(batch, -1).numpy()
    expected = u.reshape(batch, -1).numpy() @ matrix.T
    np.testing.assert_allclose(
        au, expected, rtol=rtol, atol=atol, err_msg=f"{a!r}: A u differs from todense() @ u"
    )
    expected = v.reshape(batch, -1).numpy() @ matrix
    np.testing.assert_allclose(
        atv, expected, rtol=rtol, atol=atol, err_msg=f"{a!r}: A^T v differs from todense().T @ v"
    )


def assert_matches_reference(d, atol: float = 1e-12) -> None:
    """Assert that ``D.todense()`` and ``D.tosparse()`` equal the independent reference.

    The reference (:func:`deepframe.testing.reference.reference_dictionary`)
    builds every block from ``D.graph`` and ``D.weights`` without deepframe's
    operators and assembles them with ``scipy.sparse.bmat``.
    """
    from .reference import reference_dictionary

    expected = reference_dictionary(d.graph, d.weights).toarray()
    dense = d.todense().detach().cpu().double().numpy()
    if dense.shape != expected.shape:
        raise AssertionError(
            f"{d!r}: todense() has shape {dense.shape}, the reference {expected.shape}"
        )
    np.testing.assert_allclose(
        dense,
        expected,
        rtol=0,
        atol=atol,
        err_msg=f"{d!r}: todense() differs from the reference assembly",
    )
    sparse = d.tosparse()
    if tuple(sparse.shape) != expected.shape:
        raise AssertionError(
            f"{d!r}: tosparse() has shape {sparse.shape}, the reference {expected.shape}"
        )
    np.testing.assert_allclose(
        sparse.toarray(),
        expected,
        rtol=0,
        atol=atol,
        err_msg=f"{d!r}: tosparse() differs from the reference assembly",
    )


def _torch_apply(op: str, attrs: dict, x: torch.Tensor, out_size: int | None) -> torch.Tensor:
    """One operator with torch's own functions on a batch ``x`` (zero weights): the kind's
    :meth:`~deepframe.ops.Operator.torch_reference`, written apart from its shape rule."""
    from ..ops import edge_kind

    return edge_kind(op).torch_reference(attrs, x, out_size)


def torch_forward(g: nx.DiGraph) -> dict:
    """Run the architecture with torch on a zero input and report every tensor's shape.

    Uses only the graph's own attributes (``op``, ``kernel_size``, ``stride``,
    ``padding``, ``channels``/``features``, ``merge``), ``torch.nn.functional``
    (``conv2d``, ``linear``, ``max_pool2d``, ``pad``) and zero weights; never
    deepframe's shape inference or operators.

    Returns
    -------
    dict
        ``{node: shape}`` (batch dimension dropped), ``{(k, j): shape}`` for
        each edge's contribution and ``{("input", j): shape}`` for the merged
        input ``z_j`` of node-centric nodes.

    Raises
    ------
    AssertionError
        When the contributions summed at a merge differ in shape (torch would
        broadcast some of them silently).
    """
    source = next(n for n, a in g.nodes(data=True) if a.get("kind") == "input")
    values = {source: torch.zeros((1, *g.nodes[source]["shape"]), dtype=torch.float64)}
    shapes: dict[Any, tuple] = {source: tuple(values[source].shape[1:])}
    for j in nx.topological_sort(g):
        if j == source:
            continue
        na = g.nodes[j]
        node_centric = na.get("merge", "edge") == "input"
        size = na.get("channels", na.get("features"))
        parts = []
        for k in sorted(g.predecessors(j), key=str):
            ea = g.edges[k, j]
            if node_centric:
                x = values[k]
                out = ea.get("channels", ea.get("features", x.shape[1]))
                part = _torch_apply(ea.get("op", DEFAULT_EDGE_KIND), ea, x, out)
            else:
                part = _torch_apply(ea["op"], ea, values[k], size)
            shapes[(k, j)] = tuple(part.shape[1:])
            parts.append(part)
        if len({tuple(p.shape) for p in parts}) != 1:
            raise AssertionError(
                f"node {j!r}: torch contributions of shapes "
                f"{[tuple(p.shape[1:]) for p in parts]} cannot be summed"
            )
        merged = torch.stack(parts).sum(0)
        if node_centric:
            shapes[("input", j)] = tuple(merged.shape[1:])
            merged = _torch_apply(na["op"], na, merged, size)
        values[j] = torch.relu(merged)
        shapes[j] = tuple(merged.shape[1:])
    return shapes


def assert_shapes_match_torch(g: nx.DiGraph) -> None:
    """Assert that every shape :func:`deepframe.validate` infers is what torch computes.

    Compares each node's ``shape``, each edge's ``out_shape`` and each
    node-centric node's ``input_shape`` with :func:`torch_forward`.
    """
    from ..graph import validate

    v = validate(g)
    actual = torch_forward(g)
    for j, na in v.nodes(data=True):
        if tuple(na["shape"]) != actual[j]:
            raise AssertionError(
                f"node {j!r}: inferred shape {tuple(na['shape'])}, torch gives {actual[j]}"
            )
        if na.get("merge", "edge") == "input" and tuple(na["input_shape"]) != actual[("input", j)]:
            raise AssertionError(
                f"node {j!r}: inferred input_shape {tuple(na['input_shape'])}, "
                f"torch gives {actual[('input', j)]}"
            )
    for k, j, ea in v.edges(data=True):
        if tuple(ea["out_shape"]) != actual[(k, j)]:
            raise AssertionError(
                f"edge {k!r} -> {j!r}: inferred out_shape "
                f"{tuple(ea['out_shape'])}, torch gives {actual[(k, j)]}"
            )
        if tuple(ea["in_shape"]) != actual[k]:
            raise AssertionError(
                f"edge {k!r} -> {j!r}: in_shape {tuple(ea['in_shape'])}, the "
                f"source has shape {actual[k]}"
            )


# Operators whose result the host needs before it can go on: a tensor turned into a
# Python number (``.item()``, ``float()``, ``int()``, ``bool()``, ``if tensor``), and
# outputs whose shape depends on the data.
_SYNC_OPS = frozenset(
    {
        "aten._local_scalar_dense",
        "aten.is_nonzero",
        "aten.equal",
        "aten.nonzero",
        "aten.masked_select",
        "aten.unique_consecutive",
        "aten._unique",
        "aten._unique2",
        "aten.unique_dim",
        "aten.repeat_interleave",
    }
)


def _sync_reason(func, args, kwargs) -> str | None:
    """Why dispatching ``func(*args, **kwargs)`` would synchronise, or ``None``."""
    name = func.overloadpacket._qualified_op_name.replace("::", ".")
    if name in _SYNC_OPS:
        return name
    flat = list(args) + list((kwargs or {}).values())
    tensors = [a for a in flat if isinstance(a, torch.Tensor)]
    for a in flat:
        if isinstance(a, (list, tuple)):
            tensors += [t for t in a if isinstance(t, torch.Tensor)]
    if name in ("aten.index", "aten.index_put", "aten.index_put_"):
        if any(t.dtype in (torch.bool, torch.uint8) for t in tensors[1:]):
            return f"{name} with a boolean mask (data-dependent shape)"
    if name in ("aten._to_copy", "aten.copy_", "aten.to"):
        devices = {t.device.type for t in tensors}
        target = (kwargs or {}).get("device")
        if target is not None:
            devices.add(torch.device(target).type)
        if "cpu" in devices and len(devices) > 1:
            return f"{name} between the device and the host"
    return None


@contextmanager
def assert_no_host_sync() -> Iterator[list]:
    """Assert that the block (forward and backward) never makes the host wait.

    Every operator dispatched inside the block, including the ones the autograd
    engine runs for ``backward()``, is checked; on exit an ``AssertionError``
    lists those that would synchronise a GPU with the host: conversions of a
    tensor to a Python number (``.item()``, ``float(t)``, ``bool(t)``,
    ``if t:``), operators whose output shape depends on the data (``nonzero``,
    boolean-mask indexing, ``unique``, ...), and copies between the device and
    the host. This works on CPU tensors too, so CPU-only test runs check the
    property a GPU run relies on.

    What it cannot see: reads that bypass the dispatcher on CPU tensors
    (``t.numpy()``, ``t.tolist()``; on a GPU they need a device-to-host copy,
    which it does see). On a CUDA device, ``torch.cuda.set_sync_debug_mode``
    is the authoritative check; deepframe's CUDA tests run both.

    Yields
    ------
    list of str
        The offending operators found so far (empty on success).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    found: list[str] = []

    class _Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            reason = _sync_reason(func, args, kwargs)
            if reason is not None:
                found.append(reason)
            return func(*args, **(kwargs or {}))

    with _Watch():
        yield found
    if found:
        counts = {r: found.count(r) for r in dict.fromkeys(found)}
        listing = ", ".join(f"{r} (x{n})" for r, n in counts.items())
        raise AssertionError(f"host synchronisation inside the block: {listing}")
