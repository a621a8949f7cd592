"""Hostile files at the loaders: stored compile options, foreign weights (issue 21, items 6, 10).

A checkpoint's metadata is input too: every stored compile option is checked
by the rules ``compile`` applies (``CompileOptions``), and the stored model's
memory is estimated before anything is built. Checkpoints and foreign weights
files are read by one rule (``deepframe.checkpoints.read_torch_file``): one
line naming the path and what the file is, never torch's advice to load with
``weights_only=False``. The crafted files are written with ``torch.save`` of
plain data (what ``weights_only=True`` reads), except the whole pickled module.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import deepframe as df
from deepframe.checkpoints import load_checkpoint, model_metadata, read_torch_file, save_checkpoint
from deepframe.interop import load_state_dict
from deepframe.memory import MemoryBudgetError

GRAPH = df.chain((1, 8, 8), [2, 3])  # the digits' shape (the CLI attacks it)
OPTIONS = {"method": "deep", "iterations": 2, "num_classes": 4}


class Net(nn.Module):
    """A user's module, pickled whole by ``torch.save(model)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)


def _checkpoint(path, **changes):
    """A weights-only checkpoint of GRAPH whose stored compile options are OPTIONS changed."""
    model = df.compile(GRAPH, **OPTIONS)
    metadata = model_metadata(GRAPH, dataset="digits", **OPTIONS)
    metadata["compile"].update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del metadata["compile"][key]
    save_checkpoint(path, {"model": model.state_dict(), "metadata": metadata})
    return path


_DROP = object()


def _one_line(message: str) -> None:
    assert "\n" not in message and "\x1b" not in message, message
    assert "weights_only=False" not in message and "Re-running" not in message, message
    assert len(message) < 600, message  # the command line cuts a message at 600


