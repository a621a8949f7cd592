"""Tests of deepframe.data: digits, the synthetic sparse model, CIFAR-10 folders, loaders."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepframe import data

SHARED_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "cifar10_batches.py"


# --------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_stratified_split():
    train, val = data.digits(seed=0, val_fraction=0.2)
    x_train, y_train = train.tensors
    x_val, y_val = val.tensors
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    assert y_train.dtype == torch.int64
    assert len(train) + len(val) == 1797
    assert 0.0 <= float(x_train.min()) and float(x_train.max()) == 1.0
    # stratified: every class keeps round(0.2 n_c) images for validation
    counts = torch.bincount(torch.cat([y_train, y_val]), minlength=10)
    expected = torch.tensor([round(0.2 * int(n)) for n in counts])
    assert torch.equal(torch.bincount(y_val, minlength=10), expected)
    # no image lost or duplicated: the multiset of pixel sums is the full data set's
    from sklearn.datasets import load_digits

    full = np.sort(load_digits().images.reshape(1797, -1).sum(1) / 16)
    ours = np.sort(torch.cat([x_train, x_val]).flatten(1).sum(1).double().numpy())
    np.testing.assert_allclose(ours, full, rtol=1e-6)


def test_digits_is_seeded():
    a_train, a_val = data.digits(seed=3)
    b_train, _ = data.digits(seed=3)
    c_train, _ = data.digits(seed=4)
    assert torch.equal(a_train.tensors[0], b_train.tensors[0])
    assert not torch.equal(a_train.tensors[0], c_train.tensors[0])
    assert len(a_val) == 359


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_digits_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        data.digits(val_fraction=fraction)


def test_dataset_constants_match_the_data():
    train, val = data.digits()
    x = torch.cat([train.tensors[0], val.tensors[0]])
    info = data.DATASETS["digits"]
    assert info.input_shape == tuple(x.shape[1:]) and info.num_classes == 10
    assert abs(float(x.mean()) - info.mean[0]) < 1e-3
    assert abs(float(x.std()) - info.std[0]) < 1e-3
    syn = data.synthetic()
    xs = torch.cat([syn.train.tensors[0], syn.val.tensors[0]])
    info = data.DATASETS["synthetic"]
    assert abs(float(xs.mean()) - info.mean[0]) < 1e-3
    assert abs(float(xs.std()) - info.std[0]) < 1e-3


# --------------------------------------------------------------------------- synthetic


def test_synthetic_model_holds_exactly():
    syn = data.synthetic(n_samples=500, widths=(80, 30), atom_sparsity=(5, 3), seed=1)
    x, y = syn.train.tensors
    assert x.shape == (400, 1, 8, 8) and len(syn.val) == 100
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    B1, B2 = syn.dictionaries
    assert B1.shape == (64, 80) and B2.shape == (80, 30)
    for B, s in ((B1, 5), (B2, 3)):
        assert float(B.min()) >= 0
        torch.testing.assert_close(B.norm(dim=0), torch.ones(B.shape[1]))
        assert torch.equal((B > 0).sum(0), torch.full((B.shape[1],), s))
    w1, w2 = syn.train_codes
    assert float(w1.min()) >= 0 and float(w2.min()) >= 0
    torch.testing.assert_close(w2 @ B2.T, w1)  # w_1 = B_2 w_2
    assert torch.equal((w2 > 0).sum(1), torch.full((400,), 3))  # code_sparsity
    assert int((w1 > 0).sum(1).max()) <= 3 * 3
    assert torch.equal(w2.argmax(1) % 10, y)  # label = class of the dominant atom
    # image = B_1 w_1 + small noise; noise-free version is exact and peaks at 1
    assert float((x.flatten(1) - w1 @ B1.T).abs().max()) < 6 * syn.noise_std
    clean = data.synthetic(
        n_samples=500, widths=(80, 30), atom_sparsity=(5, 3), seed=1, noise_std=0
    )
    xc, _ = clean.train.tensors
    torch.testing.assert_close(xc.flatten(1), clean.train_codes[0] @ clean.dictionaries[0].T)
    all_clean = torch.cat([xc, clean.val.tensors[0]])
    assert abs(float(all_clean.max()) - 1.0) < 1e-6


def test_synthetic_is_seeded_and_balanced():
    a, b, c = data.synthetic(seed=2), data.synthetic(seed=2), data.synthetic(seed=3)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    y = torch.cat([a.train.tensors[1], a.val.tensors[1]])
    assert torch.equal(torch.bincount(y), torch.full((10,), 200))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"widths": (40, 5)}, "deepest layer"),
        ({"atom_sparsity": (3,)}, "one entry per layer"),
        ({"atom_sparsity": (100, 2)}, "atom_sparsity"),
        ({"code_sparsity": 0}, "code_sparsity"),
        ({"noise_std": -1.0}, "noise_std"),
    ],
)
def test_synthetic_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.synthetic(**kwargs)


# --------------------------------------------------------------------------- CIFAR-10 fixtures


def _cifar_images(n: int, offset: int) -> np.ndarray:
    """``n`` images (N x 3072) whose R, G, B planes hold distinct recognisable values."""
    rows = np.empty((n, 3072), dtype=np.uint8)
    pixel = np.arange(1024)
    for i in range(n):
        k = offset + i
        rows[i, :1024] = (pixel + k) % 256  # R plane, row-major
        rows[i, 1024:2048] = (10 * k + 1) % 256  # G
        rows[i, 2048:] = (10 * k + 2) % 256  # B
    return rows


def write_cifar_folder(
    root: Path, per_batch: int = 3, *, protocol: int = 4, bytes_keys: bool = False
) -> Path:
    """A tiny ``cifar-10-batches-py`` folder in the layout of shared/tools/cifar10_batches.py.

    Train image k (k = 0..5*per_batch-1) has label k % 10; test image k has label (k + 3) % 10.
    ``bytes_keys`` imitates files pickled with bytes keys (as read with encoding="bytes").
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def key(name: str):
        return name.encode() if bytes_keys else name

    for b in range(1, 6):
        offset = (b - 1) * per_batch
        batch = {
            key("batch_label"): f"training batch {b} of 5",
            key("labels"): [(offset + i) % 10 for i in range(per_batch)],
            key("data"): _cifar_images(per_batch, offset),
            key("filenames"): [f"train_{offset + i:05d}.png" for i in range(per_batch)],
        }
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    test = {
        key("batch_label"): "testing batch 1 of 1",
        key("labels"): [(k + 3) % 10 for k in range(4)],
        key("data"): _cifar_images(4, 100),
        key("filenames"): [f"test_{k:05d}.png" for k in range(4)],
    }
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)]}, f, protocol=protocol)
    return folder


