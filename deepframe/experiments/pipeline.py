"""The reproduction end to end: train (sharded, parallel, resumable), merge, measure, report."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import platform
import shutil
import sys
import time
import uuid
from pathlib import Path

import torch

from .._io import json_hash, read_json, write_json
from .measure import MEASURE_VERSION, measure_model, select_architecture
from .profiles import PROFILES, Profile, model_specs, select_shard
from .runner import run_model

__all__ = ["reproduce", "merge", "parse_shard", "collect", "RESULT_TIMING"]

#: Files of a model folder that a merge copies (not the training state).
_EXPORTED = ("result.json", "log.jsonl", "model.pt")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (1-based) as ``(i, n)``; None stays None."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 1/3), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard {text}: need 1 <= i <= n")
    return i, n


def _profile(profile: str | Profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(PROFILES)}")
    return PROFILES[profile]


def _environment(threads: int, jobs: int) -> dict:
    import numpy

    from .. import __version__

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {
        "deepframe": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "device": device,
        "jobs": jobs,
        "threads_per_job": threads,
    }


def _worker(spec, profile, out_dir, data_dir, threads, progress):
    torch.set_num_threads(threads)
    result, fresh = run_model(spec, profile, out_dir, data_dir, progress=progress)
    return spec.name, result, fresh


def _train_all(specs, prof, out, data_dir, jobs, progress, on_model=None) -> tuple[dict, int]:
    """Run every spec (``jobs`` processes at once); ``({name: result}, trained_now)``.

    ``on_model(trained_now)``, if given, is called after each model finishes.
    """
    from tqdm.auto import tqdm

    results: dict[str, dict] = {}
    trained = 0
    bar = tqdm(total=len(specs), desc="models", unit="model", disable=not progress)

    def done(name, result, fresh):
        nonlocal trained
        results[name] = result
        trained += fresh
        if on_model is not None:
            on_model(trained)
        bar.update(1)
        if progress:
            bar.write(
                f"{name:>22}: clean {result['clean_acc']:.3f}  FGSM {result['fgsm_acc']:.3f}  "
                f"PGD {result['pgd_acc']:.3f}  ({'trained' if fresh else 'reused'})"
            )

    if jobs <= 1:
        old = torch.get_num_threads()
        try:
            for spec in specs:
                bar.set_postfix_str(spec.name)
                done(*_worker(spec, prof, out, data_dir, prof.threads, False))
        finally:
            torch.set_num_threads(old)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [
                pool.submit(_worker, s, prof, out, data_dir, prof.threads, False) for s in specs
            ]
            for future in as_completed(futures):
                done(*future.result())
    bar.close()
    return results, trained


def reproduce(
    out_dir: str | Path,
    *,
    profile: str | Profile = "quick",
    data_dir: str | Path | None = None,
    seeds: tuple[int, ...] | None = None,
    shard: tuple[int, int] | str | None = None,
    only: str | None = None,
    jobs: int = 1,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Train, attack and measure the models of a profile, then write figures and report.

    Every model is trained with :func:`deepframe.train.train` and attacked
    with FGSM and PGD (see :func:`deepframe.experiments.runner.run_model`);
    a model whose ``result.json`` records the same configuration is reused,
    an interrupted one resumes from its checkpoint. With ``shard=(i, n)``
    only that shard's models are trained (``report`` is then off unless the
    shard holds every model); join shards with :func:`merge`.

    Parameters
    ----------
    out_dir : str or Path
        Run folder (created; resumable).
    profile : str or Profile
        ``"quick"`` (digits, CPU minutes), ``"cifar-small"`` (CIFAR-10 subset,
        CPU hours), ``"full"`` (paper scale, GPU), ``"test"`` (smoke test).
    data_dir : str or Path, optional
        CIFAR-10 folder for the CIFAR profiles.
    seeds : tuple of int, optional
        Override the profile's seeds.
    shard : (i, n) or "i/n", optional
        Train only shard i of n (1-based).
    only : str, optional
        Comma-separated shell patterns of model names to train (e.g.
        ``"ff-*,adv-*"``); implies no report.
    jobs : int
        Models trained at once, each in its own process with
        ``profile.threads`` threads.
    progress : bool
        Progress bars and one line per model.
    report : bool
        Measure and write the figures, ``results.json`` and ``report.md``
        (when every model of the profile is present).

    Returns
    -------
    dict
        ``{"trained_now": int, "models": {name: result}, "results": ... or None}``.
    """
    prof = _profile(profile)
    if isinstance(shard, str):
        shard = parse_shard(shard)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if prof.dataset == "cifar10" and data_dir is None:
        raise ValueError(
            f"profile {prof.name!r} trains on CIFAR-10: pass data_dir (--data-dir), a "
            "cifar-10-batches-py folder (python shared/tools/cifar10_batches.py DEST writes one)"
        )
    out = Path(out_dir)
    (out / "models").mkdir(parents=True, exist_ok=True)
    all_specs = model_specs(prof, seeds)
    specs = select_shard(all_specs, shard)
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        specs = [s for s in specs if any(fnmatch.fnmatch(s.name, p) for p in patterns)]
    call = _CallLog(out, jobs, prof)
    results, trained = _train_all(
        specs, prof, out, data_dir, jobs, progress, lambda n: call.update(n, finished=False)
    )
    call.update(trained, finished=True)
    summary = None
    if report and len(specs) == len(all_specs):
        summary = collect(out, prof, data_dir=data_dir, seeds=seeds, jobs=jobs, progress=progress)
    return {"trained_now": trained, "models": results, "results": summary}


