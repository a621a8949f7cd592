"""One prepared GPU run (issue 23): CUDA tests, the GPU benchmark, the full profile's first models.

    python analysis/gpu_run.py --prepare                  # here, once: writes .gpu-run/
    python analysis/gpu_run.py --out DIR [--budget-s 540] # on the CUDA machine
    python analysis/gpu_run.py --dry-run --out DIR        # on a CPU: tiny sizes, seconds

The run spends a wall-clock budget (``--budget-s``, default 540 s = 9 minutes,
measured from its start) on six parts, in this order, each in its own process
(a part that fails or hangs is recorded and the others run; a part that
reaches its share of the budget is stopped and what it finished is kept):

``tests``
    ``pytest -m cuda`` (the marked CUDA tests), then the device-parametrised
    tests (``-m 'not cuda and not slow' -k cuda``: the ``[cuda]`` cases of
    ``DEVICES``), each test's outcome from pytest's JUnit XML.
``bench``
    analysis/bench.py's ``solvers`` section (DP, DP-res, L-BP one training step
    at T = 0, 1, 5, 10 on ResNet-20, against the hand-written floor and the
    plain network; ``x_op_floor`` is the throughput over ``plain / (1 + 2T)``)
    and its ``options`` section (DP-res T = 10: default, ``channels_last``,
    Jacobi, TF32 off/on, bf16 autocast, ``channels_last`` + TF32 / bf16,
    CUDA-graph inference), batch 128 then 512.
``geometry``
    Exact coherence and frame potential (analysis/bench_geometry.py) of the
    ResNet-50 layout at 224x224 (``bottleneck_resnet``: 10.2 million atoms)
    and of the ResNet-18-width graph at 224x224, on the GPU.
``compile``
    The ``torch.compile`` variant of the options section (DP-res, batch 128,
    T = 1 then 10): the build time is not timed but spent, so it comes last
    among the measurements.
``train``
    Models of the ``full`` reproduction profile (all of CIFAR-10, ResNet-20
    size, 100 epochs), as a shard in the reproduction layout: first the
    feed-forward ResNet and DP-res at the profile's T nearest 4 (T = 5), two
    processes at once on the GPU, then the chain twin, DP, L-BP and the
    adversarially trained baseline as slots free up. A model is stopped after
    the last epoch that fits (its resumable state is kept); one that finishes
    is attacked as ``deepframe reproduce`` attacks it.
``attack``
    Every trained model as it stands (finished, or at its last epoch): clean
    accuracy on the whole test set, PGD (the profile's 20 steps at 8/255) and,
    where this checkout has ``df.autoattack`` and torchattacks is importable,
    AutoAttack's standard suite, on the first images of the profile's
    evaluation order; ``train.json`` says which ran.

What comes back, all in ``--out`` (flat: at most 8 files, each under 16 MiB):
``summary.json`` (machine, software, every part's status, limits and
seconds, the targets), ``report.md`` (the same as tables), ``tests.json``,
``bench.json`` (analysis/bench.py's format: ``meta``, ``rows``, ``targets``),
``train.json`` (per model: status, epochs, per-epoch log, result, attacks),
``models.tar.gz`` (``models/<name>/`` of the reproduction layout, training
state included, to unpack into a run folder and resume) and ``log.txt``
(every part's output). The outputs are rewritten after every part, so a run
cut short still leaves what finished.

``--prepare`` (on the machine that calls the device tool, in the checkout it
sends) writes ``.gpu-run/`` (git-ignored; name it in the tool's ``carry``):
the shared CIFAR-10 JPEG files (54 MB) packed without the header all 60,000
images repeat (19 MB, every byte given back: :func:`pack_jpeg`), their
decoder (``shared/tools/cifar10_batches.py``), torchattacks where it is
installed here (:func:`carry_packages`) and the commit; it checks that
the tree that travels stays under the tool's 64 MiB. ``--resume-from RUN``
adds the models of an earlier run (a folder holding ``models/``, e.g. an
unpacked ``models.tar.gz``) so that training continues where it stopped. On
the GPU machine the files are unpacked and the decoder writes the standard
batches into a scratch folder (about 10 s, Pillow) while the tests run.
docs/performance.md, *The GPU run*, gives the exact device call.

``--dry-run`` runs every part on the CPU with tiny sizes (ResNet-8 at batch 2,
the ResNet-50 layout at 16x16, a 2-epoch shard of a reduced profile on random
images in the CIFAR-10 layout, ``torch.compile`` with the eager backend), in
seconds: the code paths, the file layout and the budget handling of the real
run (tests/test_gpu_run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):  # run from a checkout: this tree's deepframe and bench
    if _path not in sys.path:
        sys.path.insert(0, _path)

#: The git-ignored folder of the checkout that the device tool carries (``carry``).
CARRY = ".gpu-run"
BUDGET_S = 540.0
#: What the device tool brings back and sends (docs: /work/.library/device/README.md).
FILE_LIMIT = 16 * 2**20
MAX_FILES = 8
TREE_LIMIT = 64 * 2**20
LOG_LIMIT = 4 * 2**20
OUT_FILES = (
    "summary.json",
    "report.md",
    "tests.json",
    "bench.json",
    "train.json",
    "models.tar.gz",
    "log.txt",
)
#: Exit code of a part that stopped itself at its deadline (what it finished is kept).
STOPPED = 3


@dataclasses.dataclass(frozen=True)
class Part:
    """A part of the run: ``cap`` its share of the budget at most; ``keep`` the share kept
    for it while the earlier parts run (a part without a cap takes what the later parts'
    ``keep`` leaves)."""

    name: str
    cap: float | None
    keep: float


PARTS = (
    Part("tests", 0.14, 0.14),
    Part("bench", 0.30, 0.30),
    Part("geometry", 0.075, 0.075),
    Part("compile", 0.09, 0.09),
    Part("train", None, 0.25),
    Part("attack", 0.11, 0.11),
)
#: Share of the budget kept for writing the outputs at the end.
FINAL_SHARE = 0.03


# --------------------------------------------------------------------------- sizes


class Sizes:
    """Everything that differs between the real run and the dry run."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.test_paths = ["tests/test_accel.py"] if dry else ["tests"]
        self.graph = "ResNet-8" if dry else "ResNet-20"
        self.batches = [2] if dry else [128, 512]
        self.iterations = [1] if dry else [0, 1, 5, 10]
        self.options_iterations = 1 if dry else 10
        self.variants = ["default", "bf16 autocast"] if dry else None
        self.repeats = 1 if dry else 3
        self.geometry_cases = ["resnet50-tiny"] if dry else ["resnet50-224", "resnet18-224"]
        self.geometry_repeats = 1 if dry else 2
        self.memory_budget = None if dry else "64G"
        self.compile_options = {"backend": "eager"} if dry else True
        self.compile_iterations = [1] if dry else [1, 10]
        self.compile_batch = 2 if dry else 128
        self.train_jobs = 1 if dry else 2
        self.train_models = 2 if dry else None  # how many of train_order (None: all)
        self.data_workers = 0 if dry else 4
        self.pgd_images = 8 if dry else 1000
        self.autoattack_images = 4 if dry else 500
        self.autoattack_version = "fast" if dry else "standard"
        self.poll_s = 0.1 if dry else 1.0
        self.grace_s = 2.0 if dry else 5.0


