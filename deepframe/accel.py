"""Accelerator helpers for compiled solvers: TF32 and CUDA-graph inference.

The solver's own GPU options are arguments of :func:`deepframe.compile`
(``channels_last``, ``torch_compile``, ``checkpoint_sweeps``,
``schedule="jacobi"``); what lives here acts around a model rather than inside
it:

* :func:`tf32` -- a context manager that lets float32 matrix products and
  convolutions on CUDA use TensorFloat-32 (or forbids it), restoring the
  previous setting on exit;
* :class:`CudaGraphInference` -- captures one inference call of a model on a
  fixed input shape as a CUDA graph and replays it (no Python, no kernel
  launch overhead per operator). CUDA only.

``docs/performance.md`` says which of these measured faster, where.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["tf32", "CudaGraphInference"]


def _precision_switches() -> list[tuple[object, str, object, object]]:
    """``(namespace, attribute, value for TF32 on, value for TF32 off)`` of this torch."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(getattr(conv, "conv", None), "fp32_precision"):
        return [
            (matmul, "fp32_precision", "tf32", "ieee"),
            (conv.conv, "fp32_precision", "tf32", "ieee"),
        ]
    return [(matmul, "allow_tf32", True, False), (conv, "allow_tf32", True, False)]


@contextmanager
def tf32(enabled: bool = True) -> Iterator[None]:
    """Allow (``enabled=True``) or forbid TensorFloat-32 in float32 CUDA matmuls and
    convolutions inside the block; the previous settings come back on exit.

    TF32 rounds the inputs of a float32 product to a 10-bit mantissa (about
    ``1e-3`` relative error per product) and runs it on tensor cores. It has no
    effect on CPU tensors or on float64. The backward pass reads the setting
    when it runs, so put the whole training step (forward and backward) inside
    the block.

    Examples
    --------
    >>> with tf32(True):  # doctest: +SKIP
    ...     loss = F.cross_entropy(net(x), y)
    ...     loss.backward()
    """
    switches = _precision_switches()
    previous = [getattr(space, name) for space, name, _, _ in switches]
    try:
        for space, name, on, off in switches:
            setattr(space, name, on if enabled else off)
        yield
    finally:
        for (space, name, _, _), value in zip(switches, previous):
            setattr(space, name, value)


class CudaGraphInference:
    """Inference of ``model`` on one input shape as a replayed CUDA graph.

    Captures ``model(example)`` once (after a few warm-up calls on a side
    stream, as CUDA graph capture requires) and answers every later call by
    copying the input into the captured buffer and replaying the graph: the
    whole unrolled pursuit becomes one launch. Valid while the model's
    parameters keep their storage (an optimiser step or ``load_state_dict``
    writes into the same storage and is seen; replacing a parameter tensor is
    not).

    Parameters
    ----------
    model : callable
        A module in eval mode on a CUDA device, e.g. a compiled
        :class:`deepframe.PursuitNet`. Its forward pass must not synchronise
        with the host (deepframe's solvers do not: tested).
    example : torch.Tensor
        An input on the model's device with the shape (batch included) every
        call will have.
    warmup : int
        Eager calls before capture (cuDNN picks its algorithms there).

    Raises
    ------
    ValueError
        When CUDA is not available, ``example`` is not a CUDA tensor or the
        model is in training mode.
    """

    def __init__(self, model: Callable, example: torch.Tensor, warmup: int = 3):
        if not torch.cuda.is_available() or example.device.type != "cuda":
            raise ValueError(
                "CudaGraphInference needs a CUDA device and a CUDA example input "
                f"(got a {example.device.type} tensor; CUDA available: "
                f"{torch.cuda.is_available()}); call the model directly on CPU"
            )
        if getattr(model, "training", False):
            raise ValueError(
                "CudaGraphInference captures inference: put the model in eval mode first "
                "(training mode updates batch-norm and power-iteration state)"
            )
        self.model = model
        self.static_input = example.detach().clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                model(self.static_input)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = model(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` by replay; returns a fresh tensor (the next replay overwrites
        the captured output)."""
        if x.shape != self.static_input.shape:
            raise ValueError(
                f"CudaGraphInference was captured for inputs of shape "
                f"{tuple(self.static_input.shape)}, got {tuple(x.shape)}: capture another "
                "one for this shape"
            )
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone()