class _CallLog:
    """This call's entry in ``runs.json`` (the report sums their wall times).

    Written when the call starts and again after every model, so that a call
    interrupted before its end (a session that stops) still leaves its wall
    time up to its last finished model; ``"finished"`` is set at its end.
    """

    def __init__(self, out: Path, jobs: int, prof: Profile):
        self.out, self.started = out, time.perf_counter()
        self.entry = {
            "call": uuid.uuid4().hex,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "wall_seconds": 0.0,
            "trained_now": 0,
            "jobs": jobs,
            "threads_per_job": prof.threads,
            "finished": None,
            "environment": _environment(prof.threads, jobs),
        }
        self._write()

    def update(self, trained: int, *, finished: bool) -> None:
        self.entry["wall_seconds"] = time.perf_counter() - self.started
        self.entry["trained_now"] = trained
        if finished:
            self.entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._write()

    def _write(self) -> None:
        log = [
            e
            for e in read_json(self.out / "runs.json") or []
            if e.get("call") != self.entry["call"]
        ]
        write_json(self.out / "runs.json", log + [self.entry])


#: Fields of a model's ``result.json`` that depend on the wall clock, not on the
#: computation: two results of one model that differ only there are identical.
RESULT_TIMING = ("train_seconds", "attack_seconds", "wall_seconds_this_call")


