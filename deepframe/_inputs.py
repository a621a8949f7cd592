"""The one rule for images that enter a model or an attack.

:class:`~deepframe.pursuit.PursuitNet` (``forward``, ``encode``,
``gradient``) and the attacks (:func:`~deepframe.fgsm`, :func:`~deepframe.pgd`,
:func:`deepframe.attacks.evaluate`) take images as a floating-point
``torch.Tensor`` with values in ``[0, 1]`` (docs/robustness.md, "Inputs"):

* integer and bool tensors are refused (8-bit images ``0..255`` would give
  logits of images 255 times too bright): the message says to scale them;
* complex tensors and anything that is not a tensor are refused;
* a model casts a floating tensor of another dtype to its own (``float64``
  images into a ``float32`` net, ``float16`` into ``float64``): the cast is
  differentiable, so attacks through it see the same gradient;
* where values are read anyway (the attacks and :func:`~deepframe.attacks.evaluate`,
  which check the range ``[0, 1]`` they clip to), NaN and infinite values are
  refused with their count. A model's own forward pass checks dtype and shape
  only, which costs nothing: a value check would read a flag back from the
  device at every call, a host synchronisation the solvers are built never to
  make (tests/test_pursuit.py::test_no_host_sync_in_training_and_inference_steps);
  non-finite images give non-finite logits there, as in any PyTorch model.
"""

from __future__ import annotations

import torch

__all__ = ["check_images"]


def check_images(
    x, *, where: str, dtype: torch.dtype | None = None, values: bool = True
) -> torch.Tensor:
    """``x`` checked by the input rule (above); cast to ``dtype`` if given.

    Parameters
    ----------
    x : torch.Tensor
        A batch of images (or vectors) with values in ``[0, 1]``.
    where : str
        The caller, for messages (``"PursuitNet"``, ``"fgsm"``, ...).
    dtype : torch.dtype, optional
        The model's dtype: a floating ``x`` of another dtype is cast to it.
    values : bool
        Also refuse NaN and infinite values (reads one flag from the device).

    Raises
    ------
    TypeError
        ``x`` is not a tensor.
    ValueError
        ``x`` is not floating point, or (``values``) holds NaN or infinite values.
    """
    if not isinstance(x, torch.Tensor):
        hint = " (torch.as_tensor converts a numpy array)" if hasattr(x, "__array__") else ""
        raise TypeError(f"{where}: images must be a torch.Tensor, got {type(x).__name__}{hint}")
    if not x.is_floating_point():
        if x.is_complex():
            raise ValueError(f"{where}: images must be real floating point, got {x.dtype}")
        raise ValueError(
            f"{where}: images must be floating point with values in [0, 1], got {x.dtype}: "
            "scale them first (8-bit images: x.float() / 255)"
        )
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    if values:
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            raise ValueError(
                f"{where}: {int(bad.sum())} of {x.numel()} image values are NaN or infinite"
            )
    return x
