"""The global dictionary ``D`` of an architecture graph and its weights (docs/concepts.md).

The global non-negative LASSO of a network is

    minimise_{w >= 0}  F(w) = 1/2 sum_t ||r_t(w)||^2 + sum_j <lambda_j, w_j>

with one residual term ``r_t = sum_k P_tk w_k + sum_inputs P_t,x x - B_t w_j``
per edge or node-centric node (:mod:`deepframe.terms`, which builds them).
Stacking all terms gives ``r = y - D w``: row block ``t`` of ``D`` holds
``B_t`` at column block ``j`` and ``-P_tk`` at column blocks ``k``; the target
``y`` holds the input's contributions. Column blocks follow
:func:`deepframe.graph.activation_nodes`; row blocks follow the terms in the
order of their synthesis node, then their target's name.

This module holds the weights of a graph (:func:`random_weights`,
:func:`node_lambdas`, a weights mapping's layout and :func:`split_weights`),
the objective ``F`` (:func:`lasso_objective`) and :class:`GlobalDictionary`,
the operator ``D`` (:func:`dictionary` builds it). Random weights are checked
against the memory budget first (:func:`deepframe.memory.check_memory`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import networkx as nx
import torch

from . import ops
from .graph import RESERVED_NAMES, validate
from .memory import check_memory
from .terms import Structure, build_terms, structure

__all__ = [
    "GlobalDictionary",
    "dictionary",
    "random_weights",
    "node_lambdas",
    "node_key",
    "split_weights",
    "lasso_objective",
    "NODE_TENSORS",
    "HEAD_KEYS",
]

#: variance and ``eps``.
NODE_TENSORS = ("lambda", "bn_scale", "bn_mean", "bn_var", "bn_eps")
_BN_EPS = 1e-5  # a weights mapping's batch norm without "bn_eps:j": the solvers' eps
#: Keys of the classifier head (global average pooling + linear) in a weights mapping
#: (names :func:`deepframe.validate` reserves: no node may be called so).
HEAD_KEYS = RESERVED_NAMES


def node_key(j, what: str) -> str:
    """Name of a per-node tensor (one of :data:`NODE_TENSORS`) in a weights mapping:
    ``"what:j"``, e.g. ``"lambda:relu_1"``.

    Built from ``str(j)``; a validated graph's names hold no ``":"``
    (:data:`deepframe.graph.KEY_SEPARATORS`), so the key names one node and
    never equals an edge's key ``"k->j"`` or a node-centric operator's ``"j"``.
    """
    if what not in NODE_TENSORS:
        raise ValueError(f"node_key: unknown per-node tensor {what!r}; expected {NODE_TENSORS}")
    return f"{what}:{j}"


def lasso_objective(residuals, codes: Mapping, lambdas: Mapping, nodes=None) -> torch.Tensor:
    """``F(w) = 1/2 sum_t ||r_t||^2 + sum_j <lambda_j, w_j>`` per sample: ``(B,)``.

    The global non-negative LASSO objective (Eq. 11; Eq. 12 / 16 as one
    matrix) from its residuals: :meth:`GlobalDictionary.objective` and the
    pursuit's :class:`deepframe.Trace` both evaluate ``F`` here.

    Parameters
    ----------
    residuals : iterable of torch.Tensor
        ``r_t`` per term, each ``(B, *term shape)``.
    codes : mapping
        ``{node: (B, *shape)}``.
    lambdas : mapping
        ``{node: (C,) or (features,)}``, broadcast over a node's positions.
    nodes : sequence, optional
        The nodes of the penalty, in order (default: the keys of ``lambdas``).
    """
    smooth = sum(0.5 * r.flatten(1).pow(2).sum(1) for r in residuals)
    return smooth + _penalty(codes, lambdas, lambdas if nodes is None else nodes)


def _penalty(codes: Mapping, lambdas: Mapping, nodes) -> torch.Tensor:
    """``sum_j <lambda_j, w_j>`` per sample, lambda broadcast over positions."""
    total = 0.0
    for j in nodes:
        w = codes[j]
        lam = lambdas[j].to(w.dtype).reshape(-1, *([1] * (w.dim() - 2)))
        total = total + (w * lam).flatten(1).sum(1)
    return total


def random_weights(
    g: nx.DiGraph | Structure,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    memory_budget: int | str | None = None,
) -> dict[str, torch.Tensor]:
    """He-style random weights, ``N(0, 2 / fan_in)``, from a private seeded generator.

    Raises
    ------
    MemoryBudgetError
        The weights would need more than the memory budget (see
        :func:`deepframe.memory.check_memory`); nothing is allocated.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"random_weights: seed must be an integer >= 0, got {seed!r}")
    s = structure(g)
    check_memory(s, "weights", dtype=dtype, memory_budget=memory_budget)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weights = {}
    for key, (shape, fan_in) in s.parameters.items():
        w = torch.randn(shape, generator=generator, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
        weights[key] = w.to(dtype=dtype, device=device)
    return weights


def node_lambdas(g: nx.DiGraph | Structure, *, dtype=torch.float64, device="cpu") -> dict:
    """``lambda_j`` per node from the ``bias`` attribute: a tensor of shape ``(C,)`` / ``(d,)``."""
    s = structure(g)
    out = {}
    for j in s.nodes:
        a = s.graph.nodes[j]
        bias = a.get("bias", 0.0)
        n = a["shape"][0]
        value = torch.as_tensor(bias, dtype=dtype, device=device)
        out[j] = value.expand(n).clone() if value.dim() == 0 else value.clone()
    return out


def split_weights(
    g: nx.DiGraph | Structure, weights: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict[str, torch.Tensor]]:
    """Split a weights mapping into edge weights, per-node tensors and the head.

    A weights mapping (what :func:`deepframe.from_torch` returns, what
    :func:`dictionary` and :func:`deepframe.compile` accept) holds

    * every key of :func:`deepframe.terms.parameter_shapes` (``"k->j"``, and ``"j"`` for
      node-centric operators) with a tensor of that shape;
    * optionally, per node ``j``, ``"lambda:j"`` (shape ``(C,)``/``(d,)``) and,
      for ``batchnorm=True`` nodes, ``"bn_scale:j"``, ``"bn_mean:j"``,
      ``"bn_var:j"`` (each ``(C,)``) and ``"bn_eps:j"`` (a scalar);
    * optionally the head, ``"head.weight"`` (``(classes, C_out)``) and
      ``"head.bias"`` (``(classes,)``).

    Parameters
    ----------
    g : networkx.DiGraph or Structure
        A validated graph (or its :class:`~deepframe.terms.Structure`).
    weights : mapping of str to torch.Tensor

    Returns
    -------
    edges : dict
        ``{key: tensor}`` for the keys of :func:`deepframe.terms.parameter_shapes`.
    nodes : dict
        ``{what: {node: tensor}}`` for ``what`` in :data:`NODE_TENSORS`.
    head : dict
        ``{"weight": ..., "bias": ...}`` (empty when the mapping has no head).

    Raises
    ------
    ValueError
        A missing edge weight, a tensor of the wrong shape, an unknown key, a
        batch-norm tensor for a node without ``batchnorm=True``, an incomplete
        set of batch-norm tensors or an incomplete head; the message names the key.
    """
    st = structure(g)
    g = st.graph
    expected = st.parameters
    nodes_by_name = {str(j): j for j in st.nodes}
    edges: dict[str, torch.Tensor] = {}
    nodes: dict[str, dict] = {what: {} for what in NODE_TENSORS}
    head: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if not isinstance(key, str):
            raise ValueError(
                f"weights: key {key!r} ({type(key).__name__}) is not a string; keys are "
                "'k->j' for an edge, 'lambda:j' for a node, 'head.weight' and 'head.bias'"
            )
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"weights[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if key in expected:
            shape = tuple(expected[key][0])
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"weights[{key!r}] has shape {tuple(value.shape)}, the graph needs {shape}"
                )
            edges[key] = value
            continue
        if key in HEAD_KEYS:
            head[key.removeprefix("head.")] = value
            continue
        what, sep, name = key.partition(":")
        if not sep or what not in NODE_TENSORS or name not in nodes_by_name:
            raise ValueError(
                f"weights: unknown key {key!r}; expected the edge weights "
                f"{sorted(expected)[:4]}{'...' if len(expected) > 4 else ''}, "
                f"'lambda:<node>', 'bn_scale|bn_mean|bn_var|bn_eps:<node>' or {HEAD_KEYS}"
            )
        j = nodes_by_name[name]
        size = g.nodes[j]["shape"][0]
        shape = () if what == "bn_eps" else (size,)
        if tuple(value.shape) != shape:
            raise ValueError(f"weights[{key!r}] has shape {tuple(value.shape)}, expected {shape}")
        if what.startswith("bn_") and not g.nodes[j].get("batchnorm", False):
            raise ValueError(f"weights[{key!r}]: node {j!r} has no batchnorm=True")
        nodes[what][j] = value
    missing = sorted(set(expected) - set(edges))
    if missing:
        raise ValueError(f"weights: missing edge weights {missing}")
    for j in set().union(*(nodes[w] for w in ("bn_scale", "bn_mean", "bn_var"))):
        absent = [w for w in ("bn_scale", "bn_mean", "bn_var") if j not in nodes[w]]
        if absent:
            raise ValueError(
                f"weights: node {j!r} has batch-norm tensors but lacks "
                f"{[node_key(j, w) for w in absent]}"
            )
    if head:
        if set(head) != {"weight", "bias"}:
            raise ValueError(f"weights: the head needs both {HEAD_KEYS}, got {sorted(head)}")
        c_out = st.node_shapes[st.output][0]
        w, b = head["weight"], head["bias"]
        if w.dim() != 2 or w.shape[1] != c_out or tuple(b.shape) != (w.shape[0],):
            raise ValueError(
                f"weights: head.weight {tuple(w.shape)} and head.bias {tuple(b.shape)} do not "
                f"make a linear head of the output node's {c_out} channels/features"
            )
    return edges, nodes, head


