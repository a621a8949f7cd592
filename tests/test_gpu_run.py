"""analysis/gpu_run.py: the prepared GPU run, exercised by its CPU dry run.

The dry run starts every part in its own process, as the real run does, with
tiny sizes; these tests check what comes back (the files the device tool
returns: at most 8, at most two folders down, each under 16 MiB), that a
short budget stops the run cleanly, and that a failing part is recorded while
the others run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_TOOL = ROOT.parent / "shared" / "tools" / "cifar10_batches.py"


def _script(name: str):
    if str(ROOT / "analysis") not in sys.path:
        sys.path.insert(0, str(ROOT / "analysis"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_run():
    return _script("gpu_run")


def _layout(out: Path) -> dict[str, int]:
    """Every file under ``out`` with its size, checked against the tool's limits here."""
    files = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    assert len(files) <= 8
    for name, size in files.items():
        assert len(Path(name).parts) <= 3, name
        assert size < 16 * 2**20, name
    return files


def _dry_run(gpu_run, out: Path, *extra: str) -> tuple[dict, float]:
    started = time.time()
    assert gpu_run.main(["--dry-run", "--out", str(out), *extra]) == 0
    seconds = time.time() - started
    return json.loads((out / "summary.json").read_text()), seconds


def test_dry_run_measures_trains_and_attacks_within_the_layout(gpu_run, tmp_path):
    """Every part but the tests (pytest twice: the slow test below); compile fails on
    purpose (``--fail``): recorded, and the parts after it run."""
    out = tmp_path / "out"
    parts = "bench,geometry,compile,train,attack"
    summary, _ = _dry_run(gpu_run, out, "--parts", parts, "--fail", "compile")
    files = _layout(out)
    assert set(files) == set(gpu_run.OUT_FILES)
    assert summary["final"] and summary["files"]["problems"] == []
    parts = summary["parts"]
    assert [parts[p]["status"] for p in ("bench", "geometry", "train", "attack")] == ["done"] * 4
    assert parts["tests"]["status"] == "skipped"
    assert (
        parts["compile"]["status"] == "failed" and "fails on purpose" in parts["compile"]["error"]
    )
    assert "| compile | failed |" in (out / "report.md").read_text()

    bench = json.loads((out / "bench.json").read_text())
    solvers = [r for r in bench["rows"] if r["section"] == "solvers"]
    assert {r["method"] for r in solvers} == {"DP", "DP-res", "L-BP"}
    for r in solvers:  # the op-count floor plain / (1 + 2T), from the row's own ratio
        assert r["x_op_floor"] == pytest.approx((1 + 2 * r["T"]) / r["x_plain"])
    options = {r["variant"] for r in bench["rows"] if r["section"] == "options"}
    assert options == {"default", "bf16 autocast"}
    (geometry,) = [r for r in bench["rows"] if r["section"] == "geometry"]
    assert geometry["case"] == "resnet50-tiny"
    # the structured pass against the dense Gram of the same dictionary
    assert geometry["max_abs_diff_coherence"] < 1e-12 and geometry["rel_diff_fp"] < 1e-12

    train = json.loads((out / "train.json").read_text())
    assert list(train["models"]) == train["order"][:2]
    for name, model in train["models"].items():
        assert model["status"] == "done" and model["epochs"] == train["profile"]["epochs"]
        assert [r["epoch"] for r in model["log"]] == [1, 2]
        assert 0 <= model["result"]["clean_acc"] <= 1, name
    attacks = train["attacks"]
    assert {(r["model"], r["attack"]) for r in attacks} == {
        (m, a) for m in train["models"] for a in ("clean", "pgd", "autoattack")
    }
    for r in attacks:
        assert ("accuracy" in r) != ("skipped" in r)
    ran = any(r["attack"] == "autoattack" and "accuracy" in r for r in attacks)
    assert train["autoattack"].startswith("ran: df.autoattack" if ran else "not run")

    # the archive is a reproduction's models/ folder: a model in it loads and predicts
    with tarfile.open(out / "models.tar.gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    first = train["order"][0]
    assert f"models/{first}/train/checkpoint.pt" in names
    import deepframe as df

    model = df.load_model(tmp_path / "unpacked" / "models" / first / "model.pt")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_a_short_budget_stops_the_run_cleanly(gpu_run, tmp_path):
    out = tmp_path / "out"
    budget = 6.0
    summary, seconds = _dry_run(gpu_run, out, "--budget-s", str(budget))
    # every part ends by its deadline plus the stop's grace (SIGTERM, 2 s in the dry run)
    assert seconds < budget + 8
    statuses = {name: part["status"] for name, part in summary["parts"].items()}
    assert list(statuses) == [p.name for p in gpu_run.PARTS]
    assert set(statuses.values()) <= {"done", "stopped", "skipped"}
    assert {"stopped", "skipped"} & set(statuses.values())
    for part in summary["parts"].values():
        assert part["seconds"] <= part["limit_s"] + 4
    assert summary["final"] and summary["files"]["problems"] == []
    assert {"summary.json", "train.json", "bench.json", "log.txt"} <= set(_layout(out))


@pytest.mark.slow
def test_full_dry_run_with_the_tests_and_torch_compile(gpu_run, tmp_path):
    out = tmp_path / "out"
    summary, _ = _dry_run(gpu_run, out)
    assert {p["status"] for p in summary["parts"].values()} == {"done"}
    tests = json.loads((out / "tests.json").read_text())["tests"]
    runs = [r for r in tests if r.get("summary")]
    assert [r["selection"] for r in runs] == ["marked cuda", "device-parametrised"]
    assert all(r["exit_code"] == 0 and not r["interrupted"] for r in runs)
    cases = [r for r in tests if not r.get("summary")]
    assert {c["outcome"] for c in cases if c["selection"] == "marked cuda"} == (
        {"passed"} if torch.cuda.is_available() else {"skipped"}
    )
    bench = json.loads((out / "bench.json").read_text())
    assert [r["variant"] for r in bench["rows"] if r.get("options", {}).get("torch_compile")] == [
        "torch.compile"
    ]
    assert len(_layout(out)) == 7


def test_junit_outcomes_are_read_as_pytest_writes_them(gpu_run, tmp_path):
    sample = tmp_path / "tests"
    sample.mkdir()
    (sample / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2\n"
        "@pytest.mark.skip(reason='not here')\n"
        "def test_skip(): pass\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('setup')\n"
        "def test_error(broken): pass\n"
        "@pytest.mark.parametrize('device', ['cpu', 'gpu'])\n"
        "def test_each(device): assert device == 'cpu'\n"
    )
    xml = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", str(sample), "-q", "-p", "no:cacheprovider"]
        + [f"--junitxml={xml}", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    cases = {c["test"].split("::")[1]: c for c in gpu_run.parse_junit(xml)}
    outcomes = {name: c["outcome"] for name, c in cases.items()}
    assert outcomes == {
        "test_ok": "passed",
        "test_bad": "failed",
        "test_skip": "skipped",
        "test_error": "error",
        "test_each[cpu]": "passed",
        "test_each[gpu]": "failed",
    }
    assert "not here" in cases["test_skip"]["message"]
    assert "setup" in cases["test_error"]["message"]


def test_layout_check_names_what_would_not_come_back(gpu_run, tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    (out / "a" / "b" / "ok.json").write_text("{}")
    assert gpu_run.check_layout(out)["problems"] == []
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "odd name.txt").write_text("x")
    with open(out / "big.bin", "wb") as f:  # sparse: 16 MiB without writing them
        f.truncate(16 * 2**20)
    for i in range(6):
        (out / f"f{i}.txt").write_text("x")
    problems = " | ".join(gpu_run.check_layout(out)["problems"])
    assert "10 files" in problems
    assert "deep.txt: deeper than two folders" in problems
    assert "big.bin: 16777216 bytes" in problems
    assert "odd name.txt: a name" in problems


def test_sink_keeps_each_row_and_stops_after_the_deadline(gpu_run, tmp_path):
    path = tmp_path / "rows.jsonl"
    sink = gpu_run.Sink(path, deadline=time.time() + 60)
    sink.append({"a": 1})
    sink.deadline = time.time() - 1
    with pytest.raises(gpu_run.OutOfTime):
        sink.append({"a": 2})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"a": 1}, {"a": 2}]
    assert list(sink) == [{"a": 1}, {"a": 2}]


