"""The data of a reproduction: fixed, class-stratified subsets of a data set."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from .profiles import Profile

__all__ = ["load_data", "stratified_indices"]


class _Subset(torch.utils.data.Subset):
    """A Subset that passes ``set_epoch`` on to its dataset (augmentation draws)."""

    def set_epoch(self, epoch: int) -> None:
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)


def _labels(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    return np.asarray(dataset.tensors[1])


def stratified_indices(labels: np.ndarray, count: int | None, seed: int) -> list[int]:
    """``count`` indices with the classes as balanced as the data allow, interleaved.

    Each class is permuted with ``default_rng(seed)``; the result takes the
    classes in turn (first image of every class, then the second, ...), so
    every prefix of it is itself (nearly) stratified.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = [
        int(idx[rank])
        for rank in range(max(map(len, per_class)))
        for idx in per_class
        if rank < len(idx)
    ]
    return order if count is None else order[: min(count, len(order))]


_DATA_CACHE: dict = {}


def load_data(profile: Profile, data_dir: str | Path | None, seed: int):
    """``(train, eval, info)`` of a profile; ``seed`` seeds the training augmentation.

    The training subset and the evaluation subset are fixed by the profile
    (class-stratified, seeds 0 and 1), the same for every model and seed.
    """
    from ..data import DATASETS, cifar10, load_dataset

    key = (profile.dataset, str(data_dir))
    if key not in _DATA_CACHE:
        if profile.dataset == "cifar10":
            if data_dir is None:
                raise ValueError(
                    f"profile {profile.name!r} needs CIFAR-10: pass data_dir (a "
                    "cifar-10-batches-py folder; shared/tools/cifar10_batches.py writes one)"
                )
            train = cifar10(data_dir, train=True, augment=profile.augment)
            held = cifar10(data_dir, train=False)
        else:
            train, held = load_dataset(profile.dataset, seed=0)
        _DATA_CACHE[key] = (train, held)
    train, held = _DATA_CACHE[key]
    if hasattr(train, "seed"):
        train = copy.copy(train)
        train.seed = int(seed)
    train_idx = stratified_indices(_labels(train), profile.train_images, seed=0)
    eval_idx = stratified_indices(_labels(held), profile.eval_images, seed=1)
    return _Subset(train, train_idx), _Subset(held, eval_idx), DATASETS[profile.dataset]