# --------------------------------------------------------------------------
# the global dictionary
# --------------------------------------------------------------------------
class GlobalDictionary:
    """The structured global dictionary ``D`` of an architecture (docs/concepts.md, Eq. 12/16).

    A real linear operator from codes ``w`` (``N`` entries, column blocks =
    activation nodes) to residual space (``n`` entries, row blocks = terms),
    with ``r = y - D w``. Vectors are torch tensors of shape ``(N,)`` or
    ``(B, N)`` (``D @ w``) and ``(n,)`` or ``(B, n)`` (``D.T @ r``).

    Parameters
    ----------
    graph : networkx.DiGraph or Structure
        Validated architecture, or its :class:`~deepframe.terms.Structure` (then nothing about
        the graph is recomputed); :attr:`graph` is the graph, :attr:`structure`
        the structure.
    weights : mapping
        ``{key: tensor}`` as :func:`deepframe.terms.parameter_shapes` lists.
    lambdas : mapping, optional
        ``{node: (C,) tensor}`` sparsity weights; default from node ``bias``.
    column_scales : mapping, optional
        ``{node: (C,) tensor}``: scale node j's atoms channel by channel in its
        *synthesis* blocks, ``B_t -> B_t S_j`` with ``S_j = diag(s_j)`` (operator
        ``A_t -> S_j A_t``, :class:`deepframe.ops.Scaled`); the target blocks
        ``-P_tj`` at column block j stay unscaled. This is batch norm folded
        into the problem (docs/solvers.md, "Batch norm"): :meth:`deepframe.PursuitNet.dictionary`
        passes ``s_j = gamma_j / sqrt(running_var_j + eps)``. Since only some
        blocks of a column scale, normalised columns change direction: the
        geometry of the folded dictionary differs from the unscaled one.
    dtype, device : optional
        Of the vectors the operator makes (``todense``, ``dottest``); default
        those of the weights (float64 on the CPU for a parameter-free graph).
    """

    def __init__(
        self,
        graph: nx.DiGraph | Structure,
        weights: Mapping[str, torch.Tensor],
        lambdas: Mapping | None = None,
        *,
        column_scales: Mapping | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        self.structure = st = structure(graph)
        self.graph = st.graph
        self.weights = dict(weights)
        expected = st.parameters
        missing = set(expected) - set(self.weights)
        if missing:
            raise ValueError(f"GlobalDictionary: missing weights {sorted(missing)}")
        for key, (shape, _) in expected.items():
            got = tuple(self.weights[key].shape)
            if got != tuple(shape):
                raise ValueError(
                    f"GlobalDictionary: weight {key!r} has shape {got}, the graph "
                    f"needs {tuple(shape)}"
                )
        sample = next(iter(self.weights.values()), None)
        if dtype is None:
            dtype = sample.dtype if sample is not None else torch.float64
        if device is None:
            device = sample.device if sample is not None else "cpu"
        self.dtype, self.device = dtype, torch.device(device)
        self.lambdas = (
            dict(lambdas)
            if lambdas is not None
            else node_lambdas(st, dtype=self.dtype, device=self.device)
        )
        self.input = st.input
        self.input_shape = st.input_shape
        self.nodes = list(st.nodes)
        self.node_shapes = dict(st.node_shapes)
        self.column_scales = _check_scales(column_scales, self.nodes, self.node_shapes)
        self.terms = build_terms(st, self.weights)
        for t in self.terms:
            if t.synth in self.column_scales:
                t.op = ops.Scaled(t.op, self.column_scales[t.synth])
        self.col_sizes = [math.prod(self.node_shapes[j]) for j in self.nodes]
        self.row_sizes = [t.size for t in self.terms]
        self.col_offsets = _offsets(self.col_sizes)
        self.row_offsets = _offsets(self.row_sizes)

    def to(self, dtype: torch.dtype | None = None, device=None) -> GlobalDictionary:
        """A copy with weights and lambdas converted (e.g. to float64 for exact metrics)."""
        return GlobalDictionary(
            self.structure,
            {k: w.to(dtype=dtype, device=device) for k, w in self.weights.items()},
            {j: lam.to(dtype=dtype, device=device) for j, lam in self.lambdas.items()},
            column_scales={
                j: s.to(dtype=dtype, device=device) for j, s in self.column_scales.items()
            },
            dtype=dtype if dtype is not None else self.dtype,
            device=device if device is not None else self.device,
        )

    # -- structure ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(n, N)``: rows (residual entries) by atoms."""
        return (sum(self.row_sizes), sum(self.col_sizes))

    @property
    def col_blocks(self) -> list[tuple[object, int]]:
        """Column blocks ``(node, size)`` in order."""
        return list(zip(self.nodes, self.col_sizes))

    @property
    def row_blocks(self) -> list[tuple[str, int]]:
        """Row blocks ``(term name, size)`` in order."""
        return [(t.name, t.size) for t in self.terms]

    @property
    def blocks(self) -> dict[tuple[str, object], str]:
        """Structurally nonzero blocks ``{(term name, node): label}``.

        Labels: ``"B"`` (synthesis block), ``"-I"`` (identity target),
        ``"-E"`` (other target operator).
        """
        out = {}
        for t in self.terms:
            out[(t.name, t.synth)] = "B"
            for k, p in t.targets:
                out[(t.name, k)] = "-I" if isinstance(p, ops.Identity) else "-E"
        return out

    def block_map(self) -> str:
        """A printable map of the blocks: ``B``, ``-I``, ``-E`` or ``0``."""
        blocks = self.blocks
        names = [str(j) for j in self.nodes]
        row_w = max(len(t.name) for t in self.terms)
        col_w = max(max(len(n) for n in names), 2)
        lines = [" " * row_w + " | " + " ".join(n.rjust(col_w) for n in names)]
        lines.append("-" * len(lines[0]))
        for t in self.terms:
            cells = [blocks.get((t.name, j), "0").rjust(col_w) for j in self.nodes]
            lines.append(t.name.rjust(row_w) + " | " + " ".join(cells))
        return "\n".join(lines)

    # -- conversions between flat vectors and codes -------------------------
    def codes(self, w: torch.Tensor) -> dict:
        """Split ``(B, N)`` (or ``(N,)``) into ``{node: (B, *shape)}``."""
        w2 = w.unsqueeze(0) if w.dim() == 1 else w
        if w2.dim() != 2 or w2.shape[1] != self.shape[1]:
            raise ValueError(
                f"expected codes of shape (N,) or (B, N) with N={self.shape[1]}, "
                f"got {tuple(w.shape)}"
            )
        return {
            j: w2[:, o : o + s].reshape(-1, *self.node_shapes[j])
            for j, o, s in zip(self.nodes, self.col_offsets, self.col_sizes)
        }

    def flat(self, codes: Mapping) -> torch.Tensor:
        """Concatenate ``{node: (B, *shape)}`` into ``(B, N)`` in column order."""
        return torch.cat([codes[j].flatten(1) for j in self.nodes], dim=1)

    def _rows(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.flatten(1) for p in parts], dim=1)

    def _split_rows(self, r: torch.Tensor) -> list[torch.Tensor]:
        r2 = r.unsqueeze(0) if r.dim() == 1 else r
        if r2.dim() != 2 or r2.shape[1] != self.shape[0]:
            raise ValueError(
                f"expected residuals of shape (n,) or (B, n) with "
                f"n={self.shape[0]}, got {tuple(r.shape)}"
            )
        return [
            r2[:, o : o + s].reshape(-1, *t.shape)
            for t, o, s in zip(self.terms, self.row_offsets, self.row_sizes)
        ]

    # -- the operator ---------------------------------------------------------
    def _operand(self, v, what: str) -> tuple[torch.Tensor, bool]:
        """``v`` as a tensor of the dictionary's dtype and device, and whether it came
        as a numpy array (scipy's ``LinearOperator`` rule: numpy in, numpy out)."""
        import numpy as np

        from_numpy = isinstance(v, np.ndarray)
        if from_numpy:
            v = torch.from_numpy(np.ascontiguousarray(v))
        elif not isinstance(v, torch.Tensor):
            raise TypeError(
                f"GlobalDictionary: {what} must be a torch.Tensor or a numpy array, "
                f"got {type(v).__name__}"
            )
        if v.is_complex():
            raise TypeError(f"GlobalDictionary: {what} must be real, got {v.dtype}")
        return v.to(dtype=self.dtype, device=self.device), from_numpy

    def matvec(self, w) -> torch.Tensor:
        """``D w``: row block ``t`` is ``B_t w_j - sum_k P_tk w_k``.

        ``w`` is ``(N,)`` or ``(B, N)``, a tensor or a numpy array of any real
        dtype: it is cast to the dictionary's dtype and device, and the result
        has that dtype (a numpy array for a numpy ``w``, as scipy's
        ``LinearOperator`` returns).
        """
        w, from_numpy = self._operand(w, "w")
        codes = self.codes(w)
        out = self._rows([-t.residual(codes, None) for t in self.terms])
        out = out.squeeze(0) if w.dim() == 1 else out
        return out.detach().cpu().numpy() if from_numpy else out

    def rmatvec(self, r) -> torch.Tensor:
        """``D^T r``: column block ``j`` is ``sum_t A_t r_t - sum_t P_tj^T r_t``
        (``r`` as ``w`` of :meth:`matvec`)."""
        r, from_numpy = self._operand(r, "r")
        parts = self._split_rows(r)
        batch = parts[0].shape[0]
        cols = {j: parts[0].new_zeros((batch, *self.node_shapes[j])) for j in self.nodes}
        for t, rt in zip(self.terms, parts):
            cols[t.synth] = cols[t.synth] + t.op.forward(rt)
            for k, p in t.targets:
                cols[k] = cols[k] - p.adjoint(rt)
        out = self.flat(cols)
        out = out.squeeze(0) if r.dim() == 1 else out
        return out.detach().cpu().numpy() if from_numpy else out

    def __matmul__(self, w: torch.Tensor) -> torch.Tensor:
        return self.matvec(w)

    @property
    def T(self) -> _Transposed:
        """The adjoint: ``D.T @ r`` is :meth:`rmatvec`."""
        return _Transposed(self)

    # -- the problem ----------------------------------------------------------
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """``y`` for a batch of inputs ``x`` of shape ``(B, *input_shape)``: ``(B, n)``.

        ``x`` as the dictionary sees it (for a compiled model: ``net.normalize(x)``).
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected inputs of shape (B, {self.input_shape}), got {tuple(x.shape)}"
            )
        parts = []
        for t in self.terms:
            y = x.new_zeros((x.shape[0], *t.shape))
            for p in t.inputs:
                y = y + p.forward(x)
            parts.append(y)
        return self._rows(parts)

    def residuals(self, x: torch.Tensor, codes: Mapping) -> list[torch.Tensor]:
        """``[r_t]`` per term, each ``(B, *term.shape)``."""
        return [t.residual(codes, x) for t in self.terms]

    def penalty(self, codes: Mapping) -> torch.Tensor:
        """``sum_j <lambda_j, w_j>`` per sample, lambda broadcast over positions."""
        return _penalty(codes, self.lambdas, self.nodes)

    def objective(self, x: torch.Tensor, w) -> torch.Tensor:
        """``F(w) = 1/2 ||y - D w||^2 + sum_j <lambda_j, w_j>`` per sample: ``(B,)``.

        ``w`` is ``(B, N)`` or a codes mapping ``{node: (B, *shape)}``. ``x`` is
        the signal the dictionary reconstructs, ``y = target(x)``, exactly as
        given: no normalisation happens here. For a compiled model with input
        normalisation (``compile(..., mean=, std=)``), whose pursuit runs on
        ``(x - mean) / std``, pass ``net.normalize(x)``:
        ``net.dictionary().objective(net.normalize(x), codes)`` is the
        objective the solver decreases (its trace's ``objective``).
        """
        codes = w if isinstance(w, Mapping) else self.codes(w)
        return lasso_objective(self.residuals(x, codes), codes, self.lambdas, self.nodes)

    def lipschitz(self, *, exact: bool = False, estimate: bool = False, seed: int = 0) -> dict:
        """``L_j = sum_{t: synth j} ||B_t S_j||^2 + sum_{t: j target} ||P_tj||^2`` per node.

        By the triangle inequality ``L_j >= ||D_j||_2^2 = lambda_max(D_j^T D_j)``,
        the Lipschitz constant of the block gradient, whenever every
        ``||.||^2`` is at least the operator's squared norm. How each is taken:

        * default: :meth:`deepframe.ops.Operator.sqnorm_bound`, a provable upper
          bound (exact for dense, identity and shortcut blocks, the periodic
          extension for convolutions): what the pursuit solvers use;
        * ``exact=True``: the spectral norm of each block's dense matrix (small
          dictionaries);
        * ``estimate=True``: power iteration (seeded by ``seed``), which
          approaches each norm *from below*: an estimate, not a bound.

        Returns ``{node: float}``.
        """
        if exact and estimate:
            raise ValueError("lipschitz: choose exact=True or estimate=True, not both")

        def sq(op) -> float:
            if exact or estimate:
                return op.sqnorm(exact=exact, seed=seed)
            return float(op.sqnorm_bound())

        out = {j: 0.0 for j in self.nodes}
        for t in self.terms:
            out[t.synth] += sq(t.op)
            for k, p in t.targets:
                out[k] += sq(p)
        return out

    # -- exports --------------------------------------------------------------
    def todense(self, chunk: int = 1024) -> torch.Tensor:
        """``D`` as a dense ``(n, N)`` tensor, by applying :meth:`matvec` to unit vectors."""
        n, big_n = self.shape
        out = torch.empty((n, big_n), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for start in range(0, big_n, chunk):
                stop = min(start + chunk, big_n)
                eye = torch.zeros((stop - start, big_n), dtype=self.dtype, device=self.device)
                eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
                out[:, start:stop] = self.matvec(eye).T
        return out

    def tosparse(self):
        """``D`` as a ``scipy.sparse.csr_array``, assembled block by block with ``bmat``."""
        import scipy.sparse as sp

        col = {j: i for i, j in enumerate(self.nodes)}
        grid = [[None] * len(self.nodes) for _ in self.terms]
        for i, t in enumerate(self.terms):
            grid[i][col[t.synth]] = t.op.tosparse().T
            for k, p in t.targets:
                grid[i][col[k]] = -p.tosparse()
        for i, t in enumerate(self.terms):  # bmat needs a size for every block row/column
            if all(b is None for b in grid[i]):
                grid[i][0] = sp.csr_array((t.size, self.col_sizes[0]))
        return sp.csr_array(sp.bmat(grid, format="csr"))

    def as_linear_operator(self):
        """``D`` as a ``scipy.sparse.linalg.LinearOperator`` (float64, on the CPU)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def mv(v):
            w = torch.as_tensor(np.asarray(v).reshape(-1), dtype=self.dtype, device=self.device)
            with torch.no_grad():
                return self.matvec(w).double().cpu().numpy()

        def rmv(v):
            r = torch.as_tensor(np.asarray(v).reshape(-1), dtype=self.dtype, device=self.device)
            with torch.no_grad():
                return self.rmatvec(r).double().cpu().numpy()

        return LinearOperator(self.shape, matvec=mv, rmatvec=rmv, dtype=np.float64)

    def dottest(self, *, seed: int = 0, batch: int = 2) -> float:
        """Relative error of ``<D u, v> = <u, D^T v>`` for random ``u``, ``v``
        (:func:`deepframe.ops.dot_test`)."""
        n, big_n = self.shape
        return ops.dot_test(
            self.matvec,
            self.rmatvec,
            (big_n,),
            (n,),
            dtype=self.dtype,
            device=self.device,
            seed=seed,
            batch=batch,
        ).error

    def __repr__(self) -> str:
        n, big_n = self.shape
        scaled = f", {len(self.column_scales)} scaled nodes" if self.column_scales else ""
        return (
            f"GlobalDictionary({n} rows x {big_n} atoms, {len(self.terms)} terms, "
            f"{len(self.nodes)} nodes{scaled})"
        )


