"""Import trained PyTorch models as architecture graphs with their weights.

See docs/bring-your-own-model.md for the reading rules and the supported subset.

:func:`from_torch` traces a model with ``torch.fx`` (symbolic tracing, then
shape propagation on an example input) and reads it as the edge-centric graph
of docs/concepts.md:

* every ReLU output is an activation node ``w_j = ReLU(a_j - lambda_j)``;
* every conv / linear map between ReLUs is an edge ``k -> j`` whose weight is
  the module's weight, its bias goes to the node, ``lambda_j = -bias_j``
  (a trained network's positive biases give ``lambda_j < 0``);
* residual additions are merges (one more incoming edge), a concatenation
  along channels feeding a conv or linear is one edge per part, an option-A
  shortcut (strided slicing plus channel zero padding) is a ``shortcut``
  edge;
* batch norm in eval mode is the affine map
  ``BN(a) = s (a - mean) + beta`` with ``s = gamma / sqrt(var + eps)``,
  folded into the edges that feed it (``A_jk <- diag(s) A_jk``: the synthesis
  blocks ``B_kj`` of column block j scaled by ``s``, a column scaling of D)
  and into the node's lambda (``lambda_j = s mean - beta - s c`` for the sum of
  the biases ``c`` before it), or, with ``batchnorm="node"``, kept as the
  node's own batch norm;
* global average pooling followed by the last ``Linear`` is the classifier
  head, which is not part of D.

Anything else is an :class:`~deepframe.graph.ArchitectureError` that names
the module and the op: nothing is approximated. The import is checked: the
compiled feed-forward solver must reproduce the model's logits on the
example input (float64).

The weights come back as one flat mapping (see
:func:`deepframe.dictionary.split_weights`): ``"k->j"`` edge weights,
``"lambda:j"``, batch-norm statistics of ``batchnorm=True`` nodes, and
``"head.weight"`` / ``"head.bias"``, all float64.

The package, in the order data flows through it:

=====================  ==========================================================
:mod:`.terms`          symbolic values, batch-norm folding, sums of maps
:mod:`.importer`       one import run: nodes, edges and weights; the head; the check
:mod:`.readers`        one reader per torch module / tensor method / function
:mod:`.weights`        weights files (``torch.load(weights_only=True)``)
:mod:`.trace`          :func:`from_torch`: fx tracing, shape propagation, dispatch
:mod:`.factories`      ``module:factory`` models and the command line's options
=====================  ==========================================================

Edge kinds are not named here: how a map read from torch becomes an edge
(its attributes and weight), which torch convolution arguments a conv can
state, and what subsampling does to a map, each kind of :mod:`deepframe.ops`
says (:meth:`~deepframe.ops.Operator.torch_edge`,
:meth:`~deepframe.ops.Conv.read_torch`,
:meth:`~deepframe.ops.Operator.torch_subsampled`).
"""

from __future__ import annotations

from .factories import from_torch_args, from_torch_spec, load_torch_model, parse_input_shape
from .trace import from_torch
from .weights import load_state_dict

__all__ = [
    "from_torch",
    "load_state_dict",
    "load_torch_model",
    "from_torch_spec",
    "parse_input_shape",
    "from_torch_args",
]
