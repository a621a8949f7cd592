"""Hostile runs of the command line: two writers, signals, a full disk, a diverging run.

The concurrency and signal cases run real ``python -m deepframe`` processes;
what a user sees is checked as in tests/test_cli_errors.py: the exit status,
one last line ``deepframe COMMAND: error: ...`` (or ``interrupted``) that
names the culprit, no traceback, and the inputs unchanged. No assertion is
about time: a background process is waited for by polling its files, with a
generous limit that only guards against a hang.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepframe._io import LOCK_NAME, folder_lock, folder_lock_holder
from deepframe.cli import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and flock are POSIX")

ARCH = "chain:widths=4x6"
#: A feed-forward digits run of many quick epochs: still running when signalled.
LONG = ["train", ARCH, "--method", "feedforward", "--batch-size", "256", "--quiet"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
ENV.pop("DEEPFRAME_DEBUG", None)
PATIENCE = 300  # seconds before a poll gives up: a hang, not a timing check


def _start(argv, cwd, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deepframe", *argv],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _run(argv, cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepframe", *argv],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        **kwargs,
    )


def _wait_for(predicate, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended early: {process.communicate()}")
        time.sleep(0.05)
    raise AssertionError("gave up waiting")


def _epochs(log: Path) -> list[int]:
    if not log.is_file():
        return []
    lines = log.read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.endswith("}")]


def _checkpoint_epoch(run: Path) -> int:
    """The epoch of ``run/checkpoint.pt`` (0 while there is none); it is replaced atomically."""
    import torch

    if not (run / "checkpoint.pt").is_file():
        return 0
    return torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]


def _error_line(stderr: str, command: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"deepframe {command}: error: "), stderr
    assert sum(": error: " in line for line in lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[-1]


def _hashes(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- two writers


def test_a_second_writer_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path):
    first = _start([*LONG, "--epochs", "100000", "--out", "R"], tmp_path)
    try:
        _wait_for(lambda: _checkpoint_epoch(tmp_path / "R") >= 1, first)
        holder = folder_lock_holder(tmp_path / "R")
        assert holder is not None and holder["pid"] == first.pid
        assert holder["command"].startswith("deepframe train chain:widths=4x6")
        # the case: another run with other settings and --restart into R
        second = _run([*LONG, "--epochs", "3", "--lr", "0.001", "--restart", "--out", "R"],
                      tmp_path)  # fmt: skip
        assert second.returncode == 2
        line = _error_line(second.stderr, "train")
        assert f"--out R is in use by pid {first.pid} (deepframe train" in line
        assert "--epochs 100000" in line and "use another --out" in line
        # an attack writing its result into R, and a reproduction into R, are writers too
        attack = _run(["attack", "R/checkpoint.pt", "--limit", "8"], tmp_path)
        assert attack.returncode == 2
        assert f"in use by pid {first.pid}" in _error_line(attack.stderr, "attack")
        # an attack of R's checkpoint written elsewhere reads a checkpoint being replaced
        elsewhere = _run(["attack", "R/checkpoint.pt", "--out", "a.json"], tmp_path)
        assert elsewhere.returncode == 2
        assert "is being written by pid" in _error_line(elsewhere.stderr, "attack")
        assert not (tmp_path / "a.json").exists()
    finally:
        first.kill()  # SIGKILL: no cleanup runs, the lock file keeps its record
        first.communicate()
    epochs = _epochs(tmp_path / "R" / "log.jsonl")
    assert epochs == list(range(1, len(epochs) + 1))  # one writer: every epoch once, in order
    assert json.loads((tmp_path / "R" / LOCK_NAME).read_text())["pid"] == first.pid
    assert folder_lock_holder(tmp_path / "R") is None  # the kernel released it
    third = _run([*LONG, "--epochs", "1", "--restart", "--out", "R"], tmp_path)
    assert third.returncode == 0, third.stderr
    assert f"took over the lock of R left by pid {first.pid}" in third.stderr
    assert not (tmp_path / "R" / LOCK_NAME).exists()  # released on the way out
    assert _epochs(tmp_path / "R" / "log.jsonl") == [1]


def test_the_lock_is_released_on_every_exit_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # refused after locking (another run's settings), failing inside, succeeding
    assert main([*LONG, "--epochs", "1", "--out", "R"]) == 0
    assert main([*LONG, "--epochs", "1", "--lr", "0.5", "--out", "R"]) == 2
    assert "lr: 0.01 -> 0.5" in capsys.readouterr().err
    assert not (tmp_path / "R" / LOCK_NAME).exists()
    import deepframe.cli.train as cli

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_report_train", broken)
    assert main([*LONG, "--epochs", "1", "--out", "R", "--json"]) == 1
    assert not (tmp_path / "R" / LOCK_NAME).exists()
    # a folder created for the lock of a command that then fails is removed again
    assert main(["train", "chain:kernel_size=abc", "--out", "new/deeper"]) == 2
    assert not (tmp_path / "new").exists()


def test_reproduce_and_merge_are_refused_while_a_folder_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "A" / "models").mkdir(parents=True)
    with folder_lock(tmp_path / "A", "deepframe reproduce --out A"):
        assert main(["reproduce", "--profile", "test", "--out", "A"]) == 2
        line = _error_line(capsys.readouterr().err, "reproduce")
        assert f"--out A is in use by pid {os.getpid()} (deepframe reproduce --out A" in line
        assert main(["reproduce", "--profile", "test", "--merge", "A", "--out", "B"]) == 2
        line = _error_line(capsys.readouterr().err, "reproduce")
        assert f"--merge A is being written by pid {os.getpid()}" in line
        # a writer into a folder inside A (a model of the reproduction) is refused too
        assert main([*LONG, "--epochs", "1", "--out", "A/models/x/train"]) == 2
        line = _error_line(capsys.readouterr().err, "train")
        assert f"lies inside {tmp_path / 'A'}, which is in use by pid {os.getpid()}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A"]  # nothing written
    assert [p.name for p in (tmp_path / "A").iterdir()] == ["models"]


def test_folder_lock_refuses_a_second_holder_in_the_same_process(tmp_path):
    from deepframe._io import FolderInUseError

    with folder_lock(tmp_path / "R", "first") as lock:
        assert lock.locked and lock.taken_over is None
        assert folder_lock_holder(tmp_path / "R")["command"] == "first"
        with pytest.raises(FolderInUseError, match=rf"in use by pid {os.getpid()} \(first"):
            with folder_lock(tmp_path / "R", "second"):
                pass
    assert folder_lock_holder(tmp_path / "R") is None
    assert not (tmp_path / "R").exists()  # made for the lock, removed with it
    # a record left behind (its writer was killed) is taken over and reported
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / LOCK_NAME).write_text(json.dumps({"pid": 99999999, "command": "old"}))
    with folder_lock(tmp_path / "R", "third") as lock:
        assert lock.taken_over == {"pid": 99999999, "command": "old"}


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_with_one_interrupted_line_and_the_run_resumes(tmp_path, stop):
    argv = [*LONG, "--epochs", "100000", "--out", "R"]
    run = _start(argv, tmp_path)
    log = tmp_path / "R" / "log.jsonl"
    _wait_for(lambda: _checkpoint_epoch(tmp_path / "R") >= 1, run)
    run.send_signal(stop)
    _, stderr = run.communicate(timeout=PATIENCE)
    assert run.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "deepframe train: interrupted (rerun the same command to resume)"
    ), stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "R" / LOCK_NAME).exists()  # released
    assert not [p for p in (tmp_path / "R").iterdir() if p.name.endswith(".tmp")]
    done = _checkpoint_epoch(tmp_path / "R")
    logged = _epochs(log)  # one epoch ahead if stopped between its log line and checkpoint
    assert logged in (list(range(1, done + 1)), list(range(1, done + 2))), (logged, done)
    # the same command resumes after the checkpoint's epoch
    again = _start(argv, tmp_path)
    _wait_for(lambda: _checkpoint_epoch(tmp_path / "R") > done, again)
    again.send_signal(stop)
    _, stderr = again.communicate(timeout=PATIENCE)
    assert again.returncode == 130, stderr
    assert f"resuming after epoch {done}" in stderr
    assert _epochs(log)[: done + 1] == list(range(1, done + 2))


# --------------------------------------------------------------------------- failures while working


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_stop_signals_are_interrupts_in_process(monkeypatch, capsys, stop):
    import deepframe.cli.train as cli

    def stopped(args):
        os.kill(os.getpid(), stop)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("not interrupted")

    monkeypatch.setattr(cli, "train_command", stopped)
    before = signal.getsignal(stop)
    assert main(["train", ARCH]) == 130
    assert capsys.readouterr().err.strip() == (
        "deepframe train: interrupted (rerun the same command to resume)"
    )
    assert signal.getsignal(stop) == before  # restored after the command


def test_an_ignored_hangup_stays_ignored(monkeypatch):
    """Under ``nohup`` (SIGHUP ignored) a hangup does not stop a command."""
    import deepframe.cli.describe as cli

    def hung_up(args):
        os.kill(os.getpid(), signal.SIGHUP)
        return 0

    monkeypatch.setattr(cli, "describe", hung_up)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert main(["describe", "chain"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize(
    "method",
    [
        ["--iterations", "1"],
        ["--method", "feedforward", "--optimizer", "sgd"],
        ["--method", "layered", "--optimizer", "sgd"],
    ],
    ids=["deep-adam", "feedforward-sgd", "layered-sgd"],
)
def test_a_diverging_run_names_the_epoch_and_what_to_lower(tmp_path, monkeypatch, capsys, method):
    monkeypatch.chdir(tmp_path)
    code = main(["train", ARCH, *method, "--lr", "1e6", "--epochs", "2", "--batch-size", "256",
                 "--quiet", "--out", "R"])  # fmt: skip
    assert code == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert "the run diverged in epoch 1 of 2" in line
    assert "lower --lr (now 1e+06, e.g. to 0.01)" in line and "internal error" not in line


def test_a_write_that_fails_names_the_file(tmp_path, monkeypatch, capsys):
    """ENOSPC while torch.save writes the checkpoint: the path, not inline_container.cc."""
    import deepframe._io as io

    real = io.os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            if not data:  # the empty log of a new run gets written; the checkpoint does not
                return 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    monkeypatch.chdir(tmp_path)
    assert main([*LONG, "--epochs", "1", "--out", "R"]) == 1
    line = _error_line(capsys.readouterr().err, "train")
    assert f"cannot write {Path('R') / 'checkpoint.pt'}: No space left on device (ENOSPC)" in line
    assert not [p for p in (tmp_path / "R").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("code", "status", "text"),
    [
        (errno.EROFS, 1, "cannot write net.json: Read-only file system (EROFS)"),
        (errno.EACCES, 2, "Permission denied: net.json"),
        (errno.EDQUOT, 1, "cannot write net.json: Disk quota exceeded (EDQUOT)"),
    ],
    ids=["EROFS", "EACCES", "EDQUOT"],
)
def test_a_file_that_cannot_be_created_is_named(tmp_path, monkeypatch, capsys, code, status, text):
    """The temporary file of an atomic write cannot be made: the destination is named."""
    import deepframe._io as io

    real = io.os.open

    def refuse(path, flags, *args):
        if str(path).endswith(".tmp"):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *args)

    monkeypatch.setattr(io.os, "open", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(["describe", "chain", "--out", "net.json"]) == status
    assert text in _error_line(capsys.readouterr().err, "describe")
    assert list(tmp_path.iterdir()) == []


def test_force_through_a_symbolic_link_replaces_its_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "target.json").write_text("old\n")
    (tmp_path / "link.json").symlink_to("target.json")
    assert main(["describe", "chain", "--out", "link.json", "--force"]) == 0
    assert (tmp_path / "link.json").is_symlink()  # the link is kept
    assert json.loads((tmp_path / "target.json").read_text())["nodes"]


def test_a_file_size_limit_in_a_real_process_names_the_file(tmp_path):
    """A real write failure (EFBIG past ``ulimit -f``) ends in one line naming the path."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = _run([*LONG, "--epochs", "1", "--out", "R"], tmp_path, preexec_fn=limit)
    assert done.returncode == 1, done.stderr
    line = _error_line(done.stderr, "train")
    assert "cannot write R/checkpoint.pt: File too large (EFBIG)" in line