def merge(
    dirs: list[str | Path],
    out_dir: str | Path,
    *,
    profile: str | Profile = "quick",
    data_dir: str | Path | None = None,
    seeds: tuple[int, ...] | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> dict:
    """Join the model folders of several (sharded) runs into ``out_dir`` and report.

    Copies each finished model's ``result.json``, ``log.jsonl`` and
    weights-only ``model.pt`` (not the training state) from the folders in
    ``dirs`` into ``out_dir``, keeps the per-call wall times of every part
    (each call once), then :func:`collect` measures and reports.

    Everything is checked before anything is written; the merge is refused
    when

    * a folder is given twice (also under another spelling or through a
      symbolic link), or ``out_dir`` is one of the folders or lies inside one
      (a merge never changes its inputs);
    * a model is found in two folders (or in a folder and in ``out_dir``)
      with different results: with different configuration hashes (not parts
      of one run), or with the same hash and different result records. Two
      records are *identical* when they are equal field by field apart from
      the wall times :data:`RESULT_TIMING` (accuracies, training curve,
      configuration, image counts all equal); an identical model is copied
      from the first folder that holds it;
    * a model's result was recorded for other settings than ``profile``'s
      (another profile, or older code);
    * the folders (with what ``out_dir`` already holds) lack some of the
      profile's models, or a ``result.json`` / ``runs.json`` is not one that
      :func:`reproduce` writes.

    Returns
    -------
    dict
        :func:`collect`'s summary, with ``"merged"``: ``{"folders": {folder:
        [models copied from it]}, "identical": {model: [folders that hold it
        identically]}, "kept": [models already in out_dir], "unfinished":
        {folder: [models without a result there]}}``, also written to
        ``results.json``.

    Raises
    ------
    FileNotFoundError
        A folder without ``models/``.
    ValueError
        Any of the refusals above; the message names the folders and the model.
    """
    prof = _profile(profile)
    if isinstance(dirs, str | os.PathLike):
        dirs = [dirs]
    folders = [Path(d) for d in dirs]
    out = Path(out_dir)
    plan = _plan_merge(folders, out, prof, seeds)
    (out / "models").mkdir(parents=True, exist_ok=True)
    for name, source in plan["copy"].items():
        target = out / "models" / name
        # result.json last: a merge cut short leaves the model unfinished, never half-new
        for file in sorted(_EXPORTED, key=lambda f: f == "result.json"):
            if (source / file).is_file():
                _copy_file(source / file, target / file)
    write_json(out / "runs.json", plan["runs"])
    return collect(
        out,
        prof,
        data_dir=data_dir,
        seeds=seeds,
        jobs=jobs,
        progress=progress,
        merged=plan["record"],
    )


def _copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically (a temporary file, then a rename)."""
    from .._io import atomic_write

    with open(source, "rb") as f:
        atomic_write(target, lambda out: shutil.copyfileobj(f, out))


def _folder_id(path: Path) -> tuple[int, int]:
    """What makes two paths one folder (device and inode: links and spellings agree)."""
    st = path.stat()
    return st.st_dev, st.st_ino


def _finished(folder: Path) -> tuple[dict[str, dict], list[str]]:
    """``({model: result}, [unfinished models])`` of a run folder's ``models/``."""
    done: dict[str, dict] = {}
    unfinished: list[str] = []
    for model in sorted((folder / "models").iterdir()):
        if not model.is_dir():
            continue
        result = read_json(model / "result.json")
        if not isinstance(result, dict) or not (model / "model.pt").is_file():
            unfinished.append(model.name)
            continue
        if not isinstance(result.get("config_hash"), str):
            raise ValueError(
                f"merge: {model / 'result.json'} has no configuration hash: it is not a "
                "result that deepframe reproduce wrote"
            )
        done[model.name] = result
    return done, unfinished


def _differences(a: dict, b: dict) -> str:
    """The fields in which two result records differ, in words (wall times ignored)."""
    keys = [k for k in sorted(set(a) | set(b)) if k not in RESULT_TIMING and a.get(k) != b.get(k)]
    shown = []
    for k in keys[:3]:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, int | float | str | None) and isinstance(vb, int | float | str | None):
            shown.append(f"{k} {va!r} vs {vb!r}")
        else:
            shown.append(k)
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _same_result(a: dict, b: dict) -> bool:
    """Whether two result records are identical apart from their wall times."""
    return not _differences(a, b)


def _check_profile(name: str, where: Path, result: dict, prof: Profile, expected: dict) -> None:
    """Refuse a result recorded for other settings than the profile's (it names the profile
    whose settings match, if one does)."""
    from .runner import config_hash

    if name not in expected or result["config_hash"] == expected[name]:
        return
    hint = ""
    for other in PROFILES.values():
        spec = next((s for s in model_specs(other) if s.name == name), None)
        if other.name != prof.name and spec and config_hash(spec, other) == result["config_hash"]:
            hint = f" (they are profile {other.name!r}'s: merge with --profile {other.name})"
            break
    raise ValueError(
        f"merge: model {name} in {where} was trained with other settings than profile "
        f"{prof.name!r} gives it (configuration {result['config_hash']}, the profile's "
        f"{expected[name]}){hint}; nothing was written"
    )


def _wall_log(path: Path) -> list[dict]:
    """The per-call entries of a ``runs.json`` (none when the file is missing)."""
    if not path.exists():
        return []
    log = read_json(path)
    if not isinstance(log, list) or not all(
        isinstance(e, dict) and isinstance(e.get("wall_seconds"), int | float) for e in log
    ):
        raise ValueError(
            f"merge: {path} is not a list of calls with their wall times, as deepframe "
            "reproduce writes it; nothing was written"
        )
    return log