# --------------------------------------------------------------------------- stored options


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"iterations": "3"}, "iterations must be an integer >= 0, got '3'"),
        ({"iterations": -1}, "iterations must be an integer >= 0, got -1"),
        ({"iterations": True}, "iterations must be an integer >= 0, got True"),
        ({"iterations": 2.5}, "iterations must be an integer >= 0, got 2.5"),
        ({"method": "sideways"}, "unknown method 'sideways'"),
        ({"method": None}, "unknown method None"),
        ({"schedule": "random"}, "unknown schedule 'random'"),
        ({"threshold": 1}, "unknown threshold 1"),
        ({"layered_init": "last"}, "unknown layered_init 'last'"),
        ({"alpha": 1.5}, "alpha must be in [0, 1) or 'fista', got 1.5"),
        ({"alpha": float("nan")}, "alpha must be in [0, 1) or 'fista', got nan"),
        ({"alpha": True}, "alpha must be in [0, 1) or 'fista', got True"),
        ({"beta": 0}, "beta must be in (0, 1] or 'learned', got 0"),
        ({"beta": "big"}, "beta must be in (0, 1] or 'learned', got 'big'"),
        ({"beta": True}, "beta must be a number, got True"),
        ({"checkpoint_sweeps": -1}, "checkpoint_sweeps must be True, False or an integer >= 1"),
        ({"checkpoint_sweeps": "yes"}, "checkpoint_sweeps must be True, False"),
        ({"learn_lambda": "no"}, "learn_lambda must be True or False, got 'no'"),
        ({"channels_last": 1}, "channels_last must be True or False, got 1"),
        ({"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
        ({"num_classes": 2.0}, "num_classes must be an integer >= 1, got 2.0"),
        ({"num_classes": True}, "num_classes must be an integer >= 1, got True"),
        ({"torch_compile": "yes"}, "torch_compile must be a bool or a mapping"),
        ({"torch_compile": {1: 2}}, "torch_compile's options must be named by strings"),
        ({"negative_bias": "ignore"}, "unknown negative_bias 'ignore'"),
        ({"dtype": "int64"}, "the stored dtype 'int64' is not one of"),
        ({"dtype": 3}, "the stored dtype 3 is not one of"),
        ({"dtype": "float32x" * 40}, "the stored dtype 'float32xfloat32x"),
        ({"unknown": 1}, "name 'unknown', which this deepframe's compile does not take"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": "0"}, "seed must be an integer >= 0, got '0'"),
        ({"mean": [0.5, float("nan")]}, "mean must be finite"),
        ({"std": [0.0]}, "std must be > 0 (the input is divided by it)"),
        ({"std": "wide"}, "std must be a number or a sequence of numbers"),
    ],
)
def test_load_model_validates_every_stored_option(tmp_path, changes, fragment):
    path = _checkpoint(tmp_path / "c.pt", **changes)
    with pytest.raises(ValueError) as info:
        df.load_model(path)
    message = str(info.value)
    assert not isinstance(info.value, MemoryBudgetError)
    assert message.startswith(f"{path}: ") and fragment in message, message
    _one_line(message)


def test_stored_options_are_checked_by_the_compile_rules(tmp_path):
    """Every option compile refuses is refused in a checkpoint, with compile's words."""
    for changes in ({"iterations": -3}, {"alpha": 2.0}, {"checkpoint_sweeps": -2}):
        with pytest.raises(ValueError) as compiled:
            df.compile(GRAPH, **{**OPTIONS, **changes})
        path = _checkpoint(tmp_path / "c.pt", **changes)
        with pytest.raises(ValueError) as loaded:
            df.load_model(path)
        assert str(compiled.value).removeprefix("compile: ") in str(loaded.value)


def test_the_stored_options_load_when_valid_and_in_any_subset(tmp_path):
    x = torch.rand(3, 1, 8, 8)
    for changes in ({}, {"alpha": "fista", "checkpoint_sweeps": True}, {"iterations": _DROP}):
        net = df.load_model(_checkpoint(tmp_path / "c.pt", **changes))
        assert net(x).shape == (3, 4)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"iterations": 10**9}, "(14.9 GiB for the state of T=1,000,000,000 iterations), "),
        ({"iterations": 10**9, "alpha": "fista"}, "state of T=1,000,000,000 iterations"),
        ({"num_classes": 10**11}, "a classifier head of 100,000,000,000 classes x 4 weights"),
        ({"method": "feedforward", "num_classes": 10**11}, "initialising the weights needs"),
    ],
)
def test_load_model_estimates_the_stored_model_before_building_it(
    tmp_path, monkeypatch, changes, fragment
):
    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    path = _checkpoint(tmp_path / "c.pt", **changes)
    import deepframe.pursuit.compiler as compiler

    def build(*args, **kwargs):
        raise AssertionError("built before the memory estimate")

    monkeypatch.setattr(compiler, "_build", build)
    with pytest.raises(MemoryBudgetError) as info:
        df.load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the stored model: ") and fragment in message, message
    assert "more than the memory budget of 2 GiB" in message
    assert ("use fewer iterations" in message) == ("iterations" in changes)
    _one_line(message)


def test_a_feedforward_checkpoint_ignores_its_stored_iterations(tmp_path):
    path = _checkpoint(tmp_path / "c.pt", method="feedforward", iterations=10**9)
    assert df.load_model(path).iterations == 0


def test_attack_on_a_checkpoint_of_a_billion_iterations_says_so(tmp_path, capsys, monkeypatch):
    from deepframe.cli import main

    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    path = _checkpoint(tmp_path / "c.pt", iterations=10**9)
    before = path.read_bytes()
    code = main(["attack", str(path), "--limit", "4", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("deepframe attack: error: ") and str(path) in err
    assert "T=1,000,000,000" in err and "Traceback" not in err
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_attack_refuses_a_long_unroll_up_front(tmp_path, capsys, monkeypatch):
    """10**6 iterations build (the state is small) but the attack's gradient cannot fit."""
    from deepframe.cli import main

    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    path = _checkpoint(tmp_path / "c.pt", iterations=10**6)
    code = main(["attack", str(path), "--limit", "4", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]  # after the line that says what is attacked
    assert code == 2 and len(lines) <= 2 and err.startswith("deepframe attack: error: "), lines
    assert "an attack (FGSM/PGD backpropagates through the unrolled solver)" in err
    assert "T=1,000,000 at batch 4" in err and "fewer iterations" in err


# --------------------------------------------------------------------------- foreign files


def _whole_module(path):
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), path)


def _user_module(path):
    torch.save(Net(), path)


def _random_bytes(path):
    path.write_bytes(random.Random(0).randbytes(4096))


def _random_pickle_bytes(path):  # starts like a legacy pickle
    path.write_bytes(b"\x80\x02" + random.Random(1).randbytes(4096))


def _random_zip_bytes(path):  # starts like a zip archive
    path.write_bytes(b"PK\x03\x04" + random.Random(2).randbytes(4096))


def _truncated(path):
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:300])


