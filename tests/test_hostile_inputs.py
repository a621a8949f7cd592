"""Hostile input at the library boundary: builders, files, memory estimates, training settings.

The command-line view of the same inputs is tests/test_cli_errors.py.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch

import deepframe as df
from deepframe.dictionary import random_weights
from deepframe.graph import ArchitectureError, from_spec
from deepframe.memory import (
    DEFAULT_MEMORY_BUDGET,
    MemoryBudgetError,
    check_memory,
    estimate_memory,
    resolve_memory_budget,
)

# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: df.densenet((3, 8, 8), 0), "layers_per_stage must be >= 1"),
        (lambda: df.densenet((3, 8, 8), 2.0), "layers_per_stage must be an integer"),
        (lambda: df.densenet((3, 8, 8), 1, widths=()), "widths is empty"),
        (lambda: df.resnet((3, 8, 8), True), "blocks_per_stage must be an integer"),
        (lambda: df.resnet((3, 8, 8), 1, widths=(4, 0, 4)), "widths entry must be >= 1"),
        (lambda: df.resnet((3, 8, 8), 1, skips="no"), "skips must be True or False"),
        (lambda: df.resnet((3, 8, 8), 1, shortcut="C"), "shortcut must be one of"),
        (lambda: df.chain((1, 8, 8), [4], merge="sideways"), "merge must be one of"),
        (lambda: df.chain((1, 8, 8), [4], dense="yes"), "dense must be True or False"),
        (lambda: df.chain((1, 8, 8), [4.5]), "widths entry must be an integer"),
        (lambda: df.chain((1.5, 8, 8), [4]), "input_shape entry must be an integer"),
        (lambda: df.chain((1, 8), [4]), "input_shape must have 1 or 3 entries"),
        (lambda: df.chain((1, 8, 8), [4], kernel_size=0), "kernel_size must be >= 1"),
        (lambda: df.chain((1, 8, 8), [4, 4], strides=[1, 0]), "strides entry must be >= 1"),
        (lambda: df.chain((1, 8, 8), "8x16"), "widths must be a sequence"),
    ],
)
def test_builders_refuse_bad_arguments(build, fragment):
    with pytest.raises(ArchitectureError, match=fragment):
        build()


def test_spec_values_reach_the_builders_unchanged():
    """What the spec says is what is built (no silent truncation or fallback)."""
    g = from_spec("chain:input_shape=2x6x6,widths=3x5,strides=1x2,merge=input,batchnorm=true")
    assert g.nodes["l2"]["shape"] == (5, 3, 3) and g.nodes["l2"]["merge"] == "input"
    assert g.nodes["l1"]["batchnorm"] is True


def test_a_file_named_like_a_builder_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df.save(df.chain((1, 4, 4), [2]), tmp_path / "resnet")
    with pytest.raises(ArchitectureError, match="'resnet:' for the builder or './resnet'"):
        from_spec("resnet")
    assert from_spec("./resnet").number_of_nodes() == 2  # the file
    assert from_spec("resnet:").number_of_nodes() == 8  # the builder


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'\xef\xbb\xbf{"nodes": [], "edges": []}', "the graph is empty"),  # a BOM is fine
        (b'{"nodes": "\xff"}', "not UTF-8 text (byte 0xff at offset 11)"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"nodes": [1, 2], "edges": []}', "malformed node-link data"),
        (b'{"nodes": [{"id": [1]}], "edges": []}', "no input node"),
        (b"{nodes: []}", "not valid JSON (Expecting property name"),
        (b'{"nodes": []}', "no 'edges' or 'links'"),
    ],
    ids=["bom", "not utf-8", "nested", "int nodes", "no input", "not json", "no edges"],
)
def test_load_names_the_file_and_the_problem(tmp_path, content, fragment):
    path = tmp_path / "arch.json"
    path.write_bytes(content)
    with pytest.raises(ArchitectureError, match=re.escape(fragment)) as info:
        df.load(path)
    assert str(path) in str(info.value)


def test_load_refuses_folders_and_huge_files(tmp_path, monkeypatch):
    import deepframe.graph as graph

    with pytest.raises(ArchitectureError, match="is a folder"):
        df.load(tmp_path)
    monkeypatch.setattr(graph, "MAX_ARCHITECTURE_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"nodes": [], "edges": [], "pad": "x" * 200}))
    with pytest.raises(ArchitectureError, match="larger than"):
        df.load(path)


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "spec",
    [
        "chain:input_shape=1x8x8,widths=4x6",
        "resnet:input_shape=3x8x8,widths=2x3x4,shortcut=B",
        "densenet:input_shape=1x6x6,layers_per_stage=2,widths=2x3",
        "chain:input_shape=12,widths=5x3",
    ],
)
def test_memory_estimate_counts_match_the_objects_built(spec):
    """The estimate's sizes, counted without tensors, against the tensors themselves."""
    g = from_spec(spec)
    est = estimate_memory(g)
    weights = random_weights(g)
    assert est.weights == sum(w.numel() for w in weights.values())
    key, shape = est.largest_weight
    assert math.prod(shape) == max(w.numel() for w in weights.values())
    assert tuple(weights[key].shape) == shape
    D = df.dictionary(g)
    assert (est.rows, est.atoms) == D.shape
    # bytes: the weights at the dtype's size plus two float64 draws of the largest tensor
    assert est.bytes("weights", 4) == 4 * est.weights + 16 * math.prod(shape)