def run_profile(dry: bool):
    """The profile the train part runs: ``full``, or for the dry run a reduced copy of it
    (same solvers, seeds and attacks; tiny data, widths and schedule)."""
    from deepframe.experiments.profiles import PROFILES

    full = PROFILES["full"]
    if not dry:
        return full
    return dataclasses.replace(
        full,
        name="full-dry-run",
        train_images=32,
        eval_images=24,
        val_images=8,
        widths=(4, 4, 4),
        pursuit_depth=1,
        iterations=(0, 1),
        epochs=2,
        batch_size=16,
        pgd_steps=2,
        curve_pgd_images=4,
        threads=1,
        note="analysis/gpu_run.py --dry-run: numbers mean nothing",
    )


def train_order(profile) -> list[str]:
    """The models of the train part, most important first.

    The feed-forward ResNet and DP-res at the profile's T nearest 4 (the full
    profile's T = 5) first: do they reach the paper's ~90 % clean accuracy at
    this scale, and how robust are they. Then the chain twin (the T = 0 of DP
    and L-BP), DP and L-BP at that T, and the adversarially trained baseline.
    Seed 0 of each.
    """
    from deepframe.experiments.profiles import (
        adversarial_base,
        feedforward_base,
        pursuit_base,
    )

    n = profile.pursuit_depth
    t = min((v for v in profile.iterations if v), key=lambda v: (abs(v - 4), -v))
    bases = [
        feedforward_base("resnet", n),
        pursuit_base("dpres", n, t),
        feedforward_base("chain", n),
        pursuit_base("dp", n, t),
        pursuit_base("lbp", n, t),
    ]
    if profile.adversarial_baseline:
        bases.append(adversarial_base(n))
    return [f"{base}-seed0" for base in bases]


# --------------------------------------------------------------------------- prepare


def _tree_files(root: Path) -> list[Path]:
    """The files the device tool sends: tracked, and untracked that git does not ignore."""
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    )
    names = [n for n in done.stdout.decode().split("\0") if n]
    return [root / n for n in names if (root / n).is_file()]


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def travelling_size(root: Path, carry: list[str]) -> dict:
    """Bytes of the tree the device tool sends with ``carry``, against its 64 MiB."""
    tree = sum(p.stat().st_size for p in _tree_files(root))
    carried = {c: _folder_bytes(root / c) for c in carry if (root / c).exists()}
    total = tree + sum(carried.values())
    return {"tree": tree, "carry": carried, "total": total, "limit": TREE_LIMIT}


def prepare(
    root: Path = ROOT,
    shared: Path | None = None,
    resume_from: Path | None = None,
) -> dict:
    """Write ``root/.gpu-run/``: the CIFAR-10 JPEG files, their decoder, the commit, and
    (``resume_from``) an earlier run's models; check the size of what travels.

    Raises
    ------
    FileNotFoundError
        The shared data or decoder, or ``resume_from``'s ``models/``, is missing.
    ValueError
        ``.gpu-run`` is not git-ignored, or the tree that travels exceeds 64 MiB.
    """
    shared = Path(shared) if shared is not None else root.parent / "shared"
    jpeg = shared / "data" / "cifar10-jpeg"
    tool = shared / "tools" / "cifar10_batches.py"
    needed = [jpeg / "train.npz", jpeg / "test.npz", tool]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"--prepare: {', '.join(missing)} not found; pass --shared, the folder that "
            "holds data/cifar10-jpeg/ and tools/cifar10_batches.py"
        )
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"{CARRY}/x"], cwd=root, check=False
    ).returncode
    if ignored != 0:
        raise ValueError(
            f"--prepare: {CARRY}/ is not git-ignored in {root}: it would travel twice "
            f"(add '/{CARRY}/' to .gitignore)"
        )
    carry = root / CARRY
    if carry.exists():
        shutil.rmtree(carry)
    (carry / "tools").mkdir(parents=True)
    pack_jpeg(jpeg, carry / JPEG_PACK)
    shutil.copy2(tool, carry / "tools" / tool.name)
    carried = carry_packages(carry / "site")
    if resume_from is not None:
        models = Path(resume_from) / "models"
        if not models.is_dir():
            raise FileNotFoundError(f"--resume-from: {models} not found (a run folder has models/)")
        pack_models(models, carry / "resume.tar.gz")
    source = {
        "prepared": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        **_git_state(root),
        "packages": carried,
    }
    (carry / "source.json").write_text(json.dumps(source, indent=1))
    size = travelling_size(root, [CARRY])
    if size["total"] > TREE_LIMIT:
        raise ValueError(
            f"--prepare: the tree that travels would be {size['total'] / 2**20:.1f} MiB "
            f"(checkout {size['tree'] / 2**20:.1f} MiB + {CARRY} "
            f"{size['carry'][CARRY] / 2**20:.1f} MiB), over the device tool's 64 MiB: "
            "remove or ignore large untracked files, or carry less"
        )
    return {"carry": str(carry), "size": size, "source": source}


#: Optional pure-Python packages the run uses where they are installed here and the GPU
#: machine lacks them: torchattacks (``df.autoattack``'s attacks).
CARRIED_PACKAGES = ("torchattacks",)


