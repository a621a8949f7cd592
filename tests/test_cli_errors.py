"""Hostile input on the command line: one table, one row per bad input.

Every row runs ``deepframe ...`` in-process and checks what a user sees: the
exit status, one error line ``deepframe COMMAND: error: ...`` that names the
culprit, no traceback, no torch advice to load with ``weights_only=False``,
and every input file unchanged (bytes and modification time) with nothing new
written. A few rows also run as a real ``python -m deepframe`` process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from deepframe.cli import main
from deepframe.train import CHECKPOINT_FORMAT

ARCH = "chain:widths=4x6"  # the trained fixture's architecture (feed-forward, digits)


class _Exploit:
    """Unpickling this would run a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _variant(source: Path, target: Path, edit) -> None:
    state = torch.load(source, weights_only=True)
    edit(state)
    torch.save(state, target)


def _first_weight(state: dict) -> torch.Tensor:
    return next(t for k, t in state["model"].items() if k.startswith("weights."))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of inputs: a trained run, damaged and hostile checkpoints, bad JSON files."""
    root = tmp_path_factory.mktemp("inputs")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        rc = main(["train", ARCH, "--method", "feedforward", "--epochs", "1", "--quiet"]
                  + ["--out", "run", "--batch-size", "256"])  # fmt: skip
    finally:
        os.chdir(cwd)
    assert rc == 0
    good = root / "run" / "checkpoint.pt"
    (root / "run" / "attack_fgsm.json").write_text('{"earlier": "result"}\n')

    _variant(good, root / "dtype.pt", lambda s: s["metadata"]["compile"].update(dtype="float128"))
    _variant(good, root / "method.pt", lambda s: s["metadata"]["compile"].update(method="magic"))
    _variant(good, root / "alpha.pt", lambda s: s["metadata"]["compile"].update(alpha=7.0))
    _variant(good, root / "option.pt", lambda s: s["metadata"]["compile"].update(warp=1))
    _variant(good, root / "dataset.pt", lambda s: s["metadata"].update(dataset="imagenet"))
    _variant(good, root / "graph.pt", lambda s: s["metadata"].update(graph="{not json"))
    _variant(good, root / "nometa.pt", lambda s: s.update(metadata=None))
    _variant(good, root / "epoch.pt", lambda s: s.update(epoch="three"))
    _variant(good, root / "version.pt", lambda s: s.update(version=99))
    _variant(good, root / "nan.pt", lambda s: _first_weight(s).fill_(float("nan")))
    _variant(good, root / "inf.pt", lambda s: _first_weight(s).view(-1)[0].fill_(float("inf")))
    _variant(
        good,
        root / "shape.pt",
        lambda s: s["metadata"].update(
            graph=s["metadata"]["graph"].replace('"channels": 6', '"channels": 7')
        ),
    )
    torch.save({"w": torch.ones(3)}, root / "foreign.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "x": _Exploit(root / "pwned")},
               root / "exploit.pt")  # fmt: skip
    torch.save({"x": _Exploit(root / "pwned")}, root / "legacy.pt",
               _use_new_zipfile_serialization=False)  # fmt: skip
    raw = good.read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(b"\x89PNG not a checkpoint" * 20)
    (root / "text.pt").write_text('{"accuracy": 0.9}\n')
    with zipfile.ZipFile(root / "zip.pt", "w") as z:
        z.writestr("notes.txt", "hello")
    badrun = root / "badrun"
    badrun.mkdir()
    (badrun / "checkpoint.pt").write_bytes(b"garbage")

    import deepframe as df

    df.save(df.chain((1, 8, 8), [4, 6]), root / "net.json")
    (root / "bad_utf8.json").write_bytes(b'{"nodes": "\xff\xfe"}')
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "notjson.json").write_text("{nodes: [}")
    (root / "list.json").write_text("[1, 2, 3]")
    (root / "malformed.json").write_text('{"nodes": [1, 2], "edges": []}')
    (root / "folder").mkdir()
    (root / "resnet").write_text("a file that shadows the builder\n")
    (root / "existing.json").write_text('{"keep": true}\n')
    (root / "afile").write_text("a plain file\n")
    # outputs that are not regular files, and folders that are not runs
    os.mkfifo(root / "fifo")
    _socket(root / "sock")
    _char_device(root / "chardev")
    (root / "dangling").symlink_to(root / "nowhere.json")
    (root / "link.json").symlink_to(root / "existing.json")
    (root / "notarun").mkdir()
    (root / "notarun" / "notes.txt").write_text("my notes\n")
    (root / "trainfifo").mkdir()
    os.mkfifo(root / "trainfifo" / "log.jsonl")
    model = root / "reproduction" / "models" / "ff-0"  # a model folder of `reproduce`
    model.mkdir(parents=True)
    shutil.copy(good, model / "model.pt")
    (model / "result.json").write_text('{"clean_acc": 0.9}\n')
    (root / "checkpoint-copy.pt").write_bytes(raw)
    return root


def _socket(path: Path) -> None:
    """A Unix socket file at ``path`` (left bound; the file stays after closing)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def _char_device(path: Path) -> None:
    """A character device (``/dev/null``'s numbers) at ``path`` where allowed (root), else a
    FIFO: either must be refused as an output."""
    import stat

    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, AttributeError, OSError):
        os.mkfifo(path)


