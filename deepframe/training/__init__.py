"""The machinery of :func:`deepframe.train.train`, one idea per module.

:mod:`deepframe.train` keeps the public function and its public names (it is
both the module and, as ``deepframe.train``, the function: see the
``_Package`` hook of ``deepframe/__init__.py``), so ``from deepframe.train
import ...`` stays the one way in. What the loop is made of lives here, in
modules that each read whole, and that import nothing from
:mod:`deepframe.train`:

=========================  =================================================
module                     what
=========================  =================================================
:mod:`.config`             the settings, checked up front; the optimizer and
                           schedule tables; the weight-decay groups
:mod:`.resume`             comparing a checkpoint with a run's settings and
                           model, and loading it to continue
:mod:`.distributed`        this process of a ``torchrun`` run: process group,
                           sums over ranks, shards, the DDP wrapper
:mod:`.epoch`              one epoch: seeding its streams, the training pass,
                           validation, the per-epoch record
:mod:`.log`                rank 0's end of an epoch: the JSON-lines log and
                           the checkpoint
=========================  =================================================

Import the public names from :mod:`deepframe.train`, which re-exports them.
"""