def carry_packages(site: Path, names=CARRIED_PACKAGES) -> dict:
    """Copy each installed pure-Python package of ``names`` into ``site`` (the run puts it
    on the children's ``PYTHONPATH``); ``{name: version or why not}``."""
    import importlib.metadata
    import importlib.util

    done = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            done[name] = "not installed here: not carried"
            continue
        folder = Path(next(iter(spec.submodule_search_locations)))
        if any(p.suffix in (".so", ".pyd") for p in folder.rglob("*")):
            done[name] = "has compiled extensions: not carried"
            continue
        shutil.copytree(folder, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        try:
            done[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            done[name] = "carried (version unknown)"
    return done


#: The carried CIFAR-10: the shared JPEG files without the header every image repeats.
JPEG_PACK = "cifar10-jpeg.npz"
_SOS = b"\xff\xda"  # start of scan: the entropy-coded data follow its header


def _split_jpeg(data: bytes) -> tuple[bytes, bytes]:
    """``(header, scan)`` of a baseline JPEG file: everything up to the end of the
    start-of-scan header (tables, frame, scan header), and the rest."""
    k = data.find(_SOS)
    if k < 0:
        raise ValueError("not a JPEG file with a start-of-scan marker")
    end = k + 2 + int.from_bytes(data[k + 2 : k + 4], "big")
    return data[:end], data[end:]


def pack_jpeg(source: Path, target: Path) -> dict:
    """The shared ``train.npz`` / ``test.npz`` (``jpeg``, ``offsets``, ``labels``,
    ``classes``) as one ``.npz`` that stores each distinct JPEG header once.

    The copy of CIFAR-10 in ``shared/data`` repeats one 623-byte header (quantisation
    and Huffman tables) in all 60,000 images, two thirds of its 54 MB: without the
    repeats it takes about 18 MB, and the tree that travels keeps room for results.
    :func:`unpack_jpeg` gives back the two files' arrays exactly (checked here before
    anything is written).
    """
    import numpy as np

    arrays, headers = {}, {}
    for split in ("train", "test"):
        z = np.load(source / f"{split}.npz")
        blob, offsets = z["jpeg"].tobytes(), z["offsets"]
        scans, index = [], []
        for i in range(len(offsets) - 1):
            header, scan = _split_jpeg(blob[offsets[i] : offsets[i + 1]])
            index.append(headers.setdefault(header, len(headers)))
            scans.append(scan)
        lengths = np.array([len(v) for v in scans], dtype=np.int64)
        arrays[f"{split}_scan"] = np.frombuffer(b"".join(scans), dtype=np.uint8)
        arrays[f"{split}_scan_offsets"] = np.concatenate([[0], np.cumsum(lengths)])
        arrays[f"{split}_header"] = np.array(index, dtype=np.int64)
        for key in ("offsets", "labels", "classes"):
            arrays[f"{split}_{key}"] = z[key]
    table = list(headers)
    arrays["headers"] = np.frombuffer(b"".join(table), dtype=np.uint8)
    arrays["header_offsets"] = np.concatenate([[0], np.cumsum([len(h) for h in table])])
    np.savez(target, **arrays)
    for split, rebuilt in unpack_jpeg(target).items():
        original = np.load(source / f"{split}.npz")
        for key in ("jpeg", "offsets", "labels", "classes"):
            if not np.array_equal(original[key], rebuilt[key]):
                raise ValueError(f"pack_jpeg: {split} {key} does not come back exactly")
    return {"headers": len(table), "bytes": target.stat().st_size}


def unpack_jpeg(pack: Path) -> dict:
    """``{split: {"jpeg", "offsets", "labels", "classes"}}``, the arrays of the shared
    ``.npz`` files that :func:`pack_jpeg` packed."""
    import numpy as np

    z = np.load(pack)
    table, bounds = z["headers"].tobytes(), z["header_offsets"]
    headers = [table[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    out = {}
    for split in ("train", "test"):
        scan, cuts = z[f"{split}_scan"].tobytes(), z[f"{split}_scan_offsets"]
        index = z[f"{split}_header"]
        blob = b"".join(headers[h] + scan[cuts[i] : cuts[i + 1]] for i, h in enumerate(index))
        out[split] = {
            "jpeg": np.frombuffer(blob, dtype=np.uint8),
            **{key: z[f"{split}_{key}"] for key in ("offsets", "labels", "classes")},
        }
    return out


def _git_state(root: Path) -> dict:
    def git(*cmd):
        try:
            done = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True)
        except OSError:  # no git on this machine
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(status) if status is not None else None,
    }


# --------------------------------------------------------------------------- data


def decode_command(carry: Path, scratch: Path, dest: Path) -> list[str]:
    """Unpack the carried JPEG files into ``scratch`` laid out as ``shared/`` (the decoder
    reads ``../data/cifar10-jpeg`` beside its own folder); the decoder's command, which
    writes ``dest/cifar-10-batches-py``."""
    import numpy as np

    jpeg = scratch / "data" / "cifar10-jpeg"
    jpeg.mkdir(parents=True, exist_ok=True)
    for split, arrays in unpack_jpeg(carry / JPEG_PACK).items():
        np.savez(jpeg / f"{split}.npz", **arrays)
    (scratch / "tools").mkdir(exist_ok=True)
    tool = scratch / "tools" / "cifar10_batches.py"
    shutil.copy2(carry / "tools" / "cifar10_batches.py", tool)
    return [sys.executable, str(tool), str(dest)]


def write_random_cifar(dest: Path, train: int, test: int, seed: int = 0) -> Path:
    """Random images in the standard ``cifar-10-batches-py`` layout (the dry run's data)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(count):
        return {
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, size=count)],
        }

    parts = np.array_split(np.arange(train), 5)
    for i, part in enumerate(parts, start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(len(part)), f, protocol=4)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(test), f, protocol=4)
    return dest


# --------------------------------------------------------------------------- children


class OutOfTime(Exception):
    """A part reached its deadline between two rows."""


class Sink(list):
    """A list of rows that writes each row to a JSON-lines file as it is appended, then
    stops the part (:class:`OutOfTime`) when its deadline has passed.

    analysis/bench.py's sections append their rows to a list; given a sink, they
    keep every finished row when the part is stopped."""

    def __init__(self, path: Path, deadline: float):
        super().__init__()
        self.path, self.deadline = path, deadline

    def append(self, row) -> None:
        super().append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        if time.time() > self.deadline:
            raise OutOfTime


def _bench_args(sizes: Sizes, device: str, **overrides) -> argparse.Namespace:
    args = argparse.Namespace(
        device=device,
        quick=False,
        repeats=sizes.repeats,
        graph=[sizes.graph],
        batch=None,
        iterations=sizes.iterations,
        torch_compile=False,
        options_graph=sizes.graph,
        options_batch=None,
        options_iterations=sizes.options_iterations,
        variant=sizes.variants,
        memory_budget=sizes.memory_budget,
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def child_tests(args, sizes: Sizes, sink: Sink) -> None:
    """The two pytest selections; one cut short by the deadline is interrupted (SIGINT), so
    that pytest still writes the outcomes of the tests it ran."""
    runs = [
        ("marked cuda", ["-m", "cuda"]),
        ("device-parametrised", ["-m", "not cuda and not slow", "-k", "cuda"]),
    ]
    for i, (label, selection) in enumerate(runs):
        xml = Path(args.work) / f"junit-{i}.xml"
        shown = ["python", "-m", "pytest", *sizes.test_paths, *selection]
        cmd = [sys.executable, *shown[1:], "--continue-on-collection-errors"]
        cmd += ["-p", "no:cacheprovider", f"--junitxml={xml}", "-q"]
        started = time.time()
        left = args.deadline - started - 2 * sizes.grace_s
        if left <= 0:
            raise OutOfTime
        print(f"$ {' '.join(shown)}", flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(args))
        interrupted = False
        try:
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=sizes.grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        cases = parse_junit(xml) if xml.is_file() else []
        for case in cases:
            sink.append({"selection": label, **case})
        counts = {}
        for case in cases:
            counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
        sink.append(
            {
                "selection": label,
                "command": " ".join(shown),
                "exit_code": code,
                "interrupted": interrupted,
                "counts": counts,
                "seconds": round(time.time() - started, 1),
                "summary": True,
            }
        )
        if interrupted:
            raise OutOfTime


def parse_junit(path: Path) -> list[dict]:
    """Each test case of a pytest JUnit XML file: ``test`` (``classname::name``), ``outcome``
    (passed, failed, error, skipped), ``seconds``, ``message``. The nameless case pytest
    writes for a test cut short by an interrupt is left out."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if not case.get("name"):
            continue
        outcome, message = "passed", None
        for tag, label in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                outcome = label
                message = (found.get("message") or found.text or "")[:2000]
                break
        cases.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
                "message": message,
            }
        )
    return cases