@pytest.mark.parametrize(
    ("in_shape", "c_out", "kernel_size", "stride", "padding"),
    [((3, 32, 32), 16, 3, 1, 1), ((8, 17, 9), 4, 3, 2, 1), ((2, 8, 8), 5, 5, 1, 0),
     ((4, 7, 7), 6, 1, 2, 0), ((3, 6, 6), 2, 3, 1, 3)],
)  # fmt: skip
def test_lipschitz_bound_estimate_follows_the_periodic_grid(
    in_shape, c_out, kernel_size, stride, padding
):
    """The bound's size uses the grid that deepframe.ops.conv_sqnorm_bound builds."""
    from deepframe import ops
    from deepframe.ops import OpSpec
    from deepframe.ops.conv import _live_taps

    out = [ops.conv_output_size(n, kernel_size, stride, padding) for n in in_shape[1:]]
    spec = OpSpec("conv", in_shape, (c_out, *out), stride, kernel_size, padding, "w")
    k = torch.ones((c_out, in_shape[0], kernel_size, kernel_size), dtype=torch.float64)
    grid = []
    for axis, size in zip((2, 3), in_shape[1:]):
        live, period = _live_taps(k, axis, size, stride, padding)
        if live.shape[axis] == kernel_size:  # no dead taps: the estimate's grid is exact
            grid.append(-(-period // stride))
    if len(grid) == 2:
        c_in = in_shape[0] * stride * stride
        m = min(c_out, c_in)
        assert spec.bound_bytes() == 40 * grid[0] * (grid[1] // 2 + 1) * (c_out * c_in + 2 * m * m)
    else:  # dead taps shrink the grid: the estimate stays an upper bound
        assert spec.bound_bytes() > 0


def test_check_memory_refuses_with_the_estimate_before_allocating(monkeypatch):
    g = df.chain((1, 8, 8), [100_000, 100_000])  # validating allocates nothing
    n = 100_000 * 9 + 100_000 * 100_000 * 9  # weights; float64 plus two float64 draws of l1->l2
    need = (8 * n + 16 * 100_000 * 100_000 * 9) / 1024**4
    with pytest.raises(MemoryBudgetError, match=rf"about {need:.3g} TiB \({n:,} learned weights, "
                       r"the largest 'l1->l2' of shape 100000x100000x3x3\)"):  # fmt: skip
        random_weights(g)
    with pytest.raises(MemoryBudgetError, match="pursuit solver"):
        df.compile(g, iterations=1)
    with pytest.raises(MemoryBudgetError, match="initialising the weights"):
        df.compile(g, method="feedforward")
    wide_map = df.chain((3, 1024, 1024), [8, 16])  # small weights, a 5 GiB Lipschitz bound
    with pytest.raises(MemoryBudgetError, match="GiB for the largest Lipschitz bound"):
        df.compile(wide_map, method="deep", iterations=2)
    assert df.compile(wide_map, method="feedforward").iterations == 0  # no bound needed
    big = df.chain((3, 4096, 4096), [8, 16])
    with pytest.raises(MemoryBudgetError, match="structured geometry"):
        df.metrics_report(big)
    assert issubclass(df.GramTooLargeError, MemoryBudgetError)
    # the budget: argument, else the environment variable, else 2 GiB
    monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    assert resolve_memory_budget() == DEFAULT_MEMORY_BUDGET == 2 * 1024**3
    monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", "16G")
    assert resolve_memory_budget() == 16 * 1024**3
    assert resolve_memory_budget("512M") == 512 * 1024**2
    small = df.chain((1, 8, 8), [4])
    assert check_memory(small, "weights") > 0
    monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", "100")
    with pytest.raises(MemoryBudgetError, match="memory budget of 100 B"):
        random_weights(small)
    monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", "plenty")
    with pytest.raises(ValueError, match="DEEPFRAME_MEMORY_BUDGET"):
        random_weights(small)


# --------------------------------------------------------------------------- training settings


def _tiny():
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.rand((8, 1, 4, 4), generator=g)
    return TensorDataset(x, torch.arange(8) % 2)


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"momentum": float("nan")}, "momentum must be a finite number >= 0"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"epochs": 1.5}, "epochs must be an integer"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"fgsm_eps": "big"}, "cannot read eps"),
        ({"device": "cuda:99" if torch.cuda.is_available() else "cuda"}, "device 'cuda"),
        ({"device": "tpu0"}, "not a device name"),
    ],
)
def test_train_checks_settings_before_any_work(tmp_path, setting, fragment):
    net = df.compile(df.chain((1, 4, 4), [2]), method="feedforward", num_classes=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    options = {"epochs": 1, "checkpoint_dir": tmp_path / "ck", "log_path": tmp_path / "log"}
    with pytest.raises(ValueError, match=fragment):
        df.train(net, _tiny(), **{**options, **setting})
    assert not any(tmp_path.iterdir())  # nothing written
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_resume_with_another_model_lists_the_differences(tmp_path):
    from deepframe.train import ResumeMismatchError, model_metadata, resume_state

    g = df.chain((1, 4, 4), [2, 3])
    options = {"method": "feedforward", "num_classes": 2}
    common = {"epochs": 1, "checkpoint_dir": tmp_path, "progress": False, "batch_size": 4}
    df.train(df.compile(g, **options), _tiny(), **common, metadata=model_metadata(g, **options))
    deep = {"method": "deep", "iterations": 2, "num_classes": 2}
    meta = model_metadata(g, **deep)
    with pytest.raises(ResumeMismatchError) as info:
        df.train(df.compile(g, **deep), _tiny(), **common, metadata=meta)
    assert info.value.differences == ["iterations: None -> 2", "method: 'feedforward' -> 'deep'"]
    assert "resume=False" in str(info.value)
    with pytest.raises(ResumeMismatchError, match="channels 3 -> 5"):
        resume_state(
            tmp_path,
            metadata=model_metadata(df.chain((1, 4, 4), [2, 5]), **options),
            epochs=1,
            batch_size=4,
        )
    # without metadata the weights themselves must fit
    with pytest.raises(ResumeMismatchError, match="do not fit this model"):
        df.train(df.compile(df.chain((1, 4, 4), [2, 5]), **options), _tiny(), **common)
    state = resume_state(tmp_path, metadata=model_metadata(g, **options), epochs=1, batch_size=4)
    assert state["epoch"] == 1  # the same run: complete, nothing differs


def test_load_model_refuses_non_finite_weights_unless_asked(tmp_path):
    from deepframe.train import model_metadata

    g = df.chain((1, 4, 4), [2])
    options = {"method": "feedforward", "num_classes": 2}
    net = df.compile(g, **options)
    df.train(net, _tiny(), epochs=1, checkpoint_dir=tmp_path, progress=False,
             metadata=model_metadata(g, **options))  # fmt: skip
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["head.weight"][0, 0] = float("nan")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"not finite in head\.weight \(1 of"):
        df.load_model(path)
    loaded = df.load_model(path, check_finite=False)
    assert torch.isnan(loaded.head.weight[0, 0])


# --------------------------------------------------------------------------- the package


def test_import_deepframe_is_light_and_names_resolve_on_use():
    code = (
        "import sys, deepframe as df\n"
        "light = 'torch' not in sys.modules\n"
        "from deepframe.train import load_model\n"
        "from deepframe.dictionary import GlobalDictionary\n"
        "print(light, callable(df.train), callable(df.dictionary), df.compile.__name__,\n"
        "      sorted(df.__all__) == sorted(n for n in dir(df) if n in df.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "True", "True", "compile", "True"], done.stderr
