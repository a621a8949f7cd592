"""This process of a (possibly distributed) training run.

Under ``torchrun`` (environment variable ``WORLD_SIZE > 1``)
:func:`process_group` initialises the process group (nccl for CUDA devices,
gloo otherwise) unless it already is, and destroys it after the run;
:func:`wrap` puts the model in
:class:`~torch.nn.parallel.DistributedDataParallel`, and each rank reads its
shard of every global batch (``batch_size`` is the *global* batch size and
must be divisible by the number of processes, :func:`check_batch_size`).
Metrics are summed over ranks (:func:`all_reduce`); only rank 0 writes the
log and the checkpoint. On one process every function here is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset

from .._device import check_device

__all__ = [
    "Process",
    "all_reduce",
    "check_batch_size",
    "distributed_setup",
    "process_group",
    "shard",
    "wrap",
]


@dataclass(frozen=True)
class Process:
    """This process of a (possibly distributed) run: its rank, the world size, its device."""

    rank: int
    world_size: int
    device: torch.device


def distributed_setup(device: torch.device | str | None) -> tuple[Process, bool]:
    """This process, and whether the process group was created here (to destroy it).

    ``device`` None means ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.

    Raises
    ------
    ValueError
        ``device`` does not exist here.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if env_world > 1 else torch.cuda.current_device())
    created = False
    if dist.is_available() and not dist.is_initialized() and env_world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return Process(dist.get_rank(), dist.get_world_size(), device), created
    return Process(0, 1, device), created


@contextmanager
def process_group(device: torch.device | str | None) -> Iterator[Process]:
    """This process for the duration of a run (:func:`distributed_setup`).

    A process group created here is destroyed on leaving, also on an error.
    """
    process, created = distributed_setup(device)
    try:
        yield process
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def check_batch_size(batch_size: int, process: Process) -> None:
    """Refuse a global ``batch_size`` that the processes cannot share evenly.

    Raises
    ------
    ValueError
        ``batch_size`` is not a multiple of the number of processes.
    """
    if batch_size < process.world_size or batch_size % process.world_size:
        raise ValueError(
            f"batch_size={batch_size} (global) must be a multiple of the "
            f"{process.world_size} processes"
        )


def wrap(model: nn.Module, process: Process) -> nn.Module:
    """What the optimizer steps through: ``model`` in DDP when distributed, else itself."""
    if process.world_size == 1:
        return model
    device = process.device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def all_reduce(values: list[float], process: Process) -> list[float]:
    """``values`` summed over the processes (returned as they are on a single process)."""
    if process.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=process.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def shard(dataset: Dataset, process: Process) -> Dataset:
    """Every ``world_size``-th sample from ``rank``: disjoint shards, no padding."""
    if process.world_size == 1:
        return dataset
    return Subset(dataset, range(process.rank, len(dataset), process.world_size))
