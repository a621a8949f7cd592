"""Datasets: scikit-learn digits, a synthetic multi-layer sparse model, CIFAR-10.

Every dataset yields images in [0, 1] of shape ``(C, H, W)`` and integer labels.
Normalisation (subtracting a mean, dividing by a standard deviation) is *not*
applied here: it belongs inside the model, so that attacks measure ``eps`` in
pixel units (docs/robustness.md). The constants a model builder needs are in
:data:`DATASETS`.

Nothing here downloads anything. Every random choice (splits, synthetic codes,
augmentation, shuffling) is a function of an explicit seed.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

__all__ = [
    "CIFAR10",
    "DATASETS",
    "DatasetInfo",
    "SyntheticData",
    "cifar10",
    "derive_seed",
    "digits",
    "load_dataset",
    "make_loader",
    "synthetic",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model builder needs to know about a dataset.

    Attributes
    ----------
    name : str
        Dataset name as accepted by :func:`load_dataset`.
    input_shape : tuple of int
        Shape ``(C, H, W)`` of one image.
    num_classes : int
        Number of labels.
    mean, std : tuple of float
        Per-channel mean and standard deviation of the pixels in [0, 1], for
        the normalisation layer inside the model.
    eps : str
        The attack radius in pixel units that suits the data set, the
        default of ``deepframe train --fgsm-eps`` and the largest default of
        ``deepframe attack --eps`` (docs/robustness.md, "Units of eps").
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: str = "8/255"

    def compile_options(self) -> dict:
        """The options of :func:`deepframe.compile` that the data set decides.

        ``{"num_classes": ..., "mean": [...], "std": [...]}``: the width of the
        classifier head and the normalisation ``(x - mean) / std`` inside the
        model. ``deepframe train`` and the reproduction both build their
        models (and :func:`deepframe.checkpoints.model_metadata`) from it.
        """
        return {
            "num_classes": self.num_classes,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }


#: Per-dataset constants. Digits: all 1797 images scaled to [0, 1]. CIFAR-10:
#: the 50,000 training images of the JPEG re-encoded copy that
#: ``shared/tools/cifar10_batches.py`` writes (the original release gives
#: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)). Synthetic: the
#: default parameters of :func:`synthetic` with ``seed=0``, all 2000 images.
#: eps: CIFAR-10 the seed paper's 8/255; digits 0.1, the value the quick
#: reproduction chose by a check on its models (deepframe.experiments); synthetic
#: 0.04, digits' 0.1 scaled by the ratio of the pixel stds (0.147 / 0.376), not
#: checked by an experiment.
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo("digits", (1, 8, 8), 10, (0.3053,), (0.3760,), eps="0.1"),
    "synthetic": DatasetInfo("synthetic", (1, 8, 8), 10, (0.1399,), (0.1467,), eps="0.04"),
    "cifar10": DatasetInfo(
        "cifar10",
        (3, 32, 32),
        10,
        (0.4913, 0.4821, 0.4465),
        (0.2452, 0.2428, 0.2606),
        eps="8/255",
    ),
}


def derive_seed(*keys: int) -> int:
    """Mix integers (a seed, an epoch, a rank, ...) into one seed in [0, 2**62).

    Uses :class:`numpy.random.SeedSequence`, so ``(0, 1)`` and ``(1, 0)`` give
    unrelated streams (unlike ``seed + epoch``).
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])


