"""Tests of deepframe.checkpoints: writing, safe reading, metadata, load_model, comparisons.

The checkpoints written by training runs (resume, corrupt files) are tested in
test_train.py, where the runs are.
"""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import pytest
import torch
from torch import nn

import deepframe
from deepframe.checkpoints import (
    CHECKPOINT_FORMAT,
    architecture_differences,
    check_storable,
    load_checkpoint,
    load_model,
    model_metadata,
    save_checkpoint,
    state_dict_mismatch,
)
from deepframe.graph import dumps, loads

REPO_ROOT = Path(deepframe.__file__).resolve().parents[1]
COMMITTED = sorted((REPO_ROOT / "docs" / "results").glob("*/models/*/model.pt"))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.ones(3)}})

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def test_save_checkpoint_refuses_objects_weights_only_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        save_checkpoint(tmp_path / "c.pt", {"epoch": 1, "model": {}, "hook": print})
    assert not (tmp_path / "c.pt").exists()


def test_check_storable_names_the_path_to_the_bad_value():
    check_storable({"a": [1, 2.5, "x", None, True, torch.zeros(2)], 3: {"b": ()}}, "metadata")
    with pytest.raises(ValueError, match=r"metadata\['a'\]\[1\] holds a set"):
        check_storable({"a": [1, {2}]}, "metadata")
    with pytest.raises(ValueError, match="key"):
        check_storable({(1, 2): 0}, "metadata")


def test_state_dict_mismatch_lists_keys_and_shapes():
    model = nn.Linear(3, 4)
    assert state_dict_mismatch(model, model.state_dict()) is None
    stored = {"weight": torch.zeros(4, 2), "extra": torch.zeros(1)}
    problem = state_dict_mismatch(model, stored)
    assert "missing bias" in problem
    assert "unexpected extra" in problem
    assert "shape weight (4, 2) vs (4, 3)" in problem


def test_architecture_differences_name_nodes_and_attributes():
    a = deepframe.chain((1, 4, 4), [2, 3])
    b = deepframe.chain((1, 4, 4), [2, 3], bias=0.5)
    c = deepframe.chain((1, 4, 4), [2, 3, 4])
    assert architecture_differences(dumps(a), dumps(a)) == ["architecture: differs"]
    changed = architecture_differences(dumps(a), dumps(b))
    assert changed and all(line.startswith("architecture: node ") for line in changed)
    assert any("bias" in line and "-> 0.5" in line for line in changed)
    grown = architecture_differences(dumps(a), dumps(c))
    extra_nodes = set(c.nodes) - set(a.nodes)
    assert any("only in this run" in line and str(n) in line for line in grown for n in extra_nodes)
    assert architecture_differences("not json", dumps(a)) == ["architecture: differs"]


def test_model_metadata_holds_the_graph_text_the_options_and_the_dataset():
    g = deepframe.chain((1, 8, 8), [4, 10])
    from deepframe.data import DATASETS

    info = DATASETS["digits"]
    options = {"method": "deep", "iterations": 2, **info.compile_options(), "seed": 3}
    assert options["num_classes"] == info.num_classes
    assert options["mean"] == list(info.mean) and options["std"] == list(info.std)
    metadata = model_metadata(g, dataset="digits", dtype=torch.float64, device="cpu", **options)
    assert set(metadata) == {"graph", "compile", "dataset"} and metadata["dataset"] == "digits"
    assert metadata["compile"] == {**options, "dtype": "float64"}  # device is not stored
    assert json.loads(metadata["graph"]) == json.loads(dumps(g))
    assert nx.utils.graphs_equal(loads(metadata["graph"]), g)
    assert "dataset" not in model_metadata(g, **options)
    with pytest.raises(ValueError, match="dataset"):
        model_metadata(g, dataset=3, **options)


def test_load_model_rebuilds_the_solver_from_its_metadata(tmp_path):
    g = deepframe.chain((1, 8, 8), [4, 10])
    options = {"method": "layered", "iterations": 2, "num_classes": 10, "seed": 1}
    model = deepframe.compile(g, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # not the seeded initial weights
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        {"model": model.state_dict(), "metadata": model_metadata(g, dataset="digits", **options)},
    )
    loaded = load_model(path)
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["metadata"]["dataset"] == "digits"


def _committed_id(path: Path) -> str:
    return f"{path.parents[2].name}/{path.parent.name}"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=_committed_id(p), marks=() if k == 0 else pytest.mark.slow)
        for k, p in enumerate(COMMITTED)
    ],
)
def test_committed_models_load_with_their_stored_weights(path):
    """docs/results' weights-only models load, weights equal to the file, equal to their
    training checkpoint's model (the two files the run wrote at its end)."""
    model = load_model(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert own.keys() == raw["model"].keys()
    for key, tensor in raw["model"].items():
        assert torch.equal(own[key], tensor), key
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, raw["metadata"]["compile"]["num_classes"])
    assert torch.isfinite(y).all()
    training = path.parent / "train" / "checkpoint.pt"
    if training.is_file():
        state = load_checkpoint(training)
        assert state["epoch"] == raw["epoch"] and state["metadata"] == raw["metadata"]
        twin = load_model(training)
        with torch.no_grad():
            assert torch.equal(twin(x), y)
