"""Linear operators, one per edge kind of an architecture graph.

Every operator ``A`` maps a *source* activation (shape ``in_shape``) to a
*destination* pre-activation (shape ``out_shape``):

* ``A.forward(x)`` is the analysis map (what the feed-forward network computes,
  e.g. ``conv2d``);
* ``A.adjoint(y)`` is its exact adjoint ``A^T``, the synthesis map ``B = A^T``
  of the seed paper (``conv_transpose2d`` with the output padding that restores
  the source's exact shape);
* ``A.sqnorm()`` is ``||A||_2^2``, the squared spectral norm, by power
  iteration on ``A^T A`` at the actual spatial size (seeded, deterministic; an
  estimate from below), or exactly from the dense matrix;
* ``A.sqnorm_bound()`` is a provable *upper* bound on ``||A||_2^2`` (exact for
  dense, identity and shortcut operators, from the periodic extension for
  convolutions, see :func:`conv_sqnorm_bound`): what the pursuit solvers use.

The package is laid out as PyLops lays out its operators:

=====================  ==========================================================
:mod:`.base`           :class:`Operator`, :class:`OpSpec`, :class:`TapStructure`,
                       the registry (:data:`EDGE_KINDS`) and shared shape rules
:mod:`.linalg`         :func:`power_iteration`, :func:`dot_test`
:mod:`.conv`           :class:`Conv`, :class:`Project`, :func:`conv_sqnorm_bound`,
                       :func:`block_diagonal`, :func:`dilated_kernel`
:mod:`.dense`          :class:`Dense`
:mod:`.identity`       :class:`Identity`, :class:`Shortcut`
:mod:`.scaled`         :class:`Scaled` (batch norm's column scale; not an edge kind)
=====================  ==========================================================

Edge kinds live here and only here: every kind of edge an architecture graph
may name (``op="conv"``, ...) is one :class:`Operator` subclass registered in
:data:`EDGE_KINDS` below. The class states, besides its two maps and its norm,
the kind's shape rule (:meth:`Operator.shape_rule`), its weight shape
(:meth:`Operator.weight_shape`), how it is described from graph attributes and
built from that description (:meth:`Operator.spec`, :class:`OpSpec`), the
memory of its norm bound, the per-axis tap structure the structured Gram needs
(:meth:`Operator.taps`, :class:`TapStructure`), how the test generators draw it
(:meth:`Operator.draw`, :meth:`Operator.between`) and how a map read from a
PyTorch model is written as an edge of the kind (:meth:`Operator.torch_edge`).
Graph validation, the dictionary, the geometry, the solvers, the importer and
:mod:`deepframe.testing` ask the registry; adding an edge kind is one new module
(its class) and its entry in the registration below.

All maps are batched: ``forward`` takes ``(B, *in_shape)`` and returns
``(B, *out_shape)``; ``adjoint`` the reverse. They work for any floating
dtype and device (that of the weight, or of the input for parameter-free
operators) and are differentiable with respect to both input and weight.
"""

from __future__ import annotations

from .base import (
    EDGE_KINDS,
    ROUNDING_MARGIN,
    Operator,
    OpSpec,
    TapStructure,
    conv_output_size,
    edge_kind,
    pair,
    register_edge_kind,
)
from .conv import Conv, Project, block_diagonal, conv_sqnorm_bound, dilated_kernel
from .dense import Dense
from .identity import Identity, Shortcut
from .linalg import DotTest, dot_test, power_iteration
from .scaled import Scaled

__all__ = [
    "EDGE_KINDS",
    "register_edge_kind",
    "edge_kind",
    "OpSpec",
    "TapStructure",
    "DotTest",
    "dot_test",
    "Operator",
    "Conv",
    "Project",
    "Dense",
    "Identity",
    "Shortcut",
    "Scaled",
    "conv_output_size",
    "conv_sqnorm_bound",
    "block_diagonal",
    "dilated_kernel",
    "pair",
    "power_iteration",
    "ROUNDING_MARGIN",
    "DEFAULT_EDGE_KIND",
]

#: The kind of an edge that names no ``op`` (allowed into a node-centric node,
#: ``merge="input"``): it maps every shape onto itself.
DEFAULT_EDGE_KIND = Identity.kind

# The edge kinds, in the order error messages and the generators list them. A new
# kind is one Operator subclass in its own module (its maps and hooks) and its
# entry here.
for _kind in (Conv, Dense, Identity, Project, Shortcut):
    register_edge_kind(_kind)
del _kind
