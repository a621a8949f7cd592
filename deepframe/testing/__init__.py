"""Testing support for deepframe and for users' own property tests.

* Generators (no hypothesis needed): :func:`random_architecture`
  (:mod:`.graphs`) draws a valid architecture graph from a
  :class:`random.Random`, :func:`random_malformed` (:mod:`.malformed`) a
  broken one with the fragment its :class:`deepframe.ArchitectureError`
  message must contain.
* Hypothesis strategies (imported on first use, so this package works without
  hypothesis): :func:`architectures`, :func:`malformed_architectures`,
  :func:`dictionaries`.
* Assertions: :func:`assert_dottest`, :func:`assert_matches_dense`,
  :func:`assert_matches_reference`, :func:`assert_shapes_match_torch`,
  :func:`assert_no_host_sync`.
* Slow references: :func:`reference_dictionary` and the per-operator
  matrices (:func:`conv_matrix`, ...), written without deepframe's operators.

See ``docs/testing.md``.
"""

from __future__ import annotations

from .assertions import (
    assert_dottest,
    assert_matches_dense,
    assert_matches_reference,
    assert_no_host_sync,
    assert_shapes_match_torch,
    torch_forward,
)
from .graphs import INPUTS, MERGES, OPS, random_architecture
from .malformed import MALFORMED_KINDS, random_malformed
from .reference import (
    conv_matrix,
    dense_matrix,
    identity_matrix,
    operator_matrix,
    reference_blocks,
    reference_dictionary,
    shortcut_matrix,
)

_STRATEGIES = ("architectures", "malformed_architectures", "dictionaries")

__all__ = [
    "INPUTS",
    "MALFORMED_KINDS",
    "MERGES",
    "OPS",
    "architectures",
    "assert_dottest",
    "assert_matches_dense",
    "assert_matches_reference",
    "assert_no_host_sync",
    "assert_shapes_match_torch",
    "conv_matrix",
    "dense_matrix",
    "dictionaries",
    "identity_matrix",
    "malformed_architectures",
    "operator_matrix",
    "random_architecture",
    "random_malformed",
    "reference_blocks",
    "reference_dictionary",
    "shortcut_matrix",
    "torch_forward",
]


def __getattr__(name: str):
    # the hypothesis strategies import hypothesis: load them only when asked for
    if name in _STRATEGIES:
        from . import strategies

        return getattr(strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_STRATEGIES))