def _check_cifar_content(train: data.CIFAR10, test: data.CIFAR10, per_batch: int) -> None:
    assert len(train) == 5 * per_batch and len(test) == 4
    for k in range(len(train)):
        x, y = train[k]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert int(y) == k % 10
        expected_red = ((torch.arange(1024) + k) % 256).float().reshape(32, 32) / 255
        torch.testing.assert_close(x[0], expected_red, rtol=0, atol=0)
        assert torch.all(x[1] == ((10 * k + 1) % 256) / 255)
        assert torch.all(x[2] == ((10 * k + 2) % 256) / 255)
    x, y = test[2]
    assert int(y) == 5 and torch.all(x[1] == ((10 * 102 + 1) % 256) / 255)


@pytest.mark.parametrize("protocol, bytes_keys", [(4, False), (2, False), (2, True), (5, False)])
def test_cifar_reads_channel_order_and_labels(tmp_path, protocol, bytes_keys):
    write_cifar_folder(tmp_path, protocol=protocol, bytes_keys=bytes_keys)
    _check_cifar_content(data.cifar10(tmp_path), data.cifar10(tmp_path, train=False), 3)


def test_cifar_accepts_the_batches_folder_itself(tmp_path):
    folder = write_cifar_folder(tmp_path)
    assert len(data.cifar10(folder, train=False)) == 4
    train, val = data.load_dataset("cifar10", data_dir=tmp_path)
    assert len(train) == 15 and len(val) == 4