def _stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded stratified split: ``round(val_fraction * n_c)`` per class c."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(members)))
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def digits(
    seed: int = 0, val_fraction: float = 0.2, *, dtype: torch.dtype = torch.float32
) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's handwritten digits as ``(train, val)`` datasets.

    The 1797 images of :func:`sklearn.datasets.load_digits` (integers 0..16)
    are divided by 16, giving ``x`` of shape ``(N, 1, 8, 8)`` in [0, 1], and
    split stratified by class: in every class ``round(val_fraction * n_c)``
    images, drawn with ``numpy.random.default_rng(seed)``, go to validation.

    Parameters
    ----------
    seed : int
        Seed of the split.
    val_fraction : float
        Share of each class held out, in [0, 1).
    dtype : torch.dtype
        Floating dtype of the images.

    Returns
    -------
    train, val : torch.utils.data.TensorDataset
        Each holds ``(x, y)`` with ``y`` of dtype int64.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    x = torch.from_numpy(images).to(dtype).unsqueeze(1)
    y = torch.from_numpy(labels)
    return (
        TensorDataset(x[train_idx], y[train_idx]),
        TensorDataset(x[val_idx], y[val_idx]),
    )


@dataclass
class SyntheticData:
    """Samples of the multi-layer sparse model of :func:`synthetic`.

    Attributes
    ----------
    train, val : TensorDataset
        ``(x, y)``: images ``(N, *input_shape)`` in [0, 1] and int64 labels.
    dictionaries : tuple of Tensor
        ``(B_1, ..., B_L)``; ``B_j`` has shape ``(d_{j-1}, d_j)`` with
        ``d_0 = prod(input_shape)``, non-negative entries and unit-norm columns.
    train_codes, val_codes : tuple of Tensor
        Ground-truth codes ``(w_1, ..., w_L)`` of each split, ``w_j`` of shape
        ``(N, d_j)``, non-negative and sparse, with ``w_{j-1} = w_j B_j^T`` exactly
        (row-vector form) and the noise-free image ``w_1 B_1^T``.
    scale : float
        The common factor every code was divided by so that noise-free images
        have maximum 1.
    noise_std : float
        Standard deviation of the Gaussian pixel noise (before clipping).
    """

    train: TensorDataset
    val: TensorDataset
    dictionaries: tuple[torch.Tensor, ...]
    train_codes: tuple[torch.Tensor, ...]
    val_codes: tuple[torch.Tensor, ...]
    scale: float
    noise_std: float