@pytest.mark.parametrize(
    ("env", "argv", "fragment"),
    [
        ("1e100", ["metrics", "chain:input_shape=3x4096x4096"], "DEEPFRAME_MEMORY_BUDGET=1e100"),
        ("100000T", ["train", ARCH, "--out", "R"], "DEEPFRAME_MEMORY_BUDGET=100000T"),
        (None, ["describe", "chain", "--memory-budget", "1e15"], "--memory-budget (909 TiB)"),
    ],
)
def test_a_budget_the_machine_cannot_meet_is_named(tmp_path, monkeypatch, capsys, env, argv,
                                                   fragment):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    if env is None:
        monkeypatch.delenv("DEEPFRAME_MEMORY_BUDGET", raising=False)
    else:
        monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", env)
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err, argv[0])
    assert fragment in line and "is more than this machine has" in line
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_an_allocation_that_fails_names_the_budget(monkeypatch, capsys):
    """PyTorch's CPU allocator failing under a budget the estimates passed: out of memory."""
    import deepframe.cli.describe as cli

    def allocate(args):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 720000000000 bytes. Error code 12"
        )

    monkeypatch.setattr(cli, "describe", allocate)
    monkeypatch.setenv("DEEPFRAME_MEMORY_BUDGET", "8G")
    assert main(["describe", "chain"]) == 1
    line = _error_line(capsys.readouterr().err, "describe")
    assert line.startswith("deepframe describe: error: ran out of memory (")
    assert "within the memory budget DEEPFRAME_MEMORY_BUDGET=8G" in line
    assert "internal error" not in line