def _snapshot(root: Path) -> dict:
    """Every entry under ``root``: regular files by hash and mtime, others by kind and inode."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(root))
        if path.is_symlink():
            out[name] = ("link", os.readlink(path))
        elif path.is_file():
            out[name] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns)
        elif path.is_dir():
            out[name] = "folder"
        else:  # FIFO, socket, device: never opened (a FIFO would block)
            out[name] = ("special", st.st_mode, st.st_ino, st.st_rdev)
    return out


CUDA = torch.cuda.is_available()

# (id, argv, exit status, fragment the error line must contain)
CASES = [
    # ---- spec strings and architecture files
    ("densenet zero layers", ["describe", "densenet:layers_per_stage=0"], 2, "layers_per_stage"),
    ("unknown merge", ["describe", "chain:merge=sideways"], 2, "merge"),
    ("dense as a word", ["describe", "chain:dense=yes"], 2, "dense"),
    ("float blocks", ["describe", "resnet:blocks_per_stage=1.5"], 2, "blocks_per_stage"),
    ("unknown option", ["describe", "resnet:depth=20"], 2, "depth"),
    ("option twice", ["describe", "chain:widths=4,widths=8"], 2, "twice"),
    ("option without value", ["describe", "resnet:widths="], 2, "widths"),
    ("zero width", ["describe", "chain:widths=0"], 2, "widths"),
    ("float width", ["metrics", "chain:widths=8.5"], 2, "widths"),
    ("zero input size", ["describe", "chain:input_shape=0x8x8"], 2, "input_shape"),
    ("word kernel", ["train", "chain:kernel_size=abc", "--out", "new"], 2, "kernel_size"),
    ("unknown builder", ["describe", "wideresnet"], 2, "wideresnet"),
    ("spec is a folder", ["describe", "folder"], 2, "folder"),
    ("file shadows a builder", ["describe", "resnet"], 2, "./resnet"),
    ("json not utf-8", ["describe", "bad_utf8.json"], 2, "UTF-8"),
    ("json nested deeply", ["describe", "deep.json"], 2, "nested"),
    ("not json", ["describe", "notjson.json"], 2, "not valid JSON"),
    ("json not a graph", ["metrics", "list.json"], 2, "node-link"),
    ("json malformed nodes", ["describe", "malformed.json"], 2, "malformed"),
    ("json missing", ["describe", "missing.json"], 2, "missing.json"),
    # ---- requests too big for the machine: refused with the estimate
    ("chain 100000 wide", ["describe", "chain:widths=100000x100000"], 2, "1.64 TiB"),
    ("dense 1e8 features", ["describe", "chain:input_shape=64,widths=100000000"], 2, "budget"),
    ("input 3x4096x4096", ["metrics", "chain:input_shape=3x4096x4096"], 2, "structured geometry"),
    (
        "dense gram too big",
        ["metrics", "chain:input_shape=1x64x64", "--method", "dense"],
        2,
        "method='dense'",
    ),  # fmt: skip
    ("compile too big", ["train", "chain:widths=100000x100000", "--out", "new"], 2, "pursuit"),
    ("tiny budget", ["describe", "chain", "--memory-budget", "1k"], 2, "budget of 1 KiB"),
    ("budget not a size", ["describe", "chain", "--memory-budget", "lots"], 2, "--memory-budget"),
    # ---- training settings, checked up front
    ("lr nan", ["train", ARCH, "--lr", "nan"], 2, "--lr"),
    ("lr inf", ["train", ARCH, "--lr", "inf"], 2, "--lr"),
    ("lr zero", ["train", ARCH, "--lr", "0"], 2, "--lr"),
    ("momentum nan", ["train", ARCH, "--momentum", "nan"], 2, "--momentum"),
    ("weight decay inf", ["train", ARCH, "--weight-decay", "inf"], 2, "--weight-decay"),
    ("weight decay negative", ["train", ARCH, "--weight-decay", "-1"], 2, "--weight-decay"),
    ("zero epochs", ["train", ARCH, "--epochs", "0"], 2, "--epochs"),
    ("zero batch", ["train", ARCH, "--batch-size", "0"], 2, "--batch-size"),
    ("alpha too big", ["train", ARCH, "--alpha", "1.5"], 2, "--alpha"),
    ("alpha nan", ["train", ARCH, "--alpha", "nan"], 2, "--alpha"),
    ("beta zero", ["train", ARCH, "--beta", "0"], 2, "--beta"),
    ("negative seed", ["train", ARCH, "--seed", "-1"], 2, "--seed"),
    ("eps word", ["train", ARCH, "--fgsm-eps", "abc"], 2, "--fgsm-eps"),
    ("eps over zero", ["train", ARCH, "--fgsm-eps", "1/0"], 2, "--fgsm-eps"),
    ("adversarial eps negative", ["train", ARCH, "--adversarial-eps=-0.1"], 2, "--adversarial"),
    ("negative iterations", ["train", ARCH, "--iterations", "-1"], 2, "--iterations"),
    (
        "iterations with feedforward",
        ["train", ARCH, "--method", "feedforward", "--iterations", "3"],
        2,
        "--iterations 3",
    ),  # fmt: skip
    ("data dir without cifar", ["train", ARCH, "--data-dir", "folder"], 2, "--data-dir"),
    ("augment without cifar", ["train", ARCH, "--augment"], 2, "--augment"),
    ("unknown schedule", ["train", ARCH, "--schedule", ""], 2, "--schedule"),
    ("train device word", ["train", ARCH, "--device", "foo", "--out", "new"], 2, "'foo'"),
    ("metrics device word", ["metrics", "chain", "--device", "gpu0"], 2, "'gpu0'"),
    (
        "attack device word",
        ["attack", "run/checkpoint.pt", "--device", "foo", "--out", "a.json"],
        2,
        "'foo'",
    ),  # fmt: skip
    pytest.param(
        "train cuda missing",
        ["train", ARCH, "--device", "cuda", "--out", "new"],
        2,
        "'cuda'",
        marks=pytest.mark.skipif(CUDA, reason="CUDA is present"),
    ),
    (
        "attack cuda index",
        ["attack", "run/checkpoint.pt", "--device", "cuda:7", "--out", "a.json"],
        2,
        "'cuda:7'",
    ),  # fmt: skip
    # ---- output paths, refused before any work
    (
        "attack out is the checkpoint",
        ["attack", "run/checkpoint.pt", "--out", "run/checkpoint.pt", "--force"],
        2,
        "is the input",
    ),  # fmt: skip
    ("attack out is a folder", ["attack", "run/checkpoint.pt", "--out", "folder"], 2, "folder"),
    ("attack out exists", ["attack", "run/checkpoint.pt", "--out", "existing.json"], 2, "--force"),
    ("attack default out exists", ["attack", "run/checkpoint.pt"], 2, "attack_fgsm.json exists"),
    (
        "attack out under a file",
        ["attack", "run/checkpoint.pt", "--out", "afile/x.json"],
        2,
        "afile is a file",
    ),  # fmt: skip
    ("train out is a file", ["train", ARCH, "--out", "afile"], 2, "afile is a file"),
    # ---- outputs that are not regular files: refused even with --force
    ("attack out fifo", ["attack", "run/checkpoint.pt", "--out", "fifo", "--force"], 2, "FIFO"),
    (
        "attack out socket",
        ["attack", "run/checkpoint.pt", "--out", "sock", "--force"],
        2,
        "sock is a socket",
    ),  # fmt: skip
    (
        "attack out device",
        ["attack", "run/checkpoint.pt", "--out", "chardev", "--force"],
        2,
        "not a regular file",
    ),  # fmt: skip
    (
        "attack out broken link",
        ["attack", "run/checkpoint.pt", "--out", "dangling", "--force"],
        2,
        "broken symbolic link",
    ),  # fmt: skip
    (
        "describe out fifo",
        ["describe", "chain", "--out", "fifo", "--format", "dot", "--force"],
        2,
        "FIFO",
    ),  # fmt: skip
    (
        "describe out device",
        ["describe", "chain", "--out", "chardev", "--format", "json", "--force"],
        2,
        "chardev is a",
    ),  # fmt: skip
    ("train out fifo", ["train", ARCH, "--out", "fifo"], 2, "fifo is a FIFO"),
    ("train log is a fifo", ["train", ARCH, "--out", "trainfifo"], 2, "log.jsonl is a FIFO"),
    ("reproduce out socket", ["reproduce", "--profile", "test", "--out", "sock"], 2, "socket"),
    # ---- folders that are not runs
    ("train out root", ["train", ARCH, "--out", "/"], 2, "--out / is a folder that holds"),
    ("train out other files", ["train", ARCH, "--out", "notarun"], 2, "notes.txt"),
    (
        "train out a reproduction",
        ["train", ARCH, "--out", "reproduction"],
        2,
        "is not a run of deepframe train",
    ),
    (
        "reproduce out a train run",
        ["reproduce", "--profile", "test", "--out", "run"],
        2,
        "is not a reproduction",
    ),  # fmt: skip
    (
        "reproduce out root",
        ["reproduce", "--profile", "test", "--out", "/"],
        2,
        "is not a reproduction",
    ),
    (
        "merge out other files",
        ["reproduce", "--profile", "test", "--merge", "reproduction", "--out", "notarun"],
        2,
        "notes.txt",
    ),  # fmt: skip
    # ---- a run's own files and checkpoints: refused even with --force
    (
        "attack out the log",
        ["attack", "run/checkpoint.pt", "--out", "run/log.jsonl", "--force"],
        2,
        "the training log of the run",
    ),  # fmt: skip
    (
        "attack out a model's result",
        ["attack", "run/checkpoint.pt", "--out", "reproduction/models/ff-0/result.json", "--force"],
        2,
        "the results of the run",
    ),  # fmt: skip
    (
        "attack out a model's weights",
        ["attack", "reproduction/models/ff-0/model.pt", "--out", "run/checkpoint.pt", "--force"],
        2,
        "the checkpoint of the run",
    ),  # fmt: skip
    (
        "attack out another checkpoint",
        ["attack", "run/checkpoint.pt", "--out", "checkpoint-copy.pt", "--force"],
        2,
        "a PyTorch file",
    ),  # fmt: skip
    (
        "describe out a run's results",
        ["describe", "chain", "--out", "reproduction/models/ff-0/result.json", "--force"],
        2,
        "the results of the run",
    ),  # fmt: skip
    (
        "describe out a checkpoint as json",
        ["describe", "chain", "--out", "run/checkpoint.pt", "--format", "json", "--force"],
        2,
        "the checkpoint of the run",
    ),  # fmt: skip
    (
        "describe out is the input",
        ["describe", "net.json", "--out", "net.json", "--force"],
        2,
        "is the input",
    ),  # fmt: skip
    ("describe out exists", ["describe", "chain", "--out", "existing.json"], 2, "--force"),
    ("describe unknown suffix", ["describe", "chain", "--out", "graph.txt"], 2, "suffix"),
    ("describe format without out", ["describe", "chain", "--format", "dot"], 2, "--out"),
    (
        "reproduce out is a file",
        ["reproduce", "--profile", "test", "--out", "afile"],
        2,
        "afile is a file",
    ),  # fmt: skip
    ("reproduce bad seeds", ["reproduce", "--seeds", "0,x"], 2, "--seeds"),
    # ---- inputs that are not files: reading them would block or never end
    ("arch is a fifo", ["describe", "./fifo"], 2, "ARCH ./fifo is a FIFO"),
    ("arch is a device", ["metrics", "./chardev"], 2, "ARCH ./chardev is a"),
    ("checkpoint is a fifo", ["attack", "fifo"], 2, "CHECKPOINT fifo is a FIFO"),
    ("checkpoint is a socket", ["metrics", "--checkpoint", "sock"], 2, "--checkpoint sock is a"),
    (
        "weights are a fifo",
        ["metrics", "--from-torch", "m:f", "--weights", "fifo", "--input-shape", "1x8x8"],
        2,
        "--weights fifo is a FIFO",
    ),
    # ---- contradictions between options, the data and the checkpoint
    (
        "train input shape against the data",
        ["train", "chain:input_shape=64", "--out", "new"],
        2,
        "input_shape=64",
    ),
    (
        "attack another data set",
        ["attack", "run/checkpoint.pt", "--dataset", "synthetic", "--out", "new.json"],
        2,
        "trained on digits",
    ),
    (
        "reproduce only matches nothing",
        ["reproduce", "--profile", "test", "--only", "ff-*,zzz", "--out", "new"],
        2,
        "--only 'zzz' matches none",
    ),
    # ---- resume and rerun
    ("resume other method", ["train", ARCH, "--out", "run"], 2, "iterations: 0 -> 3"),
    (
        "resume other architecture",
        [
            "train",
            "chain:widths=4x8",
            "--method",
            "feedforward",
            "--batch-size",
            "256",
            "--epochs",
            "1",
            "--out",
            "run",
        ],
        2,
        "channels 6 -> 8",
    ),  # fmt: skip
    (
        "resume other lr",
        [
            "train",
            ARCH,
            "--method",
            "feedforward",
            "--batch-size",
            "256",
            "--epochs",
            "1",
            "--lr",
            "0.5",
            "--out",
            "run",
        ],
        2,
        "lr: 0.01 -> 0.5",
    ),  # fmt: skip
    ("resume a broken checkpoint", ["train", ARCH, "--out", "badrun"], 2, "--restart"),
    # ---- checkpoints
    ("checkpoint missing", ["attack", "missing.pt"], 2, "missing.pt"),
    ("checkpoint is a folder", ["attack", "run"], 2, "checkpoint.pt"),
    ("checkpoint empty", ["attack", "empty.pt"], 2, "empty"),
    ("checkpoint garbage", ["attack", "garbage.pt"], 2, "not a PyTorch file"),
    ("checkpoint text", ["attack", "text.pt"], 2, "text file"),
    ("checkpoint truncated", ["attack", "truncated.pt"], 2, "truncated"),
    ("checkpoint other zip", ["attack", "zip.pt"], 2, "zip archive"),
    ("checkpoint foreign", ["attack", "foreign.pt"], 2, "deepframe-checkpoint"),
    ("checkpoint exploit", ["attack", "exploit.pt"], 2, "could run code"),
    ("checkpoint legacy exploit", ["attack", "legacy.pt"], 2, "could run code"),
    ("checkpoint version", ["attack", "version.pt"], 2, "version 99"),
    ("checkpoint epoch", ["attack", "epoch.pt"], 2, "'epoch'"),
    ("stored dtype", ["attack", "dtype.pt"], 2, "float128"),
    ("stored method", ["attack", "method.pt"], 2, "magic"),
    ("stored alpha", ["attack", "alpha.pt"], 2, "alpha"),
    ("stored option", ["attack", "option.pt"], 2, "warp"),
    ("stored dataset", ["attack", "dataset.pt"], 2, "imagenet"),
    ("stored graph", ["attack", "graph.pt"], 2, "stored architecture"),
    ("no stored architecture", ["metrics", "--checkpoint", "nometa.pt"], 2, "architecture"),
    ("weights do not fit", ["attack", "shape.pt"], 2, "do not fit"),
    ("nan weights attacked", ["attack", "nan.pt"], 2, "not finite"),
    ("inf weights measured", ["metrics", "--checkpoint", "inf.pt"], 2, "not finite"),
    (
        "metrics other architecture",
        ["metrics", "chain:widths=9x9", "--checkpoint", "run/checkpoint.pt"],
        2,
        "another architecture",
    ),  # fmt: skip
    # ---- attack options
    ("limit zero", ["attack", "run/checkpoint.pt", "--limit", "0"], 2, "--limit"),
    ("limit negative", ["attack", "run/checkpoint.pt", "--limit", "-3"], 2, "--limit"),
    ("steps zero", ["attack", "run/checkpoint.pt", "--steps", "0"], 2, "--steps"),
    ("steps with fgsm", ["attack", "run/checkpoint.pt", "--steps", "5"], 2, "--steps 5"),
    (
        "steps with fgsm named",
        ["attack", "run/checkpoint.pt", "--attack", "fgsm", "--steps", "1", "--out", "new.json"],
        2,
        "--attack pgd",
    ),  # fmt: skip
    ("eps word", ["attack", "run/checkpoint.pt", "--eps", "8/255,big"], 2, "--eps"),
    ("eps empty", ["attack", "run/checkpoint.pt", "--eps", ""], 2, "--eps"),
    ("unknown option", ["attack", "run/checkpoint.pt", "--epsilon", "0.1"], 2, "--epsilon"),
]


def _param(case):
    if hasattr(case, "marks"):  # already a pytest.param
        return pytest.param(*case.values, id=case.values[0], marks=case.marks)
    return pytest.param(*case, id=case[0])


@pytest.mark.parametrize(("name", "argv", "code", "fragment"), [_param(c) for c in CASES])
def test_bad_input_is_one_clear_line(inputs, monkeypatch, capsys, name, argv, code, fragment):
    monkeypatch.chdir(inputs)
    monkeypatch.delenv("DEEPFRAME_DEBUG", raising=False)
    before = _snapshot(inputs)
    assert main(list(argv)) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert errors[0].startswith(f"deepframe {argv[0]}: error: "), err
    assert fragment in errors[0], err
    assert "Traceback" not in err and "weights_only" not in err
    assert _snapshot(inputs) == before  # nothing changed, nothing written
    assert not (inputs / "pwned").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["attack", "exploit.pt"], "could run code"),
        (["train", ARCH, "--lr", "nan"], "--lr"),
    ],
)
def test_a_real_process_prints_one_line(inputs, argv, fragment):
    """The same through ``python -m deepframe``: exit status 2, one stderr line."""
    done = subprocess.run(
        [sys.executable, "-m", "deepframe", *argv],
        capture_output=True,
        text=True,
        cwd=inputs,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"deepframe {argv[0]}: error: ") and fragment in lines[-1]
    assert "Traceback" not in done.stderr
    assert not (inputs / "pwned").exists()


def test_rerunning_a_finished_run_says_it_is_complete(inputs, monkeypatch, capsys):
    monkeypatch.chdir(inputs)
    before = _snapshot(inputs)
    argv = ["train", ARCH, "--method", "feedforward", "--epochs", "1", "--batch-size", "256"]
    assert main([*argv, "--out", "run", "--quiet", "--json"]) == 0
    captured = capsys.readouterr()
    assert "already holds a complete run (1/1 epochs)" in captured.err
    import json

    record = json.loads(captured.out)
    assert record["already_complete"] is True and record["epoch"] == 1
    assert _snapshot(inputs) == before  # neither the checkpoint nor the log was rewritten


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import deepframe.cli.describe as cli

    def broken(args):
        raise RuntimeError("boom\nsecond line of a long message")

    monkeypatch.setattr(cli, "describe", broken)
    monkeypatch.delenv("DEEPFRAME_DEBUG", raising=False)
    assert main(["describe", "chain"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "deepframe describe: error: internal error: RuntimeError: boom (rerun with --debug for "
        "the traceback, and please report it)"
    )
    with pytest.raises(RuntimeError, match="boom"):
        main(["describe", "chain", "--debug"])
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "describe", "chain"])
    monkeypatch.setenv("DEEPFRAME_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["describe", "chain"])


def test_interrupt_is_one_line(monkeypatch, capsys):
    import deepframe.cli.train as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train_command", interrupted)
    monkeypatch.delenv("DEEPFRAME_DEBUG", raising=False)
    assert main(["train", ARCH]) == 130
    assert capsys.readouterr().err.strip() == (
        "deepframe train: interrupted (rerun the same command to resume)"
    )


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder_is_refused(inputs, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(inputs / "run" / "checkpoint.pt", locked / "checkpoint.pt")
    locked.chmod(0o500)
    try:
        assert main(["attack", str(locked / "checkpoint.pt")]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
