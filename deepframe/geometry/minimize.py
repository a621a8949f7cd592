"""Minimum deep frame potential of an architecture: dataless model selection.

docs/geometry.md, section 7 (Murdock & Lucey 2020). Adam on
``DFP(W) = (1 / N_nz) sum_{(i, j) in S} G_ij(W)^2`` from seeded random
weights, through the exact structured computation (or the dense reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch

from ..dictionary import GlobalDictionary, random_weights
from ..graph import validate
from .dense import dense_matrix, dense_structure, normalised_gram
from .metrics import check_method
from .structured import GramPlan

__all__ = ["FramePotentialResult", "minimize_frame_potential"]


@dataclass
class FramePotentialResult:
    """Result of :func:`minimize_frame_potential`.

    Attributes
    ----------
    weights : dict
        ``{key: tensor}`` final weights (detached, on the device used).
    history : list of float
        Deep frame potential before every step, then after the last one
        (``steps + 1`` values).
    dictionary : GlobalDictionary
        The dictionary with the final weights.
    initial_weights : dict
        The seeded starting point (on the CPU).
    """

    weights: dict
    history: list
    dictionary: GlobalDictionary
    initial_weights: dict

    @property
    def initial(self) -> float:
        """Deep frame potential of the random starting weights."""
        return self.history[0]

    @property
    def final(self) -> float:
        """Deep frame potential of the final weights."""
        return self.history[-1]


def minimize_frame_potential(
    graph: nx.DiGraph,
    steps: int = 100,
    lr: float = 1e-2,
    seed: int = 0,
    *,
    method: str = "structured",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    memory_budget: int | None = None,
) -> FramePotentialResult:
    """Minimum deep frame potential of an architecture by gradient descent over its weights.

    Dataless model selection (Murdock & Lucey 2020): starting from the seeded
    He-style random weights of :func:`deepframe.dictionary.random_weights`
    (drawn on the CPU in float64, then moved), run ``steps`` Adam steps (learning rate
    ``lr``) on

        DFP(W) = (1 / N_nz) sum_{(i, j) in S} G_ij(W)^2,

    differentiating through the exact structured (or dense) computation. The
    objective is invariant to the scale of each atom, so only the directions of
    the atoms move. No data is involved.

    The paper's model-selection criterion is the minimum ``DFP* = min_W
    DFP(W)`` (see :func:`deep_frame_potential` for the normalisation): since
    ``mu(W)^2 >= DFP(W) >= DFP*`` for all weights, a lower ``DFP*`` is a lower
    floor on the coherence the architecture can reach. The problem is not
    convex: the returned ``final`` DFP is an upper estimate of ``DFP*``
    (reached from one seed in ``steps`` steps), so compare architectures with
    the same ``steps``, ``lr`` and seeds, and read ``sqrt(final)`` as an
    estimate, not a certified bound, of that floor.

    Parameters
    ----------
    graph : networkx.DiGraph
    steps : int
    lr : float
    seed : int
        Seed of the starting weights.
    method : ``"structured"`` or ``"dense"``
    device : torch device, optional
        Where to compute (default CPU). With float64 the result does not depend
        on it beyond rounding.
    dtype : torch.dtype
    memory_budget : int or str, optional
        See :func:`gram_metrics`.

    Returns
    -------
    FramePotentialResult
    """
    check_method(method)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    g = validate(graph)
    device = torch.device(device if device is not None else "cpu")
    initial = random_weights(
        g, seed=seed, dtype=torch.float64, device="cpu", memory_budget=memory_budget
    )
    params = {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in initial.items()}
    d = GlobalDictionary(g, params)
    if method == "structured":
        plan = GramPlan.build(d, memory_budget=memory_budget)
        n_nz = plan.structural_nonzeros()

        def objective():
            return plan.evaluate(order=1, coherence=False).offdiagonal / max(n_nz, 1)
    else:
        structure = dense_structure(d, memory_budget).to(device)
        n_nz = int(structure.sum())

        def objective():
            gram, _ = normalised_gram(dense_matrix(d, memory_budget))
            return gram.pow(2)[structure].sum() / max(n_nz, 1)

    history = []
    optimizer = torch.optim.Adam(list(params.values()), lr=lr) if params else None
    for _ in range(steps if params else 0):
        optimizer.zero_grad()
        value = objective()
        history.append(value.item())
        value.backward()
        optimizer.step()
    with torch.no_grad():
        history.append(float(objective()))
    final = {k: v.detach().clone() for k, v in params.items()}
    return FramePotentialResult(final, history, GlobalDictionary(g, final), initial)
