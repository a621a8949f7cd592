"""Tests of deepframe.train: the loop, its log, checkpoints and resume, distributed training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import deepframe
from deepframe import data
from deepframe.train import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    load_checkpoint,
    load_model,
    model_metadata,
    train,
)

REPO_ROOT = Path(deepframe.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_data():
    """130 training and 30 validation images (1 x 4 x 4) of the synthetic sparse model."""
    syn = data.synthetic(
        n_samples=160, input_shape=(1, 4, 4), widths=(24, 10), atom_sparsity=(3, 2), seed=0
    )
    return syn.train, syn.val


def mlp(seed: int = 0, dropout: float = 0.1) -> nn.Module:
    """A small classifier with dropout, so that resuming must also reproduce the RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 10)
        )


SETTINGS = {
    "sgd-cosine-adversarial": dict(
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        adversarial={"eps": "8/255"},
    ),
    "adam-step": dict(optimizer="adam", lr=1e-2, weight_decay=1e-4, schedule="step"),
}


def _run(toy_data, tmp: Path | None, *, model=None, epochs=3, **kwargs) -> tuple[nn.Module, list]:
    settings = {"seed": 7, "fgsm_eps": "8/255", **SETTINGS["sgd-cosine-adversarial"], **kwargs}
    model = mlp() if model is None else model
    history = train(
        model,
        *toy_data,
        epochs=epochs,
        batch_size=32,
        progress=False,
        device="cpu",
        checkpoint_dir=None if tmp is None else tmp / "ckpt",
        log_path=None if tmp is None else tmp / "log.jsonl",
        **settings,
    )
    return model, history


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _without_time(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


class _Crash(Exception):
    pass


def _crash_after(epoch: int):
    def hook(record):
        if record["epoch"] == epoch:
            raise _Crash

    return hook


# --------------------------------------------------------------------------- the loop


def test_training_learns_and_logs_every_epoch(toy_data, tmp_path):
    model, history = _run(toy_data, tmp_path, epochs=6, adversarial=None, optimizer="adam", lr=1e-2)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.4  # chance is 0.1
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == history
    expected = {
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "fgsm_eps",
        "val_fgsm_acc",
        "lr",
        "time",
    }
    assert set(records[0]) == expected
    assert records[0]["fgsm_eps"] == pytest.approx(8 / 255)
    assert records[0]["lr"] == 0.01 and records[-1]["lr"] < records[1]["lr"]  # cosine
    assert all(0 <= r["val_fgsm_acc"] <= 1 for r in records)


def test_training_leaves_the_callers_rng_alone(toy_data):
    before = torch.get_rng_state()
    _run(toy_data, None, epochs=1)
    assert torch.equal(torch.get_rng_state(), before)


def test_same_seed_same_weights(toy_data):
    a, _ = _run(toy_data, None, epochs=2)
    b, _ = _run(toy_data, None, epochs=2)
    _assert_same_weights(a, b)
    c, _ = _run(toy_data, None, epochs=2, model=mlp())
    _assert_same_weights(a, c)


class _WithRefresh(nn.Module):
    """A model exposing the pursuit solvers' hooks: refresh_lipschitz and an objective."""

    def __init__(self):
        super().__init__()
        self.net = mlp(dropout=0.0)
        self.refreshes = 0

    def refresh_lipschitz(self):
        self.refreshes += 1

    def forward(self, x):
        return self.net(x)


def test_refresh_lipschitz_and_extra_metrics(toy_data, tmp_path):
    model = _WithRefresh()
    _, history = _run(
        toy_data,
        tmp_path,
        model=model,
        epochs=2,
        adversarial=None,
        extra_metrics=lambda m, val: {"objective": 0.5 * len(val)},
    )
    steps_per_epoch = -(-len(toy_data[0]) // 32)
    assert model.refreshes == 2 * (steps_per_epoch + 1)  # every step + before evaluation
    assert [r["objective"] for r in history] == [0.5 * len(toy_data[1])] * 2
    with pytest.raises(ValueError, match="override"):
        _run(toy_data, None, epochs=1, extra_metrics=lambda m, val: {"val_acc": 1.0})


class _FakeTrace:
    def __init__(self, objective):
        self.objective = objective


class _WithEncode(nn.Module):
    """Exposes ``encode(x, trace=True)`` like the pursuit solvers: objective (T + 1, B)."""

    def __init__(self):
        super().__init__()
        self.net = mlp(dropout=0.0)
        self.modes = []

    def encode(self, x, trace=False):
        self.modes.append(self.training)
        objective = torch.stack([x.flatten(1).sum(1), x.flatten(1).sum(1) / 2])
        return {}, _FakeTrace(objective)

    def forward(self, x):
        return self.net(x)


def test_pursuit_objective_is_logged_by_default(toy_data, tmp_path):
    model = _WithEncode()
    _, history = _run(toy_data, tmp_path, model=model, epochs=1)
    x_val = toy_data[1].tensors[0]
    assert history[0]["objective"] == pytest.approx(float(x_val.flatten(1).sum(1).mean()) / 2)
    assert model.modes == [False]  # measured in eval mode
    _, plain = _run(toy_data, None, epochs=1)
    assert "objective" not in plain[0]


def test_compiled_pursuit_solver_trains_and_resumes(toy_data, tmp_path):
    """The solvers of deepframe.compile drop in: objective logged, resume exact."""

    def build():
        graph = deepframe.chain((1, 4, 4), widths=[4, 8])
        return deepframe.compile(graph, method="deep", iterations=2, seed=0)

    metadata = model_metadata(
        deepframe.chain((1, 4, 4), widths=[4, 8]), method="deep", iterations=2
    )
    settings = dict(epochs=2, adversarial=None, lr=0.05, metadata=metadata)
    reference, ref_history = _run(toy_data, tmp_path / "reference", model=build(), **settings)
    assert all(math.isfinite(r["objective"]) for r in ref_history)
    loaded = load_model(tmp_path / "reference" / "ckpt" / CHECKPOINT_NAME)
    _assert_same_weights(loaded, reference)
    x = toy_data[1].tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference.eval()(x), rtol=0, atol=0)
    with pytest.raises(_Crash):
        _run(toy_data, tmp_path / "b", model=build(), on_epoch_end=_crash_after(1), **settings)
    resumed, _ = _run(toy_data, tmp_path / "b", model=build(), **settings)
    _assert_same_weights(resumed, reference)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"schedule": "linear"}, "schedule"),
        ({"adversarial": {"epsilon": 0.1}}, "adversarial"),
        ({"fgsm_eps": "eight"}, "eps"),
        ({"metadata": {"arch": object()}}, "metadata"),
    ],
)
def test_bad_settings_are_refused(toy_data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(toy_data, None, **kwargs)


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_kill_and_resume_gives_the_uninterrupted_weights(toy_data, tmp_path, setting):
    reference, ref_history = _run(toy_data, tmp_path / "reference", **SETTINGS[setting])

    crashed = tmp_path / "crashed"
    with pytest.raises(_Crash):
        _run(toy_data, crashed, on_epoch_end=_crash_after(1), **SETTINGS[setting])
    assert load_checkpoint(crashed / "ckpt" / CHECKPOINT_NAME)["epoch"] == 1
    # a new process would build a new model: its own initial weights must not matter
    resumed, history = _run(toy_data, crashed, model=mlp(seed=123), **SETTINGS[setting])

    _assert_same_weights(resumed, reference)
    assert _without_time(history) == _without_time(ref_history)
    log = [json.loads(line) for line in (crashed / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    ref_opt = load_checkpoint(tmp_path / "reference" / "ckpt" / CHECKPOINT_NAME)["optimizer"]
    opt = load_checkpoint(crashed / "ckpt" / CHECKPOINT_NAME)["optimizer"]
    for key, state in ref_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(opt["state"][key][name]), torch.as_tensor(value))


def test_resume_of_a_finished_run_only_loads(toy_data, tmp_path):
    done, history = _run(toy_data, tmp_path, epochs=2)
    again, history_again = _run(toy_data, tmp_path, epochs=2, model=mlp(seed=5))
    _assert_same_weights(done, again)
    assert history_again == history


def test_resume_false_starts_over(toy_data, tmp_path):
    first, _ = _run(toy_data, tmp_path, epochs=2)
    _run(toy_data, tmp_path, epochs=1, lr=0.05, resume=False)  # other settings: fine
    assert load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)["epoch"] == 1
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1


def test_resume_with_other_settings_is_refused(toy_data, tmp_path):
    _run(toy_data, tmp_path, epochs=1)
    with pytest.raises(ValueError, match=r"cannot resume.*lr"):
        _run(toy_data, tmp_path, epochs=1, lr=0.05)


def test_checkpoint_contents_load_with_weights_only(toy_data, tmp_path):
    model, _ = _run(toy_data, tmp_path, epochs=1, metadata={"arch": "chain", "iterations": 3})
    path = tmp_path / "ckpt" / CHECKPOINT_NAME
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == 1
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and state["metadata"] == {"arch": "chain", "iterations": 3}
    assert state["config"]["seed"] == 7 and state["config"]["adversarial"]["eps"] == 8 / 255
    fresh = mlp(seed=9)
    fresh.load_state_dict(state["model"])
    _assert_same_weights(fresh, model)
    assert not list(path.parent.glob("*.tmp"))


# --------------------------------------------------------------------------- bad checkpoints


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "kind", ["garbage", "truncated", "empty", "no_marker", "plain_state_dict", "version", "exploit"]
)
def test_not_a_checkpoint_is_a_clear_error(toy_data, tmp_path, kind):
    _run(toy_data, tmp_path, epochs=1)
    path = tmp_path / "ckpt" / CHECKPOINT_NAME
    good = path.read_bytes()
    marker = tmp_path / "pwned"
    if kind == "garbage":
        path.write_bytes(b"\x89PNG not a checkpoint" * 50)
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no_marker":
        torch.save({"epoch": 1, "model": {}}, path)
    elif kind == "plain_state_dict":
        torch.save(mlp().state_dict(), path)
    elif kind == "version":
        state = torch.load(path, weights_only=True)
        torch.save({**state, "version": 99}, path)
    elif kind == "exploit":
        torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "x": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not a deepframe checkpoint|version"):
        _run(toy_data, tmp_path, epochs=2)  # resume refuses it too
    assert not marker.exists()