def _text(path):
    path.write_text("conv.weight = [1, 2, 3]\n")


def _empty(path):
    path.write_bytes(b"")


FOREIGN = [
    (_whole_module, "a whole pickled torch module (torch.nn.modules.container.Sequential), not "
                    "a state dict: save model.state_dict() instead"),
    (_user_module, f"a whole pickled torch module ({__name__}.Net), not a state dict"),
    (_random_bytes, "not a PyTorch file (it starts with the bytes"),
    (_random_pickle_bytes, "not a PyTorch checkpoint"),
    (_random_zip_bytes, "a zip archive without PyTorch's layout"),
    (_truncated, "truncated or corrupt"),
    (_text, "a text file, not a PyTorch file"),
    (_empty, "the file is empty"),
]  # fmt: skip


@pytest.mark.parametrize(("write", "fragment"), FOREIGN, ids=[w.__name__ for w, _ in FOREIGN])
def test_weights_files_and_checkpoints_share_one_loader_rule(tmp_path, write, fragment):
    path = tmp_path / "evil.pt"
    write(path)
    before = path.read_bytes()
    reasons = []
    for load, what in (
        (load_state_dict, "weights file"),
        (lambda p: load_checkpoint(p, training=False), "deepframe checkpoint"),
        (df.load_model, "deepframe checkpoint"),
        (read_torch_file, "deepframe checkpoint"),
    ):
        with pytest.raises(ValueError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not a {what}: "), message
        assert fragment in message, message
        _one_line(message)
        reasons.append(message.split(": ", 1)[1])
    assert len(set(reasons)) == 1  # the same reason from every loader
    assert path.read_bytes() == before


def test_a_weights_file_that_holds_no_state_dict_says_what_it_holds(tmp_path):
    cases = [({"epoch": 3, "lr": 0.1}, "a dict with keys 'epoch', 'lr'"), ({}, "an empty dict"),
             ([torch.zeros(2)], "a list"), (torch.zeros(2), "a Tensor")]  # fmt: skip
    for obj, held in cases:
        path = tmp_path / "w.pt"
        torch.save(obj, path)
        with pytest.raises(ValueError) as info:
            load_state_dict(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not a weights file: it holds {held}, not a "
                                  "state_dict")  # fmt: skip
        _one_line(message)
    with pytest.raises(FileNotFoundError, match="weights file not found: .*nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="is a folder, not a weights file"):
        load_state_dict(tmp_path)


USER_MODELS = """
import torch.nn as nn
import torch.nn.functional as F


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv1(x)), 1).flatten(1))


def small():
    return Small()
"""


@pytest.mark.parametrize("write", [_whole_module, _random_bytes], ids=["module", "random"])
def test_cli_from_torch_refuses_a_foreign_weights_file_in_one_line(
    tmp_path, monkeypatch, capsys, write
):
    from deepframe.cli import main

    (tmp_path / "usermodels.py").write_text(USER_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "usermodels", raising=False)
    path = tmp_path / "evil.pt"
    write(path)
    before = path.read_bytes()
    argv = ["metrics", "--from-torch", "usermodels:small", "--weights", str(path)]
    code = main([*argv, "--input-shape", "3,8,8"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(f"deepframe metrics: error: {path} is not a weights file: "), err
    _one_line(err)
    assert path.read_bytes() == before