def _plan_merge(folders: list[Path], out: Path, prof: Profile, seeds) -> dict:
    """Everything :func:`merge` will write, after every check; raises before any write.

    Returns ``{"copy": {model: source folder}, "runs": [...], "record": ...}``.
    """
    from .runner import config_hash

    if not folders:
        raise ValueError("merge: no run folders given")
    for d in folders:
        if not (d / "models").is_dir():
            raise FileNotFoundError(f"merge: {d} is not a reproduction folder (no models/)")
    seen: dict[tuple[int, int], Path] = {}
    for d in folders:
        first = seen.setdefault(_folder_id(d), d)
        if first is not d:
            where = "" if str(first) == str(d) else f" ({d.resolve()})"
            raise ValueError(
                f"merge: {first} and {d} are the same folder{where}: give each run folder "
                "once; nothing was written"
            )
    if out.exists() and not out.is_dir():
        raise ValueError(f"merge: the output {out} is a file; give a folder")
    real_out = out.resolve()
    for d in folders:
        same = real_out == d.resolve() or (out.exists() and _folder_id(out) == _folder_id(d))
        if same or d.resolve() in real_out.parents:
            where = "is" if same else "lies inside"
            raise ValueError(
                f"merge: the output folder {out} {where} the run folder {d}, one of the "
                "folders to merge: a merge must not change its inputs; give a new output "
                "folder; nothing was written"
            )

    specs = model_specs(prof, seeds)
    expected = {s.name: config_hash(s, prof) for s in specs}
    kept: dict[str, dict] = {}
    if (out / "models").is_dir():
        kept, _ = _finished(out)
        for name, result in kept.items():
            _check_profile(name, out, result, prof, expected)
    chosen: dict[str, tuple[Path, dict]] = {}
    record: dict = {"folders": {}, "identical": {}, "kept": [], "unfinished": {}}
    for d in folders:
        done, unfinished = _finished(d)
        record["folders"][str(d)] = []
        record["unfinished"][str(d)] = unfinished
        for name, result in done.items():
            _check_profile(name, d, result, prof, expected)
            earlier = chosen.get(name)
            if earlier is None and name in kept:
                earlier = (out, kept[name])
            if earlier is None:
                chosen[name] = (d, result)
                record["folders"][str(d)].append(name)
                continue
            first, other = earlier
            if other["config_hash"] != result["config_hash"]:
                raise ValueError(
                    f"merge: model {name} has different settings in {first} and {d} "
                    f"(configurations {other['config_hash']} and {result['config_hash']}): "
                    "they are not parts of one run; nothing was written"
                )
            if not _same_result(other, result):
                raise ValueError(
                    f"merge: model {name} (configuration {result['config_hash']}) has "
                    f"different results in {first} and {d} ({_differences(other, result)}): "
                    f"keep the one you trust and remove models/{name} from the other folder; "
                    "nothing was written"
                )
            record["identical"].setdefault(name, [str(first)]).append(str(d))
    record["kept"] = sorted(set(kept) - set(chosen))
    missing = [s.name for s in specs if s.name not in chosen and s.name not in kept]
    if missing:
        have = len(specs) - len(missing)
        raise ValueError(
            f"merge: the folders hold {have} of the {len(specs)} models of profile {prof.name!r}; "
            f"missing {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}: merge the "
            "parts that hold them too; nothing was written"
        )

    runs: dict = {}
    for path in [out / "runs.json", *(d / "runs.json" for d in folders)]:
        for entry in _wall_log(path):
            # one call counted once, however many copies of its entry (the latest wins)
            runs[entry.get("call") or json_hash(entry)] = entry
    copy = {
        name: d / "models" / name
        for name, (d, _) in chosen.items()
        if name not in kept  # identical in the output already: left as it is
    }
    return {"copy": copy, "runs": list(runs.values()), "record": record}