def _guarded(sink: Sink, what: dict, run) -> None:
    """``run()``; an exception (not the deadline) becomes a row ``{"section": "error", ...}``
    and the part goes on with its next measurement."""
    try:
        run()
    except OutOfTime:
        raise
    except Exception as exc:
        traceback.print_exc()
        sink.append({"section": "error", **what, "error": f"{type(exc).__name__}: {exc}"})


def child_bench(args, sizes: Sizes, sink: Sink) -> None:
    """bench.py's solvers grid (one call per T) and options (one call per variant), batch
    by batch; each call that fails is recorded and the next runs."""
    import bench

    bench.CLOCK = bench.CLOCKS["wall"]
    variants = sizes.variants or list(bench.option_variants(args.device.startswith("cuda"), False))
    for batch in sizes.batches:
        for t in sizes.iterations:
            call = _bench_args(sizes, args.device, batch=[batch], iterations=[t])
            what = {"part": "solvers", "batch": batch, "T": t}
            _guarded(sink, what, lambda call=call: bench.bench_solvers(call, sink))
        for variant in variants:
            call = _bench_args(sizes, args.device, options_batch=[batch], variant=[variant])
            what = {"part": "options", "batch": batch, "variant": variant}
            _guarded(sink, what, lambda call=call: bench.bench_options(call, sink))


def child_geometry(args, sizes: Sizes, sink: Sink) -> None:
    import bench
    import bench_geometry

    bench_geometry.CLOCK = time.perf_counter
    name = bench.device_name(args.device)
    for case in sizes.geometry_cases:
        try:
            row = bench_geometry.run_case(
                case, sizes.geometry_repeats, device=args.device, budget=sizes.memory_budget
            )
        except Exception as exc:  # recorded: the structured geometry of this case failed
            traceback.print_exc()
            row = {"case": case, "error": f"{type(exc).__name__}: {exc}"}
        row.update(section="geometry", device=name)
        sink.append(row)


def child_compile(args, sizes: Sizes, sink: Sink) -> None:
    import bench

    bench.CLOCK = bench.CLOCKS["wall"]
    for t in sizes.compile_iterations:
        call = _bench_args(
            sizes,
            args.device,
            options_batch=[sizes.compile_batch],
            options_iterations=t,
            torch_compile=sizes.compile_options,
            variant=["torch.compile"],
        )
        what = {"part": "compile", "batch": sizes.compile_batch, "T": t}
        print(f"[compile] T={t}: building and timing torch.compile", flush=True)
        _guarded(sink, what, lambda call=call: bench.bench_options(call, sink))


def child_train(args, sizes: Sizes, sink: Sink) -> None:
    import torch

    from deepframe.experiments.profiles import model_specs
    from deepframe.experiments.runner import run_model

    profile = run_profile(sizes.dry)
    spec = next(s for s in model_specs(profile) if s.name == args.model)
    torch.set_num_threads(profile.threads)  # as deepframe reproduce's workers
    started = time.time()
    result, fresh = run_model(
        spec,
        profile,
        Path(args.work) / "full",
        Path(args.work) / "cifar",
        num_workers=sizes.data_workers,
    )
    sink.append(
        {
            "model": spec.name,
            "finished": True,
            "trained_now": fresh,
            "clean_acc": result["clean_acc"],
            "fgsm_acc": result["fgsm_acc"],
            "pgd_acc": result["pgd_acc"],
            "seconds": round(time.time() - started, 1),
        }
    )


def _model_file(folder: Path) -> tuple[Path, bool] | None:
    """The weights of a trained model folder: ``(file, finished)``, or None."""
    from deepframe.train import CHECKPOINT_NAME

    if (folder / "result.json").is_file() and (folder / "model.pt").is_file():
        return folder / "model.pt", True
    state = folder / "train" / CHECKPOINT_NAME
    return (state, False) if state.is_file() else None


def autoattack_function():
    """deepframe's AutoAttack (``df.autoattack``), or None where this checkout has none."""
    import deepframe as df

    try:
        return df.autoattack
    except AttributeError:
        from deepframe import attacks

        return getattr(attacks, "autoattack", None)


