"""Hypothesis strategies over architecture graphs.

Importing this module imports ``hypothesis`` (``import deepframe`` never does).

>>> from hypothesis import given, settings
>>> import deepframe as df
>>> from deepframe.testing import architectures, assert_dottest
>>> @settings(max_examples=20, deadline=None)
... @given(architectures(max_nodes=4))
... def test_adjoint(g):
...     assert_dottest(df.dictionary(g, seed=0))

The strategies wrap the plain generators of
:mod:`deepframe.testing.graphs` and :mod:`deepframe.testing.malformed`
with ``hypothesis.strategies.randoms()``,
so a failing graph shrinks towards fewer nodes, smaller shapes and the first
operator choices, and the same graphs can be reproduced without hypothesis
from a seed (``random_architecture(random.Random(seed))``).
"""

from __future__ import annotations

from collections.abc import Sequence

import hypothesis.strategies as st
import networkx as nx

from .graphs import INPUTS, MERGES, OPS, _Config, random_architecture
from .malformed import MALFORMED_KINDS, random_malformed

__all__ = ["architectures", "malformed_architectures", "dictionaries"]


def architectures(
    *,
    ops: Sequence[str] = OPS,
    merges: Sequence[str] = MERGES,
    inputs: Sequence[str] = INPUTS,
    max_nodes: int = 4,
    max_size: int = 6,
    max_channels: int = 3,
    max_features: int = 10,
    max_atoms: int = 600,
    kernel_sizes: Sequence[int] = (1, 3, 5),
    strides: Sequence[int] = (1, 2),
    skip_probability: float = 0.5,
    node_attributes: bool = True,
    int_names: bool = True,
    validated: bool = False,
) -> st.SearchStrategy[nx.DiGraph]:
    """Valid architecture graphs: dense and conv, every edge kind, both merge forms.

    Draws what :func:`deepframe.testing.random_architecture` draws (see there
    for every parameter): one input (image ``(C, H, W)`` with odd and even
    sizes, or vector), 1 to ``max_nodes`` activation nodes, each with a main
    edge (``conv`` with kernel 1/3/5, stride 1/2, default or explicit padding
    ``0..k``; ``dense``, also from a conv source; ``identity``; ``project``;
    ``shortcut``) and skip edges of every kind whose shapes fit, edge-centric
    or node-centric (``merge="input"``) nodes, optional ``bias`` and
    ``batchnorm``, string and integer node names. The defaults keep ``D``
    below ``max_atoms`` columns so dense checks stay cheap.

    Parameters
    ----------
    validated : bool
        ``False`` (default): plain, *unvalidated* ``networkx.DiGraph`` objects
        as a user would write them, to pass to :func:`deepframe.validate` or
        :func:`deepframe.dictionary`. ``True``: already validated (annotated
        with ``shape``, ``in_shape``/``out_shape`` and ``input_shape``).

    Returns
    -------
    hypothesis.strategies.SearchStrategy of networkx.DiGraph
    """
    kwargs = dict(
        ops=ops,
        merges=merges,
        inputs=inputs,
        max_nodes=max_nodes,
        max_size=max_size,
        max_channels=max_channels,
        max_features=max_features,
        max_atoms=max_atoms,
        kernel_sizes=kernel_sizes,
        strides=strides,
        skip_probability=skip_probability,
        node_attributes=node_attributes,
        int_names=int_names,
    )
    _Config(**kwargs)  # reject bad arguments now, not inside a test

    def draw(rng) -> nx.DiGraph:
        g = random_architecture(rng, **kwargs)
        if validated:
            from ..graph import validate

            g = validate(g)
        return g

    return st.randoms(use_true_random=False).map(draw)


def malformed_architectures(kinds: Sequence[str] | None = None) -> st.SearchStrategy[tuple]:
    """Broken graphs with the fragment their error message must contain.

    Draws ``(graph, fragment)`` pairs from
    :func:`deepframe.testing.random_malformed`: each graph must make
    :func:`deepframe.validate` (and :func:`deepframe.dictionary`) raise
    :class:`deepframe.ArchitectureError` whose message contains ``fragment`` --
    the culprit's name (``"'n3'"``, ``"'a1' -> 'b2'"``) or, for graphs with no
    single culprit, the problem (``"empty"``, ``"no input node"``).

    Parameters
    ----------
    kinds : sequence of str, optional
        Restrict to these corruptions (names in
        :data:`deepframe.testing.MALFORMED_KINDS`); default all of them.
    """
    kinds = tuple(MALFORMED_KINDS if kinds is None else kinds)
    unknown = set(kinds) - set(MALFORMED_KINDS)
    if not kinds or unknown:
        raise ValueError(
            f"unknown malformed kinds {sorted(unknown)}; expected a non-empty "
            f"subset of {MALFORMED_KINDS}"
        )
    return st.tuples(st.sampled_from(kinds), st.randoms(use_true_random=False)).map(
        lambda pair: random_malformed(pair[1], pair[0])
    )


def dictionaries(*, seed: st.SearchStrategy[int] | None = None, **kwargs):
    """Global dictionaries of drawn architectures with seeded He-style random weights.

    ``kwargs`` go to :func:`architectures`; ``seed`` draws the weight seed
    (default ``integers(0, 2**16)``). The dictionaries are float64 on the CPU.
    """
    from ..dictionary import dictionary

    seeds = st.integers(0, 2**16) if seed is None else seed
    return st.builds(lambda g, s: dictionary(g, seed=s), architectures(**kwargs), seeds)
