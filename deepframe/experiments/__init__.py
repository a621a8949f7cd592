"""End-to-end reproduction of the seed paper's experiments (Figs. 5-10) and its claims.

:func:`reproduce` trains every model a profile needs (resumable, shardable,
several at once), attacks each with FGSM and PGD, measures its pursuit trace
and geometry, runs dataless model selection, and writes ``results.json``,
the figures and a ``report.md`` with a verdict per claim of the paper.
:func:`merge` joins sharded runs.

=========================  =================================================
module                     what
=========================  =================================================
:mod:`.profiles`           :class:`Profile`, :data:`PROFILES`, the models, their graphs
:mod:`.datasets`           the fixed, class-stratified data subsets
:mod:`.runner`             train and attack one model, resumable
:mod:`.measure`            trace and geometry of a trained model, model selection
:mod:`.pipeline`           :func:`reproduce`, :func:`merge`, :func:`collect`
:mod:`.stats`              intervals of accuracies and rank correlations
:mod:`.claims`             the claims table, computed from the results
:mod:`.figures`            Figs. 5-10, model selection, geometry vs robustness
:mod:`.report`             ``report.md``
=========================  =================================================
"""

from .claims import claims_table
from .pipeline import collect, merge, parse_shard, reproduce
from .profiles import FAMILIES, PROFILES, ModelSpec, Profile, model_specs, select_shard

__all__ = [
    "FAMILIES",
    "PROFILES",
    "ModelSpec",
    "Profile",
    "claims_table",
    "collect",
    "merge",
    "model_specs",
    "parse_shard",
    "reproduce",
    "select_shard",
]