def child_attack(args, sizes: Sizes, sink: Sink) -> None:
    import torch

    from deepframe.attacks import evaluate, parse_eps
    from deepframe.checkpoints import load_checkpoint
    from deepframe.experiments.datasets import load_data
    from deepframe.experiments.runner import _pgd_settings
    from deepframe.train import load_model

    profile = run_profile(sizes.dry)
    eps = parse_eps(profile.eps)
    models = Path(args.work) / "full" / "models"
    _, eval_set, _ = load_data(profile, Path(args.work) / "cifar", 0)
    autoattack = autoattack_function()
    for name in train_order(profile):
        found = _model_file(models / name)
        if found is None:
            continue
        path, finished = found
        try:
            epoch = int(load_checkpoint(path, training=not finished)["epoch"])
            model = load_model(path, map_location=args.device)
        except Exception as exc:  # recorded; the next model is attacked
            traceback.print_exc()
            sink.append({"model": name, "attack": "load", "error": f"{type(exc).__name__}: {exc}"})
            continue
        base = {"model": name, "finished": finished, "epoch": epoch, "of_epochs": profile.epochs}
        n = len(eval_set)
        plan = [
            ("clean", n),
            ("pgd", min(sizes.pgd_images, n)),
            ("autoattack", min(sizes.autoattack_images, n)),
        ]
        for attack, count in plan:
            subset = torch.utils.data.Subset(eval_set, range(count))
            started = time.time()
            row = {**base, "attack": attack, "images": count, "eps": profile.eps}
            if attack == "clean":
                row["accuracy"] = evaluate(model, subset, batch_size=512).accuracy
            elif attack == "pgd":
                row.update(_pgd_settings(profile))
                result = evaluate(
                    model, subset, [eps], "pgd", seed=0, batch_size=512, **_pgd_settings(profile)
                )
                row["accuracy"] = result.robust_accuracy[eps]
                row["clean_accuracy"] = result.accuracy
            elif autoattack is None:
                row["skipped"] = "deepframe has no autoattack in this checkout"
            else:
                try:
                    row.update(
                        _run_autoattack(
                            autoattack, model, subset, eps, args.device, sizes.autoattack_version
                        )
                    )
                except ImportError as exc:  # an optional package it needs is missing
                    row["skipped"] = f"{type(exc).__name__}: {exc}"
                except Exception as exc:  # recorded; PGD stands
                    traceback.print_exc()
                    row["error"] = f"{type(exc).__name__}: {exc}"
            row["seconds"] = round(time.time() - started, 2)
            sink.append(row)


def _run_autoattack(autoattack, model, subset, eps: float, device: str, version: str) -> dict:
    """Robust accuracy under ``df.autoattack`` (suite ``version``) on ``subset``: the
    accuracy after each attack, their seconds and the self-checks that were raised."""
    import torch

    x = torch.stack([subset[i][0] for i in range(len(subset))]).to(device)
    y = torch.stack([torch.as_tensor(subset[i][1]) for i in range(len(subset))]).to(device)
    result = autoattack(model, x, y, eps, version, seed=0)
    return {
        "version": result.version,
        "accuracy": result.accuracy,
        "clean_accuracy": result.clean_accuracy,
        "after": result.after,
        "attack_seconds": result.seconds,
        "flags_raised": sorted(k for k, v in result.flags.items() if v.get("raised")),
    }


CHILDREN = {
    "tests": child_tests,
    "bench": child_bench,
    "geometry": child_geometry,
    "compile": child_compile,
    "train": child_train,
    "attack": child_attack,
}


def _child_env(args) -> dict:
    env = dict(os.environ)
    carry = Path(args.data) if getattr(args, "data", None) else ROOT / CARRY
    paths = [str(ROOT), str(HERE)]
    if (carry / "site").is_dir():  # the optional packages --prepare carried
        paths.append(str(carry / "site"))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    if not args.dry_run:
        env.setdefault("DEEPFRAME_MEMORY_BUDGET", "64G")
    return env


def run_child(args) -> int:
    """One part in this process; its rows go to ``WORK/<part>[-<model>].jsonl``."""
    import torch

    sizes = Sizes(args.dry_run)
    if args.dry_run:
        torch.set_num_threads(1)
    stem = args.child if args.model is None else f"{args.child}-{args.model}"
    sink = Sink(Path(args.work) / f"{stem}.jsonl", args.deadline)
    if args.fail == args.child:
        raise RuntimeError(f"--fail {args.child}: this part fails on purpose (a test of the run)")
    try:
        CHILDREN[args.child](args, sizes, sink)
    except OutOfTime:
        print(f"[{stem}] stopped at its deadline after {len(sink)} rows", flush=True)
        return STOPPED
    return 0


# --------------------------------------------------------------------------- the run