def test_cifar_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.cifar10(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        data.cifar10(tmp_path / "empty")


def test_cifar_missing_batch_file_names_the_file(tmp_path):
    folder = write_cifar_folder(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.cifar10(tmp_path)
    assert len(data.cifar10(tmp_path, train=False)) == 4  # the test split is still readable


def _overwrite(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)


@pytest.mark.parametrize(
    "corruption",
    ["garbage", "truncated", "empty", "not_a_dict", "no_data", "bad_shape", "bad_labels"],
)
def test_cifar_corrupt_batch_is_a_clear_error(tmp_path, corruption):
    folder = write_cifar_folder(tmp_path)
    path = folder / "data_batch_2"
    good = path.read_bytes()
    images = _cifar_images(3, 0)
    payloads = {
        "garbage": b"\x00\xffthis is not a pickle" * 10,
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not_a_dict": pickle.dumps([1, 2, 3]),
        "no_data": pickle.dumps({"labels": [0, 1, 2]}),
        "bad_shape": pickle.dumps({"data": images[:, :100], "labels": [0, 1, 2]}),
        "bad_labels": pickle.dumps({"data": images, "labels": [0, 1, 12]}),
    }
    _overwrite(path, payloads[corruption])
    with pytest.raises(ValueError, match="data_batch_2"):
        data.cifar10(tmp_path)


class _Exploit:
    """Pickles to a call of os.system: a loader that runs it would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    folder = write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Exploit(marker), "labels": [0]})
    _overwrite(folder / "test_batch", payload)
    with pytest.raises(ValueError, match="test_batch.*not allowed"):
        data.cifar10(tmp_path, train=False)
    assert not marker.exists()


def test_cifar_augmentation_is_seeded_crop_and_flip(tmp_path):
    write_cifar_folder(tmp_path, per_batch=4)
    plain = data.cifar10(tmp_path)
    aug = data.cifar10(tmp_path, augment=True, seed=7)
    again = data.cifar10(tmp_path, augment=True, seed=7)
    seen_flip = seen_shift = False
    for k in range(len(aug)):
        x = aug[k][0]
        assert torch.equal(x, again[k][0])  # same (seed, epoch, index) -> same image
        padded = torch.nn.functional.pad(plain[k][0], (4, 4, 4, 4))
        candidates = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(
                x,
                padded[:, top : top + 32, left : left + 32].flip(-1)
                if flip
                else padded[:, top : top + 32, left : left + 32],
            )
        ]
        assert candidates, f"item {k} is no crop/flip of the original"
        seen_flip |= any(flip for _, _, flip in candidates)
        seen_shift |= any((top, left) != (4, 4) for top, left, _ in candidates)
    assert seen_flip and seen_shift
    before = [aug[k][0] for k in range(len(aug))]
    aug.set_epoch(1)
    assert any(not torch.equal(before[k], aug[k][0]) for k in range(len(aug)))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TOOL.is_file(), reason="shared CIFAR-10 tool not present")
def test_cifar_reads_what_the_shared_tool_writes(tmp_path):
    subprocess.run(
        [sys.executable, str(SHARED_TOOL), str(tmp_path), "--train-limit", "50"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    train = data.cifar10(tmp_path)
    test = data.cifar10(tmp_path, train=False)
    assert len(train) == 50 and len(test) == 10000
    assert set(test.labels.tolist()) == set(range(10))


def test_load_dataset_names():
    train, val = data.load_dataset("digits")
    assert len(train) == 1438 and len(val) == 359
    train, val = data.load_dataset("synthetic", seed=1)
    assert len(train) == 1600
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="data_dir"):
        data.load_dataset("cifar10")


# --------------------------------------------------------------------------- loaders


def _index_dataset(n: int) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.arange(n), torch.arange(n))


def test_make_loader_order_depends_only_on_seed_and_epoch():
    ds = _index_dataset(40)

    def order(seed, epoch):
        return torch.cat([x for x, _ in data.make_loader(ds, 8, seed=seed, epoch=epoch)])

    assert torch.equal(order(0, 0), order(0, 0))
    assert not torch.equal(order(0, 0), order(0, 1))
    assert not torch.equal(order(0, 1), order(1, 0))  # no seed + epoch collisions
    assert torch.equal(order(0, 0).sort().values, torch.arange(40))
    sequential = torch.cat([x for x, _ in data.make_loader(ds, 8, shuffle=False)])
    assert torch.equal(sequential, torch.arange(40))


def test_make_loader_ranks_split_the_global_batches():
    ds = _index_dataset(48)
    single = [x for x, _ in data.make_loader(ds, 8, seed=5, epoch=2)]
    ranks = [
        [x for x, _ in data.make_loader(ds, 4, seed=5, epoch=2, rank=r, world_size=2)]
        for r in range(2)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    for k, batch in enumerate(single):
        union = torch.cat([ranks[0][k], ranks[1][k]])
        assert torch.equal(union.sort().values, batch.sort().values)


def test_derive_seed_range_and_mixing():
    seeds = {data.derive_seed(s, e) for s in range(5) for e in range(5)}
    assert len(seeds) == 25
    assert all(0 <= s < 2**62 for s in seeds)