def test_schedule_keeps_time_for_the_later_parts(gpu_run, monkeypatch, tmp_path):
    import argparse

    now = [1000.0]
    monkeypatch.setattr(gpu_run.time, "time", lambda: now[0])
    args = argparse.Namespace(dry_run=True, budget_s=540.0, out=str(tmp_path))
    run = gpu_run.Run(args)
    names = [p.name for p in gpu_run.PARTS]
    assert run.limit(names.index("tests")) == pytest.approx(0.14 * 540)
    # train has no cap: what is left once attack keeps its share
    train = names.index("train")
    end = 540 * (1 - gpu_run.FINAL_SHARE)
    now[0] += 100
    assert run.limit(train) == pytest.approx(end - 100 - 0.11 * 540)
    now[0] += 1000  # past the end: nothing left for anyone
    assert all(run.limit(i) < 0 for i in range(len(names)))
    os.rmdir(run.work)


def test_resume_archive_is_unpacked_and_missing_data_is_named(gpu_run, tmp_path):
    import argparse

    models = tmp_path / "run" / "models" / "ff-res-n3-seed0" / "train"
    models.mkdir(parents=True)
    (models / "checkpoint.pt").write_bytes(b"state")
    (models.parent / "log.jsonl").write_text("{}\n")
    carry = tmp_path / "carry"
    gpu_run.pack_models(tmp_path / "run" / "models", carry / "resume.tar.gz")
    args = argparse.Namespace(dry_run=False, budget_s=60.0, out=str(tmp_path), data=str(carry))
    run = gpu_run.Run(args)
    run.start_data()
    state = run.work / "full" / "models" / "ff-res-n3-seed0" / "train" / "checkpoint.pt"
    assert state.read_bytes() == b"state" and run.resumed == ["ff-res-n3-seed0"]
    assert "holds no cifar10-jpeg.npz" in run._data_ready(time.time())
    import shutil

    shutil.rmtree(run.work)
    gpu_run.pack_models(tmp_path / "run" / "models", tmp_path / "w.tar.gz", state=False)
    with tarfile.open(tmp_path / "w.tar.gz") as tar:
        assert tar.getnames() == [
            "models",
            "models/ff-res-n3-seed0",
            "models/ff-res-n3-seed0/log.jsonl",
        ]