class Run:
    """The parent: schedules the parts, records them, writes the outputs."""

    def __init__(self, args):
        self.args = args
        self.sizes = Sizes(args.dry_run)
        self.started = time.time()
        self.budget = float(args.budget_s)
        self.end = self.started + self.budget * (1 - FINAL_SHARE)
        self.out = Path(args.out)
        self.work = Path(tempfile.mkdtemp(prefix="gpu-run-"))
        self.parts: dict[str, dict] = {}
        self.rows: dict[str, list] = {p.name: [] for p in PARTS}
        self.models: dict[str, dict] = {}
        self.decoder = None
        self.data_note = None
        self.data_problem = None
        self.resumed = None
        self.source = None
        self.packed_note = None

    # ---------------------------------------------------------------- schedule

    def limit(self, index: int) -> float:
        """Seconds the part at ``index`` may take from now."""
        part = PARTS[index]
        later = sum(p.keep for p in PARTS[index + 1 :]) * self.budget
        left = self.end - time.time() - later
        if part.cap is not None:
            left = min(left, part.cap * self.budget)
        return left

    def _spawn(self, part: str, deadline: float, model: str | None = None):
        stem = part if model is None else f"{part}-{model}"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", part]
        cmd += ["--work", str(self.work), "--deadline", repr(deadline), "--out", str(self.out)]
        cmd += ["--device", self.args.device]
        if model is not None:
            cmd += ["--model", model]
        if self.args.data:
            cmd += ["--data", self.args.data]
        if self.args.dry_run:
            cmd.append("--dry-run")
        if self.args.fail:
            cmd += ["--fail", self.args.fail]
        log = open(self.work / f"{stem}.log", "w")
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_child_env(self.args),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with everything it started
        )
        log.close()
        return proc

    def _stop(self, proc) -> None:
        """Stop a child and everything it started: SIGTERM, then SIGKILL."""
        if proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, self.sizes.grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _wait(self, proc, deadline: float) -> str:
        """Wait for one child until ``deadline`` (plus grace); its status."""
        while proc.poll() is None and time.time() < deadline + self.sizes.grace_s:
            time.sleep(self.sizes.poll_s)
        if proc.poll() is None:
            self._stop(proc)
            return "stopped"
        return _status(proc.returncode)

    def _read_rows(self, stem: str) -> list:
        path = self.work / f"{stem}.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _log_tail(self, stem: str, chars: int = 3000) -> str:
        path = self.work / f"{stem}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    # ---------------------------------------------------------------- parts

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUT_FILES:  # a folder reused: no file of an earlier run stays
            (self.out / name).unlink(missing_ok=True)
        print(f"# gpu_run: budget {self.budget:.0f} s, device {self.args.device}, work {self.work}")
        self.start_data()
        try:
            for index, part in enumerate(PARTS):
                limit = self.limit(index)
                began = time.time()
                record = {"limit_s": round(limit, 1), "started_s": round(began - self.started, 1)}
                if self.args.parts and part.name not in self.args.parts:
                    record["status"] = "skipped"
                    record["reason"] = "not in --parts"
                elif limit < self.sizes.poll_s * 10:
                    record["status"] = "skipped"
                    record["reason"] = f"no time left ({limit:.1f} s)"
                else:
                    print(f"# part {part.name}: at most {limit:.0f} s", flush=True)
                    try:
                        record.update(getattr(self, f"part_{part.name}")(began + limit))
                    except Exception as exc:  # the parent's own error in a part: recorded
                        record.update(status="failed", error=traceback.format_exc()[-3000:])
                        print(f"# part {part.name} failed in the parent: {exc}", flush=True)
                record["seconds"] = round(time.time() - began, 1)
                self.parts[part.name] = record
                print(f"# part {part.name}: {record['status']} ({record['seconds']} s)", flush=True)
                self.write_outputs()
        finally:
            if self.decoder is not None and self.decoder.poll() is None:
                self._stop(self.decoder)
        self.write_outputs(final=True)
        shutil.rmtree(self.work, ignore_errors=True)
        print(f"# wrote {self.out} in {time.time() - self.started:.1f} s")
        return 0

    def start_data(self) -> None:
        """The CIFAR-10 batches in ``WORK/cifar``: decoded from the carried JPEG files in the
        background (real run), or random images (dry run without ``--data``); the models
        of an earlier run (``resume.tar.gz``) in ``WORK/full``."""
        dest = self.work / "cifar"
        if self.args.dry_run and not self.args.data:  # no prepared folder is read
            write_random_cifar(dest, train=40, test=32)
            self.data_note = "random images in the CIFAR-10 layout (dry run)"
            return
        carry = Path(self.args.data) if self.args.data else ROOT / CARRY
        resume = carry / "resume.tar.gz"
        if resume.is_file():
            with tarfile.open(resume) as tar:
                tar.extractall(self.work / "full", filter="data")
            self.resumed = sorted(p.name for p in (self.work / "full" / "models").iterdir())
        if (carry / "source.json").is_file():
            self.source = json.loads((carry / "source.json").read_text())
        if not (carry / JPEG_PACK).is_file():
            self.data_problem = (
                f"no CIFAR-10: {carry} holds no {JPEG_PACK} (run "
                f"'python analysis/gpu_run.py --prepare' and carry {CARRY})"
            )
            return
        try:
            command = decode_command(carry, self.work / "shared", dest)
        except Exception as exc:  # recorded: the train and attack parts say why they skip
            self.data_problem = f"the carried CIFAR-10 did not unpack: {type(exc).__name__}: {exc}"
            return
        log = open(self.work / "decode.log", "w")
        self.decoder = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.data_note = f"CIFAR-10 decoded from {carry / JPEG_PACK} by the shared decoder"

    def _data_ready(self, deadline: float) -> str | None:
        """None when the batches are there, else why not."""
        if self.decoder is not None:
            while self.decoder.poll() is None and time.time() < deadline:
                time.sleep(self.sizes.poll_s)
            if self.decoder.poll() is None:
                return "the CIFAR-10 decoder did not finish in time"
            if self.decoder.returncode != 0:
                return f"the CIFAR-10 decoder failed: {self._log_tail('decode', 1500)}"
        if not (self.work / "cifar" / "cifar-10-batches-py" / "test_batch").is_file():
            return self.data_problem or "no CIFAR-10 batches"
        return None

    def _one_child(self, part: str, deadline: float) -> dict:
        proc = self._spawn(part, deadline)
        status = self._wait(proc, deadline)
        self.rows[part] = self._read_rows(part)
        record = {"status": status, "rows": len(self.rows[part]), "exit_code": proc.returncode}
        if status == "failed":
            record["error"] = self._log_tail(part)
        return record

    def part_tests(self, deadline):
        record = self._one_child("tests", deadline)
        cases = [r for r in self.rows["tests"] if not r.get("summary")]
        record["counts"] = {}
        for case in cases:
            record["counts"][case["outcome"]] = record["counts"].get(case["outcome"], 0) + 1
        failed = [c["test"] for c in cases if c["outcome"] in ("failed", "error")]
        record["failed_tests"] = failed
        return record

    def part_bench(self, deadline):
        return self._one_child("bench", deadline)

    def part_geometry(self, deadline):
        record = self._one_child("geometry", deadline)
        errors = {r["case"]: r["error"] for r in self.rows["geometry"] if "error" in r}
        if errors:
            record["case_errors"] = errors
        return record

    def part_compile(self, deadline):
        return self._one_child("compile", deadline)

    def part_attack(self, deadline):
        why = self._data_ready(deadline)
        if why is not None:
            return {"status": "skipped", "reason": why}
        models = self.work / "full" / "models"
        if not models.is_dir() or not any(models.iterdir()):
            return {"status": "skipped", "reason": "no trained model"}
        record = self._one_child("attack", deadline)
        self.pack()
        return record

    def part_train(self, deadline):
        """Train the models of :func:`train_order`, ``train_jobs`` at a time; stop each after
        the last epoch that fits before ``deadline``."""
        why = self._data_ready(deadline)
        if why is not None:
            return {"status": "skipped", "reason": why}
        queue = list(train_order(run_profile(self.sizes.dry)))
        count = self.args.train_models or self.sizes.train_models
        if count:
            queue = queue[:count]
        running: dict[str, dict] = {}
        while (queue or running) and time.time() < deadline:
            while queue and len(running) < self.sizes.train_jobs:
                name = queue.pop(0)
                resumed = self._epochs(name)  # the epochs of a resumed model's log
                running[name] = {"proc": self._spawn("train", deadline, name), "mark": time.time()}
                running[name]["epochs"] = resumed
                self.models[name] = {"status": "running", "started_s": self._since()}
                if resumed:
                    self.models[name]["resumed_at_epoch"] = resumed
            for name in list(running):
                state = running[name]
                if state["proc"].poll() is not None:
                    self._finish_model(name, state, _status(state["proc"].returncode))
                    del running[name]
                    continue
                epochs = self._epochs(name)
                if epochs > state["epochs"]:
                    now = time.time()
                    per_epoch = (now - state["mark"]) / (epochs - state["epochs"])
                    state.update(epochs=epochs, mark=now, per_epoch=per_epoch)
                    if now + 1.15 * per_epoch + self.sizes.grace_s > deadline:
                        self._checkpoint_written(name)
                        self._stop(state["proc"])
                        self._finish_model(name, state, "stopped", "the next epoch would not fit")
                        del running[name]
            if not queue and not running:
                break
            time.sleep(self.sizes.poll_s)
        for name, state in running.items():
            self._stop(state["proc"])
            self._finish_model(name, state, "stopped", "the train part's time was up")
        for name in queue:
            self.models[name] = {"status": "skipped", "reason": "no time left"}
        self.pack()
        statuses = {m["status"] for m in self.models.values()}
        status = "failed" if "failed" in statuses else "done"
        if statuses & {"stopped", "skipped"}:
            status = "stopped"
        return {"status": status, "models": {k: v["status"] for k, v in self.models.items()}}

    def _since(self) -> float:
        return round(time.time() - self.started, 1)

    def _epochs(self, name: str) -> int:
        log = self.work / "full" / "models" / name / "log.jsonl"
        if not log.is_file():
            return 0
        return sum(1 for line in log.read_text().splitlines() if line.strip())

    def _checkpoint_written(self, name: str, wait: float = 10.0) -> None:
        """Wait (at most ``wait`` s) until the checkpoint is newer than the log line: the
        epoch's state is then on disk (the log line is appended first)."""
        from deepframe.train import CHECKPOINT_NAME

        folder = self.work / "full" / "models" / name
        log, state = folder / "log.jsonl", folder / "train" / CHECKPOINT_NAME
        until = time.time() + wait
        while time.time() < until:
            if state.is_file() and state.stat().st_mtime >= log.stat().st_mtime:
                return
            time.sleep(0.05)

    def _finish_model(self, name: str, state: dict, status: str, reason: str | None = None):
        folder = self.work / "full" / "models" / name
        record = self.models[name]
        record.update(status=status, ended_s=self._since(), epochs=self._epochs(name))
        if "per_epoch" in state:
            record["last_epoch_wall_s"] = round(state["per_epoch"], 2)
        if reason:
            record["reason"] = reason
        if status == "failed":
            record["error"] = self._log_tail(f"train-{name}")
        log = folder / "log.jsonl"
        if log.is_file():
            record["log"] = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        result = folder / "result.json"
        if result.is_file():
            record["result"] = json.loads(result.read_text())

    def pack(self) -> None:
        """``models.tar.gz``: the models folder (training state included); without the
        training state when that would pass the 16 MiB a file may have."""
        models = self.work / "full" / "models"
        if not models.is_dir() or not any(models.iterdir()):
            return
        target = self.out / "models.tar.gz"
        pack_models(models, target)
        if target.stat().st_size >= FILE_LIMIT:
            pack_models(models, target, state=False)
            self.packed_note = "training state left out: the archive would pass 16 MiB"

    # ---------------------------------------------------------------- outputs

    def meta(self) -> dict:
        import bench
        import torch

        meta = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started)),
            "budget_s": self.budget,
            "wall_s": round(time.time() - self.started, 1),
            "dry_run": self.args.dry_run,
            "device": bench.device_name(self.args.device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "source": self.source or _git_state(ROOT),
            "data": self.data_note or self.data_problem,
            "resumed_models": self.resumed,
        }
        if self.packed_note:
            meta["archive"] = self.packed_note
        return meta

    def write_outputs(self, final: bool = False) -> None:
        import bench

        meta = self.meta()
        measured = self.rows["bench"] + self.rows["geometry"] + self.rows["compile"]
        found = bench.targets(measured)
        _write(self.out / "bench.json", {"meta": meta, "rows": measured, "targets": found})
        _write(self.out / "tests.json", {"meta": meta, "tests": self.rows["tests"]})
        profile = run_profile(self.sizes.dry)
        _write(
            self.out / "train.json",
            {
                "meta": meta,
                "profile": dataclasses.asdict(profile),
                "order": train_order(profile),
                "models": self.models,
                "attacks": self.rows["attack"],
                "autoattack": _autoattack_note(self.rows["attack"]),
            },
        )
        summary = {
            "meta": meta,
            "parts": self.parts,
            "targets": found,
            "files": {},
            "final": final,
        }
        self.write_log()
        (self.out / "report.md").write_text(report(summary, self.rows, self.models))
        summary["files"] = check_layout(self.out)
        _write(self.out / "summary.json", summary)

    def write_log(self) -> None:
        """``log.txt``: every part's output, each cut to its head and tail if long."""
        logs = sorted(self.work.glob("*.log"), key=lambda p: p.stat().st_mtime)
        share = LOG_LIMIT // max(1, len(logs))
        with open(self.out / "log.txt", "w") as f:
            for path in logs:
                text = path.read_text(errors="replace")
                if len(text) > share:
                    cut = len(text) - share
                    half = share // 2
                    text = f"{text[:half]}\n[... {cut} characters left out ...]\n{text[-half:]}"
                f.write(f"==== {path.stem} ====\n{text}\n")