def collect(
    out_dir: str | Path,
    profile: str | Profile,
    *,
    data_dir: str | Path | None = None,
    seeds: tuple[int, ...] | None = None,
    jobs: int = 1,
    progress: bool = True,
    merged: dict | None = None,
) -> dict:
    """Measure every finished model, then write ``results.json``, the figures and the report.

    ``merged`` (what :func:`merge` joined) is recorded in ``results.json``
    under ``"merged"``. Raises ``ValueError`` naming the missing models when
    the folder does not hold every model of the profile.
    """
    from tqdm.auto import tqdm

    from . import claims, figures, report

    prof = _profile(profile)
    out = Path(out_dir)
    started = time.perf_counter()
    specs = model_specs(prof, seeds)
    missing = [
        s.name
        for s in specs
        if not isinstance(read_json(out / "models" / s.name / "result.json"), dict)
        or not (out / "models" / s.name / "model.pt").is_file()
    ]
    if missing:
        raise ValueError(
            f"{out} lacks {len(missing)} of the profile's {len(specs)} models "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): run them "
            "(or merge the shards that hold them) first"
        )
    records = []
    for spec in tqdm(specs, desc="measuring", unit="model", disable=not progress):
        result = read_json(out / "models" / spec.name / "result.json")
        measured = measure_model(spec.name, prof, out, data_dir)
        records.append(_record(spec, prof, result, measured))
    selection = []
    ff_bases = sorted({s.base: s for s in specs if s.family == "ff"}.values(), key=lambda s: s.base)
    for spec, chosen in zip(ff_bases, _select_all(ff_bases, prof, out, jobs, progress)):
        errors = [1 - r["clean_acc"] for r in records if r["base"] == spec.base]
        selection.append(
            {
                "arch": spec.base,
                "family": spec.arch,
                "depth": spec.depth,
                "atoms": chosen["atoms"],
                "min_dfp": chosen["min_dfp"],
                "initial_dfp": chosen["initial_dfp"],
                "steps": chosen["steps"],
                "val_error": math.fsum(errors) / len(errors),
                "val_error_per_seed": errors,
            }
        )
    runs = read_json(out / "runs.json") or []
    summary = {
        "profile": dataclasses.asdict(prof),
        "seeds": sorted({r["seed"] for r in records}),
        "models": records,
        "selection": selection,
        "claims": claims.claims_table(records, selection, prof),
        "measure_version": MEASURE_VERSION,
        "environment": _environment(prof.threads, max([r.get("jobs", 1) for r in runs] or [1])),
        "runs": runs,
        **({"merged": merged} if merged is not None else {}),
        "wall_seconds": math.fsum(r["wall_seconds"] for r in runs),
        "train_seconds": math.fsum(r["train_seconds"] for r in records),
    }
    summary["figures"] = figures.all_figures(summary, out)
    summary["collect_seconds"] = time.perf_counter() - started
    write_json(out / "results.json", summary)
    report.write_report(summary, out)
    return summary


def _select_all(specs, prof: Profile, out: Path, jobs: int, progress: bool) -> list[dict]:
    """:func:`select_architecture` of every spec, ``jobs`` processes at once, in order."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(specs), desc="model selection", unit="arch", disable=not progress)
    if jobs <= 1:
        chosen = []
        for spec in specs:
            chosen.append(select_architecture(spec, prof, out))
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = [pool.submit(_select_worker, s, prof, out) for s in specs]
            for future in futures:
                future.add_done_callback(lambda _: bar.update(1))
            chosen = [f.result() for f in futures]
    bar.close()
    return chosen


def _select_worker(spec, prof: Profile, out: Path) -> dict:
    torch.set_num_threads(prof.threads)
    return select_architecture(spec, prof, out)


def _record(spec, prof: Profile, result: dict, measured: dict) -> dict:
    """One entry of ``results.json``'s ``"models"``."""
    geometry = measured["geometry"]
    return {
        "name": spec.name,
        "base": spec.base,
        "family": spec.family,
        "arch": spec.arch,
        "method": spec.method,
        "skips": spec.skips,
        "depth": spec.depth,
        "iterations": spec.iterations,
        "paper_iterations": spec.iterations + 1,
        "seed": spec.seed,
        "adversarial_training": spec.adversarial,
        "train_images": result["train_images"],
        "eval_images": result["eval_images"],
        "epochs": len(result["curve"]),
        "eps": result["config"]["fgsm_eps"],
        "pgd": result["pgd"],
        "train_acc": result["train_acc"],
        "clean_acc": result["clean_acc"],
        "fgsm_acc": result["fgsm_acc"],
        "pgd_acc": result["pgd_acc"],
        "test_clean_acc": measured["held_out"]["clean_acc"],
        "test_images": measured["held_out"]["images"],
        "checkpoint": f"models/{spec.name}/model.pt",
        "parameters": result["parameters"],
        "mutual_coherence": geometry["mutual_coherence"],
        "deep_frame_potential": geometry["deep_frame_potential"],
        "frame_potential": geometry["frame_potential"],
        "dictionary_shape": geometry["shape"],
        "trace": measured["trace"],
        "curve": result["curve"],
        "train_seconds": result["train_seconds"],
        "attack_seconds": result["attack_seconds"],
    }