def test_train_order_starts_with_the_paper_questions(gpu_run):
    from deepframe.experiments.profiles import PROFILES, model_specs

    order = gpu_run.train_order(PROFILES["full"])
    assert order[:2] == ["ff-res-n3-seed0", "dpres-n3-T5-seed0"]
    names = {s.name for s in model_specs(PROFILES["full"])}
    assert set(order) <= names and len(set(order)) == len(order)


def _fake_shared(folder: Path, train: int = 12, test: int = 6) -> Path:
    """A shared folder as the real one is laid out: JPEG .npz files (two JPEG qualities,
    so two distinct headers) and a tools/ folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    jpeg = folder / "data" / "cifar10-jpeg"
    jpeg.mkdir(parents=True)
    for split, count in (("train", train), ("test", test)):
        blobs, offsets = [], [0]
        for _ in range(count):
            import io

            buffer = io.BytesIO()
            image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(buffer, format="JPEG", quality=75 + 15 * (count % 2))
            blobs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
            offsets.append(offsets[-1] + len(blobs[-1]))
        np.savez(
            jpeg / f"{split}.npz",
            jpeg=np.concatenate(blobs),
            offsets=np.array(offsets),
            labels=np.arange(count) % 10,
            classes=np.array([f"class{i}" for i in range(10)]),
        )
    (folder / "tools").mkdir()
    return folder


def _git_checkout(folder: Path) -> Path:
    folder.mkdir()
    (folder / ".gitignore").write_text("/.gpu-run/\n")
    (folder / "code.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *cmd], cwd=folder, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
        cwd=folder,
        check=True,
    )
    return folder


@pytest.mark.skipif(not SHARED_TOOL.is_file(), reason="needs ../shared/tools/cifar10_batches.py")
def test_prepared_folder_decodes_to_the_standard_batches(gpu_run, tmp_path):
    pytest.importorskip("PIL")
    shared = _fake_shared(tmp_path / "shared")
    (shared / "tools" / "cifar10_batches.py").write_bytes(SHARED_TOOL.read_bytes())
    checkout = _git_checkout(tmp_path / "checkout")
    done = gpu_run.prepare(checkout, shared)
    carry = checkout / gpu_run.CARRY
    assert done["source"]["commit"] and done["source"]["dirty"] is False
    listed = {p.name for p in carry.iterdir()}  # site/: torchattacks, where installed here
    assert listed - {"site"} == {"cifar10-jpeg.npz", "source.json", "tools"}
    assert done["size"]["total"] == done["size"]["tree"] + done["size"]["carry"][gpu_run.CARRY]
    command = gpu_run.decode_command(carry, tmp_path / "scratch", tmp_path / "cifar")
    # the unpacked files are the shared ones, array for array
    for split in ("train", "test"):
        original = np.load(shared / "data" / "cifar10-jpeg" / f"{split}.npz")
        unpacked = np.load(tmp_path / "scratch" / "data" / "cifar10-jpeg" / f"{split}.npz")
        for key in ("jpeg", "offsets", "labels", "classes"):
            assert np.array_equal(original[key], unpacked[key]), (split, key)
    subprocess.run(command, check=True, capture_output=True)
    from deepframe.data import cifar10

    train, test = cifar10(tmp_path / "cifar"), cifar10(tmp_path / "cifar", train=False)
    assert (len(train), len(test)) == (12, 6)
    assert sorted(train.labels.tolist()) == sorted((np.arange(12) % 10).tolist())


def test_packed_jpeg_files_keep_every_byte(gpu_run, tmp_path):
    pytest.importorskip("PIL")
    shared = _fake_shared(tmp_path / "shared", train=7, test=4)
    done = gpu_run.pack_jpeg(shared / "data" / "cifar10-jpeg", tmp_path / "pack.npz")
    assert done["headers"] == 2  # one per JPEG quality
    rebuilt = gpu_run.unpack_jpeg(tmp_path / "pack.npz")
    for split in ("train", "test"):
        original = np.load(shared / "data" / "cifar10-jpeg" / f"{split}.npz")
        blob, offsets = original["jpeg"].tobytes(), original["offsets"]
        got = rebuilt[split]["jpeg"].tobytes()
        for i in range(len(offsets) - 1):  # image by image, as the decoder cuts them
            assert got[offsets[i] : offsets[i + 1]] == blob[offsets[i] : offsets[i + 1]]
    with pytest.raises(ValueError, match="start-of-scan"):
        gpu_run._split_jpeg(b"\xff\xd8 no scan here")


def test_prepare_refuses_what_would_not_travel(gpu_run, tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    shared = _fake_shared(tmp_path / "shared", train=2, test=2)
    (shared / "tools" / "cifar10_batches.py").write_text("# decoder\n")
    checkout = _git_checkout(tmp_path / "checkout")
    monkeypatch.setattr(gpu_run, "TREE_LIMIT", 1000)
    with pytest.raises(ValueError, match="over the device tool's 64 MiB"):
        gpu_run.prepare(checkout, shared)
    (checkout / ".gitignore").write_text("")
    with pytest.raises(ValueError, match="is not git-ignored"):
        gpu_run.prepare(checkout, shared)
    with pytest.raises(FileNotFoundError, match="tools/cifar10_batches.py"):
        gpu_run.prepare(checkout, tmp_path / "nowhere")


def test_optional_packages_are_carried_when_pure_python(gpu_run, tmp_path, monkeypatch):
    import argparse

    root = tmp_path / "installed"
    (root / "purepkg").mkdir(parents=True)
    (root / "purepkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "compiledpkg").mkdir()
    (root / "compiledpkg" / "__init__.py").write_text("")
    (root / "compiledpkg" / "_ext.so").write_bytes(b"\x7fELF")
    monkeypatch.syspath_prepend(str(root))
    site = tmp_path / "carry" / "site"
    done = gpu_run.carry_packages(site, ("purepkg", "compiledpkg", "no_such_package_here"))
    assert done == {
        "purepkg": "carried (version unknown)",
        "compiledpkg": "has compiled extensions: not carried",
        "no_such_package_here": "not installed here: not carried",
    }
    assert (site / "purepkg" / "__init__.py").read_text() == "VALUE = 1\n"
    assert not (site / "compiledpkg").exists()
    env = gpu_run._child_env(argparse.Namespace(data=str(tmp_path / "carry"), dry_run=True))
    assert str(site) in env["PYTHONPATH"].split(os.pathsep)


def test_option_variants_apply_where_they_can(tmp_path):
    bench = _script("bench")
    cpu = bench.option_variants(cuda=False, torch_compile=False)
    assert "bf16 autocast" in cpu and not any("tf32" in k for k in cpu)
    cuda = bench.option_variants(cuda=True, torch_compile={"backend": "eager"})
    assert {"tf32 on", "tf32 off", "channels_last + bf16"} <= set(cuda)
    assert cuda["torch.compile"][0] == {"torch_compile": {"backend": "eager"}}