def _autoattack_note(rows: list) -> str:
    """Which attack ran beside PGD, in words (train.json's ``autoattack``)."""
    rows = [r for r in rows if r.get("attack") == "autoattack"]
    ran = [r for r in rows if "accuracy" in r]
    if ran:
        return f"ran: df.autoattack, {ran[0]['version']} suite, on {len(ran)} model(s)"
    for key in ("skipped", "error"):
        found = [r[key] for r in rows if key in r]
        if found:
            return f"not run ({found[0]}): PGD only"
    return "not reached: PGD only"


def _status(code: int | None) -> str:
    return {0: "done", STOPPED: "stopped"}.get(code, "failed")


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


def pack_models(models: Path, target: Path, state: bool = True) -> None:
    """``models/`` of a run folder as one ``.tar.gz`` (``state=False``: without ``train/``)."""
    target.parent.mkdir(parents=True, exist_ok=True)

    def keep(info):
        return None if not state and "/train/" in f"/{info.name}/" else info

    partial = target.with_name(target.name + ".part")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(models, arcname="models", filter=keep)
    os.replace(partial, target)


NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_layout(out: Path) -> dict:
    """The files under ``out`` against what the device tool brings back: name, bytes, and
    ``problems`` (more than 8 files, deeper than two folders, 16 MiB or more, odd names)."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES} come back)")
    listing = {}
    for p in files:
        rel = p.relative_to(out)
        size = p.stat().st_size
        listing[str(rel)] = size
        if len(rel.parts) > 3:
            problems.append(f"{rel}: deeper than two folders")
        if size >= FILE_LIMIT:
            problems.append(f"{rel}: {size} bytes (at most 16 MiB)")
        if not all(NAME.match(part) for part in rel.parts):
            problems.append(f"{rel}: a name the tool does not bring back")
    return {"files": listing, "problems": problems}


# --------------------------------------------------------------------------- report


def report(summary: dict, rows: dict, models: dict) -> str:
    """``report.md``: the run's parts, tests, benchmark rows and training, as tables."""
    meta = summary["meta"]
    lines = [
        "# GPU run (analysis/gpu_run.py)",
        "",
        f"{meta['date']}; {meta['device']}; torch {meta['torch']} (CUDA {meta['cuda']}), "
        f"Python {meta['python']}; source {meta['source']}; budget {meta['budget_s']:.0f} s, "
        f"{meta['wall_s']:.0f} s so far{' (dry run)' if meta['dry_run'] else ''}.",
        "",
        "| part | status | seconds | limit s | note |",
        "|---|---|---|---|---|",
    ]
    for name, part in summary["parts"].items():
        note = part.get("reason") or part.get("failed_tests") or part.get("case_errors") or ""
        if part["status"] == "failed" and not note:
            note = "see log.txt"
        lines.append(
            f"| {name} | {part['status']} | {part.get('seconds', '')} | {part['limit_s']} | "
            f"{str(note)[:200]} |"
        )
    tests = [r for r in rows["tests"] if r.get("summary")]
    if tests:
        lines += [
            "",
            "## Tests",
            "",
            "| selection | exit code | counts | seconds |",
            "|---|---|---|---|",
        ]
        for r in tests:
            lines.append(
                f"| {r['selection']} | {r['exit_code']} | {r['counts']} | {r['seconds']} |"
            )
    solver = [r for r in rows["bench"] if r.get("section") == "solvers"]
    if solver:
        lines += [
            "",
            "## Solvers: one training step",
            "",
            "| graph | batch | method | T | seconds | x floor | x plain | x op floor "
            "| train img/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in solver:
            lines.append(
                f"| {r['graph']} | {r['batch']} | {r['method']} | {r['T']} | {r['seconds']:.4f} "
                f"| {r['x_floor']:.3f} | {r['x_plain']:.2f} | {r['x_op_floor']:.2f} "
                f"| {r['train_images_per_s']:.0f} |"
            )
    options = [r for r in rows["bench"] + rows["compile"] if r.get("section") == "options"]
    if options:
        lines += [
            "",
            "## Options: DP-res",
            "",
            "| batch | T | variant | train img/s | x plain | x op floor | infer img/s | "
            "CUDA graph infer img/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in options:
            graphed = r.get("cuda_graph_infer_images_per_s")
            lines.append(
                f"| {r['batch']} | {r['T']} | {r['variant']} | {r['train_images_per_s']:.0f} | "
                f"{r['x_plain_train']:.3f} | {r['x_op_floor_train']:.2f} | "
                f"{r['infer_images_per_s']:.0f} | {'' if graphed is None else f'{graphed:.0f}'} |"
            )
    geometry = rows["geometry"]
    if geometry:
        lines += ["", "## Exact geometry", "", "| case | atoms | seconds | peak MiB | coherence |"]
        lines.append("|---|---|---|---|---|")
        for r in geometry:
            if "error" in r:
                lines.append(f"| {r['case']} | not built: {r['error'][:200]} | | | |")
            else:
                lines.append(
                    f"| {r['case']} | {r['atoms']:,} | {r['structured_s']} | "
                    f"{r['peak_structured_mib']} | {r['coherence']:.6f} |"
                )
    if models:
        lines += ["", "## Training (a shard of the profile in train.json, seed 0)", ""]
        lines += ["| model | status | epochs | last val acc | epoch wall s | note |"]
        lines.append("|---|---|---|---|---|---|")
        for name, m in models.items():
            log = m.get("log") or []
            val = log[-1].get("val_acc") if log else None
            val = "" if val is None else f"{val:.4f}"
            lines.append(
                f"| {name} | {m['status']} | {m.get('epochs', 0)} | {val} | "
                f"{m.get('last_epoch_wall_s', '')} | {m.get('reason', '')} |"
            )
    attacks = rows["attack"]
    if attacks:
        lines += ["", "## Attacks on the models as they stand", ""]
        lines += [
            "| model | epoch | attack | images | accuracy | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for r in (r for r in attacks if "epoch" in r):
            acc = r.get("accuracy")
            shown = r.get("skipped") or r.get("error", "") if acc is None else f"{acc:.4f}"
            lines.append(
                f"| {r['model']} | {r['epoch']}/{r['of_epochs']} | {r['attack']} | {r['images']} "
                f"| {shown} | {r['seconds']} |"
            )
    errors = [r for part in ("bench", "compile") for r in rows[part] if r.get("section") == "error"]
    errors += [r for r in attacks if "error" in r]
    if errors:
        lines += ["", "## Errors (recorded; the run went on)", ""]
        lines += [f"- {json.dumps({k: v for k, v in r.items() if k != 'section'})}" for r in errors]
    if summary["targets"]:
        lines += ["", "## Targets (measured, not asserted)", ""]
        for t in summary["targets"]:
            mark = "met" if t["met"] else "NOT met"
            lines.append(f"- {t['target']}: {t['measured']} ({t['where']}) -- {mark}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder of the outputs (at most 8 files)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="wall-clock seconds")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, seconds")
    parser.add_argument("--device", default=None, help="default cuda (dry run: cpu)")
    parser.add_argument(
        "--parts", type=lambda s: s.split(","), help="comma-separated parts to run (default all)"
    )
    parser.add_argument(
        "--train-models", type=int, default=None, help="train at most the first N models"
    )
    parser.add_argument("--data", help=f"the prepared folder (default ./{CARRY})")
    parser.add_argument("--prepare", action="store_true", help=f"write ./{CARRY} and stop")
    parser.add_argument("--shared", help="--prepare: the shared folder (default ../shared)")
    parser.add_argument("--resume-from", help="--prepare: a run folder whose models to continue")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--fail", help=argparse.SUPPRESS)  # tests: make one part fail
    args = parser.parse_args(argv)

    if args.prepare:
        done = prepare(
            ROOT,
            Path(args.shared) if args.shared else None,
            Path(args.resume_from) if args.resume_from else None,
        )
        size = done["size"]
        print(
            f"wrote {done['carry']} ({size['carry'][CARRY] / 2**20:.1f} MiB) for commit "
            f"{done['source']['commit']}{' (dirty tree)' if done['source']['dirty'] else ''}; "
            f"the tree that travels: {size['total'] / 2**20:.1f} MiB of 64 MiB"
        )
        return 0
    if args.child:
        return run_child(args)
    if not args.out:
        parser.error("--out is required")
    if args.device is None:
        import torch

        if args.dry_run:
            args.device = "cpu"
        elif torch.cuda.is_available():
            args.device = "cuda"
        else:
            parser.error("no CUDA device here: run on the GPU machine, or pass --dry-run")
    if args.parts:
        unknown = sorted(set(args.parts) - {p.name for p in PARTS})
        if unknown:
            parser.error(f"--parts: unknown {unknown}; the parts are {[p.name for p in PARTS]}")
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return Run(args).run()


if __name__ == "__main__":
    raise SystemExit(main())
