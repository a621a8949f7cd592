"""The ``deepframe`` command line, run in-process and as ``python -m deepframe``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deepframe.cli import main


def test_describe_prints_shapes_and_the_block_map(capsys):
    assert main(["describe", "resnet:blocks_per_stage=1"]) == 0
    out = capsys.readouterr().out
    assert "(64, 8, 8)" in out
    assert "113664 rows x 73728 atoms" in out
    assert "stem->s1b1b |    -I     0     B" in out


def test_describe_reads_node_link_json(tmp_path, capsys):
    import deepframe as df

    path = tmp_path / "net.json"
    df.save(df.chain((1, 8, 8), [4, 6], merge="input"), path)
    assert main(["describe", str(path)]) == 0
    assert "merge=input" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arch, message",
    [
        ("missing.json", "no architecture file"),
        ("wideresnet", "unknown architecture"),
        ("resnet:blocks_per_stage=0", "blocks_per_stage"),
        ("chain:input_shape=1x8x8,widths=4,strides=1x2", "1 widths but 2 strides"),
    ],
)
def test_bad_architectures_exit_with_a_clear_message(arch, message, capsys):
    assert main(["describe", arch]) == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_works():
    done = subprocess.run(
        [sys.executable, "-m", "deepframe", "describe", "chain"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "block map" in done.stdout


def _train_digits(arch, out, method, *extra):
    """``deepframe train`` for one quiet epoch on digits."""
    args = ["train", arch, "--dataset", "digits", "--method", method, "--epochs", "1"]
    return main([*args, *extra, "--quiet", "--out", str(out)])


def test_train_then_attack_a_digits_solver(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train_digits("chain:widths=8x16,strides=1x2", out, "deep", "--iterations", "1") == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 1 and 0 <= log[0]["val_acc"] <= 1
    assert (
        main(
            [
                "attack",
                str(out / "checkpoint.pt"),
                "--attack",
                "pgd",
                "--steps",
                "2",
                "--eps",
                "0,8/255",
                "--limit",
                "64",
            ]
        )
        == 0
    )
    result = json.loads((out / "attack_pgd.json").read_text())
    assert result["samples"] == 64
    accs = list(result["accuracy"].values())
    assert accs[0] == pytest.approx(result["clean"])  # eps = 0 is the clean accuracy
    assert accs[1] <= accs[0]


def test_metrics_json_matches_the_library_and_reads_checkpoints(tmp_path, capsys):
    import torch

    import deepframe as df

    spec = "chain:input_shape=1x8x8,widths=4x6"
    assert main(["metrics", spec, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    D = df.dictionary(df.chain((1, 8, 8), [4, 6]), seed=0)
    assert report["atoms"] == D.shape[1] and report["rows"] == D.shape[0]
    assert report["coherence"] == pytest.approx(df.mutual_coherence(D), rel=1e-12)
    # --input-shape re-infers every shape
    assert main(["metrics", spec, "--input-shape", "1x6x6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["atoms"] == (4 + 6) * 36
    # --checkpoint measures the trained weights, not fresh random ones
    out = tmp_path / "run"
    assert _train_digits(spec, out, "feedforward") == 0
    capsys.readouterr()
    assert main(["metrics", spec, "--checkpoint", str(out / "checkpoint.pt"), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    net = df.load_model(out / "checkpoint.pt")
    D = net.dictionary()
    D64 = df.GlobalDictionary(D.graph, {k: w.double() for k, w in D.weights.items()})
    assert D.to(torch.float64).dtype == torch.float64
    assert trained["coherence"] == pytest.approx(df.mutual_coherence(D64), rel=1e-9)
    assert trained["coherence"] != pytest.approx(report["coherence"], rel=1e-6)
    assert torch.isfinite(torch.tensor(trained["frame_potential"]))