def test_load_model_needs_the_architecture(toy_data, tmp_path):
    _run(toy_data, tmp_path, epochs=1)
    with pytest.raises(ValueError, match="architecture"):
        load_model(tmp_path / "ckpt" / CHECKPOINT_NAME)


# --------------------------------------------------------------------------- distributed

_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    from deepframe.data import synthetic
    from deepframe.train import train


    def build():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
        syn = synthetic(
            n_samples=160, input_shape=(1, 4, 4), widths=(24, 10), atom_sparsity=(3, 2), seed=0
        )
        return model, syn.train, syn.val


    def run(out):
        torch.set_num_threads(1)
        model, train_set, val_set = build()
        history = train(
            model, train_set, val_set, epochs=2, batch_size=32, optimizer="sgd", lr=0.1,
            momentum=0.9, weight_decay=5e-4, schedule="cosine", seed=3, fgsm_eps=0.05,
            progress=False, device="cpu", checkpoint_dir=os.path.join(out, "ckpt"),
            log_path=os.path.join(out, "log.jsonl"),
        )
        return model, history


    if __name__ == "__main__":
        out = sys.argv[1]
        model, history = run(out)
        rank = int(os.environ.get("RANK", "0"))
        torch.save(model.state_dict(), os.path.join(out, f"weights_rank{rank}.pt"))
        with open(os.path.join(out, f"history_rank{rank}.json"), "w") as f:
            json.dump(history, f)
    """
)


@pytest.mark.distributed
def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT)
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir()
    single_out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # rendezvous on a free local port
        "--nproc-per-node=2",
        str(script),
        str(ddp_out),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    namespace: dict = {"__name__": "ddp_reference"}
    exec(compile(_DDP_SCRIPT, str(script), "exec"), namespace)
    single, single_history = namespace["run"](str(single_out))

    rank0 = torch.load(ddp_out / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(ddp_out / "weights_rank1.pt", weights_only=True)
    for key, value in single.state_dict().items():
        # DDP keeps the replicas identical: it broadcasts rank 0's initial weights
        # and every rank applies the same all-reduced gradient
        assert torch.equal(rank0[key], rank1[key]), key
        # Two ranks of B/2 samples each average their mean gradients: in exact
        # arithmetic (no batch norm, mean loss per rank) that is the mean over the
        # global batch of B (the last, partial batch too: 2 samples -> 1 + 1). In
        # float32 only the summation order differs, a relative change of ~1e-7 per
        # gradient entry; 10 SGD steps (lr 0.1, momentum 0.9) on this small MLP
        # amplify it little: we observe ~3e-8, a few ulps of weights of size
        # O(0.1). 1e-5 absolute leaves room for other BLAS kernels and thread
        # counts, yet is far below a real error (summing instead of averaging the
        # two ranks' gradients, i.e. doubling lr, moves the weights by ~0.1).
        torch.testing.assert_close(rank0[key], value, rtol=0, atol=1e-5)

    # only rank 0 logged: one line per epoch; both ranks saw the summed metrics
    log = [json.loads(line) for line in (ddp_out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    ddp_history = json.loads((ddp_out / "history_rank1.json").read_text())
    for ddp_record, record in zip(ddp_history, single_history, strict=True):
        for key in ("train_acc", "val_acc", "val_fgsm_acc"):
            assert ddp_record[key] == pytest.approx(record[key], abs=1 / 32), key
        assert ddp_record["train_loss"] == pytest.approx(record["train_loss"], rel=1e-4)
    assert load_checkpoint(ddp_out / "ckpt" / CHECKPOINT_NAME)["epoch"] == 2