def synthetic(
    n_samples: int = 2000,
    *,
    input_shape: Sequence[int] = (1, 8, 8),
    widths: Sequence[int] = (96, 40),
    atom_sparsity: Sequence[int] = (6, 4),
    code_sparsity: int = 3,
    num_classes: int = 10,
    noise_std: float = 0.01,
    val_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SyntheticData:
    r"""Data drawn from a known multi-layer non-negative sparse model.

    The generative model, for ``L = len(widths)`` layers with ``d_j = widths[j-1]``
    atoms and ``d_0 = prod(input_shape)`` pixels (the model behind Eq. 7 and
    Eq. 11 of the seed paper, every layer a non-negative sparse code of the one
    below):

    1. Dictionaries. ``B_j`` (``d_{j-1} x d_j``) has in every column
       ``atom_sparsity[j-1]`` non-zero entries at uniformly drawn rows, values
       uniform in [0.5, 1], columns scaled to unit l2 norm. All entries are
       non-negative.
    2. Labels. Balanced: ``y_i = i mod num_classes``, then shuffled.
    3. Deepest code. Atom ``a`` of ``w_L`` belongs to class ``a mod num_classes``.
       For label ``c``, one atom of class ``c`` gets the value 1 and
       ``code_sparsity - 1`` further distinct atoms get values uniform in
       [0.2, 0.6]. Hence the label is a function of the deepest code,
       ``y = argmax(w_L) mod num_classes``.
    4. Lower codes, exactly: ``w_{j-1} = B_j w_j`` for ``j = L, ..., 2``. Being
       non-negative combinations of sparse non-negative atoms, all codes are
       non-negative and sparse (``||w_{j-1}||_0 <= atom_sparsity[j-1] ||w_j||_0``).
    5. Images. All codes are divided by one scalar ``scale`` (the largest
       pixel of ``B_1 w_1`` over the data set) so that the noise-free image
       ``B_1 w_1`` lies in [0, 1] with maximum 1; then
       ``x = clip(B_1 w_1 + noise_std * n, 0, 1)`` with ``n ~ N(0, I)``,
       reshaped to ``input_shape``.

    The train/val split is stratified and seeded as in :func:`digits`. All
    draws use ``numpy.random.default_rng(seed)`` in float64; tensors are cast
    to ``dtype`` at the end.

    Parameters
    ----------
    n_samples : int
        Number of images (train and val together).
    input_shape : sequence of int
        Image shape, e.g. ``(1, 8, 8)``.
    widths : sequence of int
        Atoms per layer ``(d_1, ..., d_L)``; ``d_L >= num_classes``.
    atom_sparsity : sequence of int
        Non-zeros per column of each ``B_j`` (one per layer).
    code_sparsity : int
        Non-zeros of the deepest code ``w_L``.
    num_classes : int
        Number of labels.
    noise_std : float
        Pixel noise standard deviation (0 for noise-free images).
    val_fraction : float
        Share of each class held out.
    seed : int
        Seed of every draw.
    dtype : torch.dtype
        Floating dtype of the returned tensors.

    Returns
    -------
    SyntheticData
        Datasets, dictionaries and ground-truth codes.
    """
    input_shape = tuple(int(s) for s in input_shape)
    widths = tuple(int(w) for w in widths)
    atom_sparsity = tuple(int(s) for s in atom_sparsity)
    if not widths:
        raise ValueError("widths must name at least one layer")
    if len(atom_sparsity) != len(widths):
        raise ValueError(
            f"atom_sparsity needs one entry per layer: got {len(atom_sparsity)} "
            f"for {len(widths)} layers"
        )
    dims = (int(np.prod(input_shape)), *widths)
    for j, s in enumerate(atom_sparsity, start=1):
        if not 1 <= s <= dims[j - 1]:
            raise ValueError(f"atom_sparsity[{j - 1}]={s} must be in [1, {dims[j - 1]}]")
    if widths[-1] < num_classes:
        raise ValueError(f"the deepest layer needs >= {num_classes} atoms, got {widths[-1]}")
    if not 1 <= code_sparsity <= widths[-1]:
        raise ValueError(f"code_sparsity={code_sparsity} must be in [1, {widths[-1]}]")
    if n_samples < num_classes:
        raise ValueError(f"n_samples={n_samples} must be at least num_classes={num_classes}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")

    rng = np.random.default_rng(seed)
    dictionaries = []
    for j in range(1, len(dims)):
        rows, cols = dims[j - 1], dims[j]
        B = np.zeros((rows, cols))
        for a in range(cols):
            support = rng.choice(rows, size=atom_sparsity[j - 1], replace=False)
            B[support, a] = rng.uniform(0.5, 1.0, size=len(support))
        dictionaries.append(B / np.linalg.norm(B, axis=0, keepdims=True))

    labels = rng.permutation(np.arange(n_samples) % num_classes)
    d_top = widths[-1]
    top = np.zeros((n_samples, d_top))
    atom_class = np.arange(d_top) % num_classes
    for i, c in enumerate(labels):
        dominant = rng.choice(np.flatnonzero(atom_class == c))
        others = rng.choice(np.delete(np.arange(d_top), dominant), code_sparsity - 1, replace=False)
        top[i, dominant] = 1.0
        top[i, others] = rng.uniform(0.2, 0.6, size=len(others))

    codes = [top]
    for B in reversed(dictionaries[1:]):
        codes.insert(0, codes[0] @ B.T)
    clean = codes[0] @ dictionaries[0].T
    scale = float(clean.max())
    codes = [w / scale for w in codes]
    clean = clean / scale
    x = np.clip(clean + noise_std * rng.standard_normal(clean.shape), 0.0, 1.0)

    train_idx, val_idx = _stratified_split(labels, val_fraction, seed)
    x_t = torch.from_numpy(x).to(dtype).reshape(n_samples, *input_shape)
    y_t = torch.from_numpy(labels.astype(np.int64))
    codes_t = [torch.from_numpy(w).to(dtype) for w in codes]
    return SyntheticData(
        train=TensorDataset(x_t[train_idx], y_t[train_idx]),
        val=TensorDataset(x_t[val_idx], y_t[val_idx]),
        dictionaries=tuple(torch.from_numpy(B).to(dtype) for B in dictionaries),
        train_codes=tuple(w[train_idx] for w in codes_t),
        val_codes=tuple(w[val_idx] for w in codes_t),
        scale=scale,
        noise_std=float(noise_std),
    )


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILES = ("test_batch",)


def _numpy_global(module: str, name: str):
    """The numpy object a CIFAR-10 pickle may name (numpy 1 or 2 module layout)."""
    for candidate in (module.replace("numpy.core", "numpy._core"), module):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} is not available in this numpy")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs.

    A batch is a dict of str/bytes keys, lists of ints and strings, and one
    uint8 numpy array. Pickled numpy arrays name ``numpy.ndarray``,
    ``numpy.dtype`` and ``_reconstruct`` (protocol <= 4) or ``_frombuffer``
    (protocol 5), under ``numpy.core`` (numpy 1) or ``numpy._core`` (numpy 2);
    protocol-2 pickles written by Python 3 encode bytes with
    ``_codecs.encode``. Anything else (``os.system``, ...) is refused, so
    loading a file never runs code.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed in a CIFAR-10 batch"
            )
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        return _numpy_global(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one ``cifar-10-batches-py`` file: uint8 images ``(N, 3, 32, 32)`` and labels."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as err:  # truncated, garbage or unsafe: all mean "not a batch"
        raise ValueError(f"{path} is not a valid CIFAR-10 batch: {err}") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a valid CIFAR-10 batch: holds {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{path} is not a valid CIFAR-10 batch: keys {sorted(map(str, batch))} "
            "lack 'data' or 'labels'"
        )
    data = batch["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise ValueError(f"{path}: 'data' must be a 2-d uint8 array (N x 3072)")
    if data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    try:
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: 'labels' is not a list of integers") from err
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_folder(data_dir: str | Path) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {root}")
    nested = root / "cifar-10-batches-py"
    if nested.is_dir():
        return nested
    if any((root / name).exists() for name in _CIFAR_TRAIN_FILES + _CIFAR_TEST_FILES):
        return root
    raise FileNotFoundError(
        f"no CIFAR-10 data in {root}: expected {nested} (or the batch files "
        "data_batch_1..5 and test_batch directly in the folder)"
    )


class CIFAR10(Dataset):
    """CIFAR-10 images in [0, 1] with optional seeded crop/flip augmentation.

    Item ``i`` is ``(x, y)``: ``x`` a float32 tensor ``(3, 32, 32)`` (channels R,
    G, B), ``y`` an int64 scalar. With ``augment=True`` the image is zero-padded
    by 4 pixels on every side, a 32 x 32 window is cropped at a uniformly drawn
    offset and the result is flipped left-right with probability 1/2. The
    draws depend only on ``(seed, epoch, i)`` (see :meth:`set_epoch`), so the
    augmented data are identical across runs, resumes, data-loader workers and
    distributed ranks.

    Parameters
    ----------
    images : Tensor
        uint8 ``(N, 3, 32, 32)``.
    labels : Tensor
        int64 ``(N,)``.
    augment : bool
        Apply the crop/flip augmentation.
    seed : int
        Seed of the augmentation.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool = False, seed: int = 0
    ):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"images must be uint8 (N, 3, 32, 32), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{tuple(labels.shape)} labels for {images.shape[0]} images")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (the training loop calls this)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].to(torch.float32) / 255.0
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            top, left = rng.integers(0, 9, size=2)
            padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
            x = padded[:, top : top + 32, left : left + 32]
            if rng.random() < 0.5:
                x = x.flip(-1)
            x = x.contiguous()
        return x, self.labels[index]


def cifar10(
    data_dir: str | Path, train: bool = True, augment: bool = False, *, seed: int = 0
) -> CIFAR10:
    """CIFAR-10 from a local folder in the standard ``cifar-10-batches-py`` layout.

    ``data_dir`` is either the folder that contains ``cifar-10-batches-py/`` or
    that folder itself. Files are pickled dicts with ``"data"`` (``N x 3072``
    uint8, row-major channel planes R, G, B) and ``"labels"`` (ints 0..9), as the
    original release and ``shared/tools/cifar10_batches.py`` write them. They
    are read with a restricted unpickler that resolves only the numpy names an
    array needs, so a hostile file cannot run code.

    Parameters
    ----------
    data_dir : str or Path
        Folder to read.
    train : bool
        ``data_batch_1`` .. ``data_batch_5`` (50,000 images) if True, else
        ``test_batch`` (10,000).
    augment : bool
        Seeded random crop (padding 4) and horizontal flip, see :class:`CIFAR10`.
    seed : int
        Seed of the augmentation.

    Returns
    -------
    CIFAR10
        The dataset (no normalisation applied).

    Raises
    ------
    FileNotFoundError
        The folder or one of the batch files is missing (the path is named).
    ValueError
        A batch file is truncated, corrupt, unsafe or has the wrong layout.
    """
    folder = _cifar_folder(data_dir)
    names = _CIFAR_TRAIN_FILES if train else _CIFAR_TEST_FILES
    images, labels = zip(*(_read_cifar_batch(folder / name) for name in names), strict=True)
    return CIFAR10(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        augment=augment,
        seed=seed,
    )


# --------------------------------------------------------------------------- loading


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    augment: bool = False,
    val_fraction: float = 0.2,
) -> tuple[Dataset, Dataset]:
    """``(train, val)`` datasets by name, the entry point of the command line.

    Parameters
    ----------
    name : {"digits", "synthetic", "cifar10"}
        Dataset. For CIFAR-10 ``val`` is the official test batch.
    data_dir : str or Path, optional
        Folder of CIFAR-10 (required for ``"cifar10"``).
    seed : int
        Seed of the split (digits, synthetic), of the samples (synthetic) and of
        the augmentation (CIFAR-10).
    augment : bool
        Crop/flip augmentation of the CIFAR-10 training set.
    val_fraction : float
        Held-out share for digits and synthetic.
    """
    if name == "digits":
        return digits(seed=seed, val_fraction=val_fraction)
    if name == "synthetic":
        data = synthetic(seed=seed, val_fraction=val_fraction)
        return data.train, data.val
    if name == "cifar10":
        if data_dir is None:
            raise ValueError("the cifar10 dataset needs data_dir (a cifar-10-batches-py folder)")
        return cifar10(data_dir, train=True, augment=augment, seed=seed), cifar10(
            data_dir, train=False
        )
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` whose order depends only on ``(seed, epoch)``.

    Sampling goes through :class:`~torch.utils.data.DistributedSampler` with
    seed ``derive_seed(seed, epoch)`` (also for a single process,
    ``world_size=1``): the permutation of the whole dataset is the same on
    every rank, and rank ``r`` takes every ``world_size``-th index starting
    at ``r``. So the ``k``-th batches of size ``b`` of all ranks together are
    exactly the ``k``-th batch of size ``world_size * b`` of a single process
    (when the dataset size is a multiple of the global batch size;
    otherwise the sampler pads by repeating indices, as DistributedSampler
    does).

    Parameters
    ----------
    dataset : Dataset
        Map-style dataset.
    batch_size : int
        Batch size *per process*.
    shuffle : bool
        Shuffle with the seeded permutation (else sequential order).
    seed, epoch : int
        Determine the permutation (and the worker seeds).
    rank, world_size : int
        This process's shard.
    drop_last : bool
        Drop the last incomplete batch.
    num_workers, pin_memory
        Passed to the DataLoader.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=derive_seed(seed, epoch),
        drop_last=False,
    )
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, rank, 1))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=generator,
    )