# --------------------------------------------------------------------------- as a newcomer meets it


def test_train_prints_each_epoch_once(tmp_path):
    done = _run(["train", ARCH, "--method", "feedforward", "--epochs", "2", "--out", "R"],
                tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    both = done.stdout + done.stderr
    for epoch in (1, 2):  # the line per epoch: once, a status line on stderr
        assert both.count(f"epoch {epoch}/2: train_loss") == 1, both
        assert f"epoch {epoch}/2" not in done.stdout
    assert done.stdout.startswith("epoch 2: train acc")  # the result alone on stdout


def test_attack_reruns_replace_their_own_result_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*LONG, "--epochs", "1", "--out", "R"]) == 0
    attack = ["attack", "R/checkpoint.pt", "--limit", "16", "--eps", "0.1", "--quiet"]
    assert main(attack) == 0
    first = json.loads((tmp_path / "R" / "attack_fgsm.json").read_text())
    assert first["seed"] == 0 and first["steps"] is None and first["step_size"] is None
    capsys.readouterr()
    assert main(attack) == 0  # its own earlier result: replaced, said so
    assert "replaced its earlier result in R/attack_fgsm.json" in capsys.readouterr().err
    pgd = ["attack", "R/checkpoint.pt", "--attack", "pgd", "--steps", "4", "--eps", "0.1"]
    assert main([*pgd, "--limit", "16", "--seed", "3", "--quiet"]) == 0
    result = json.loads((tmp_path / "R" / "attack_pgd.json").read_text())
    assert result["seed"] == 3 and result["steps"] == 4
    assert result["split_seed"] == 0  # the training run's split, whatever PGD's seed
    assert result["samples"] == first["samples"] and result["clean"] == first["clean"]
    assert result["step_size"] == {"0.1": pytest.approx(2.5 * 0.1 / 4)}
    # another checkpoint's result at that path is not replaced without --force
    assert main([*LONG, "--epochs", "1", "--out", "S"]) == 0
    before = _hashes(tmp_path / "R")
    capsys.readouterr()
    other = ["attack", "S/checkpoint.pt", "--out", "R/attack_fgsm.json", "--limit", "16"]
    assert main(other) == 2
    assert "--force" in _error_line(capsys.readouterr().err, "attack")
    assert _hashes(tmp_path / "R") == before
    assert main([*other, "--force", "--quiet"]) == 0


def test_metrics_says_what_each_bound_bounds_and_when_it_is_vacuous(capsys):
    assert main(["metrics", "chain:input_shape=64,widths=32x10"]) == 0  # undercomplete
    text = capsys.readouterr().out
    assert "vacuous here:         the Welch bounds: N = 42 <= n = 96 (undercomplete" in text
    assert "the structured bounds: FP_lb = N" in text
    assert "sum_ij |G_ij|^4 >= 0.5625 (vacuous: the diagonal alone gives N = 42)" in text
    assert "only k = 1 is the frame potential" in text
    assert "DFP <= mu^2 = " in text
    assert main(["metrics", "chain:input_shape=1x6x6,widths=3x4"]) == 0  # overcomplete
    text = capsys.readouterr().out
    assert "vacuous here" not in text
    assert "sum_ij |G_ij|^2 >= 441\n" in text  # k = 1 says something here
    assert "sum_ij |G_ij|^4 >= 9.06164 (vacuous: the diagonal alone gives N = 252)" in text