class _Transposed:
    def __init__(self, d: GlobalDictionary):
        self._d = d

    @property
    def shape(self) -> tuple[int, int]:
        n, big_n = self._d.shape
        return (big_n, n)

    def __matmul__(self, r: torch.Tensor) -> torch.Tensor:
        return self._d.rmatvec(r)


def _check_scales(scales: Mapping | None, nodes: list, shapes: Mapping) -> dict:
    """Validate ``{node: (C,) tensor}`` column scales (see :class:`GlobalDictionary`)."""
    out = {}
    for j, s in (scales or {}).items():
        if j not in shapes:
            raise ValueError(
                f"GlobalDictionary: column_scales for {j!r}, which is not an activation "
                f"node; nodes are {nodes}"
            )
        c = shapes[j][0]
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (c,):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(
                f"GlobalDictionary: column_scales[{j!r}] must be a tensor of shape ({c},) "
                f"(one factor per channel of node {j!r}), got {got}"
            )
        out[j] = s
    return out


def _offsets(sizes: list[int]) -> list[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


def dictionary(
    graph: nx.DiGraph,
    *,
    seed: int = 0,
    weights: Mapping | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    memory_budget: int | str | None = None,
) -> GlobalDictionary:
    """The global dictionary of ``graph`` (validated first).

    Parameters
    ----------
    graph : networkx.DiGraph
    seed : int
        Seed of the He-style random weights ``N(0, 2 / fan_in)`` (ignored when
        ``weights`` is given).
    weights : mapping, optional
        ``{key: tensor}`` as :func:`deepframe.terms.parameter_shapes` lists, optionally with the
        per-node ``"lambda:j"`` (the sparsity weights, default from the nodes'
        ``bias``) and the other entries :func:`split_weights` describes (the
        mapping :func:`deepframe.from_torch` returns). Batch-norm statistics of
        a ``batchnorm=True`` node are folded as in eval mode: the column scales
        ``s_j = gamma_j / sqrt(var_j + eps_j)`` of its synthesis blocks and
        ``lambda_j + s_j mean_j`` (not clipped: minus the eval-mode network's
        bias), the dictionary of the network as it runs in eval mode.
    dtype, device :
        Of the random weights.
    memory_budget : int or str, optional
        Cap on the random weights' memory (see :func:`deepframe.memory.check_memory`).

    Raises
    ------
    ArchitectureError
        The graph is invalid.
    MemoryBudgetError
        The random weights would exceed the memory budget.
    """
    g = structure(validate(graph))
    if weights is None:
        weights = random_weights(
            g, seed=seed, dtype=dtype, device=device, memory_budget=memory_budget
        )
        return GlobalDictionary(g, weights, dtype=dtype, device=device)
    edges, nodes, _ = split_weights(g, weights)
    lambdas, scales = None, {}
    if nodes["lambda"] or nodes["bn_scale"]:
        sample = next(iter({**nodes["lambda"], **nodes["bn_scale"]}.values()))
        lambdas = node_lambdas(g, dtype=sample.dtype, device=sample.device)
        lambdas.update(nodes["lambda"])
    for j, gamma in nodes["bn_scale"].items():  # batch norm in eval mode, folded
        eps = nodes["bn_eps"].get(j)
        eps = _BN_EPS if eps is None else float(eps)
        scales[j] = gamma / torch.sqrt(nodes["bn_var"][j] + eps)
        lambdas[j] = lambdas[j] + scales[j] * nodes["bn_mean"][j]
    return GlobalDictionary(
        g,
        edges,
        lambdas,
        column_scales=scales or None,
        dtype=dtype if not edges else None,
        device=device if not edges else None,
    )
