"""What the commands share while they run: status lines, the device, the architecture.

Everything here imports PyTorch or deepframe's torch modules only inside the
function that needs them.
"""

from __future__ import annotations

import sys

from .errors import CommandError


def _say(args, text: str) -> None:
    """A status line on stderr (stdout stays for results, e.g. --json)."""
    print(f"deepframe {args.command}: {text}", file=sys.stderr, flush=True)


def _number(value) -> str:
    """A number of a result line: floats to 6 significant digits, ``None`` as ``-``."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _device(args):
    """The checked torch device of ``--device`` (default: cuda if present, else cpu)."""
    from .._device import check_device

    try:
        return check_device(args.device)
    except ValueError as exc:
        raise CommandError(f"--device: {exc}") from None


def _graph(spec: str, input_shape: tuple[int, ...] | None = None):
    """The validated graph of an ``ARCH`` argument, with ``--input-shape`` applied."""
    from ..graph import from_spec, input_node, validate

    g = from_spec(spec)
    if input_shape is not None:
        g.nodes[input_node(g)]["shape"] = tuple(input_shape)
        g = validate(g)
    return g


def _torch_model(args):
    """``--from-torch module:factory --weights FILE --input-shape C,H,W``: the user's
    trained PyTorch model as ``(graph, weights)`` (see :mod:`deepframe.interop`)."""
    from ..interop import from_torch_args

    return from_torch_args(args.arch, args.from_torch, args.weights, args.input_shape)
