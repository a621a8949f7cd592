"""Which torch device a name means here, checked before any work."""

from __future__ import annotations

import torch

__all__ = ["check_device", "default_device"]


def default_device() -> torch.device:
    """``cuda`` when a CUDA GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(device: torch.device | str | None) -> torch.device:
    """The torch device ``device`` names, after checking it exists on this machine.

    ``None`` means :func:`default_device`. ``"cpu"`` always exists; ``"cuda"``,
    ``"cuda:N"``, ``"mps"`` and other accelerator types exist when torch was
    built with them and the device (and index) is visible.

    Raises
    ------
    ValueError
        One line naming the device: not a device name, not available here, or
        an index beyond the devices present.
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device {str(device)!r} is not a device name: use cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    if dev.type == "mps":
        backend = getattr(torch.backends, "mps", None)
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        why = ""
        if dev.type == "cuda":
            why = (
                f" (torch {torch.__version__} is built without CUDA)"
                if torch.version.cuda is None
                else " (no CUDA GPU is visible)"
            )
        raise ValueError(f"device {str(device)!r} is not available on this machine{why}: use cpu")
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        n = count()
        raise ValueError(
            f"device {str(device)!r} does not exist: this machine has {n} {dev.type} "
            f"device{'s' if n != 1 else ''} ({dev.type}:0 to {dev.type}:{n - 1})"
        )
    return dev
