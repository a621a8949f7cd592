"""Merges that disagree (issue 21, item 4): refused before anything is written.

The run folders here are small fakes of what ``deepframe reproduce`` writes (a
``result.json`` keyed by the model's configuration hash, a ``model.pt``, a
``log.jsonl`` per model and a ``runs.json``): the checks of a merge read only
those. Where a merge goes through, :func:`deepframe.experiments.collect` (the
measuring and the report, tested in tests/test_experiments.py) is replaced by a
stub that returns what it was given.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest

import deepframe.experiments.pipeline as pipeline
from deepframe.cli import main
from deepframe.experiments import PROFILES, merge, model_specs
from deepframe.experiments.runner import config_hash

PROFILE = PROFILES["test"]
SPECS = model_specs(PROFILE)
NAMES = [s.name for s in SPECS]
HALF = len(NAMES) // 2


def _result(spec, **changes) -> dict:
    result = {
        "name": spec.name,
        "config_hash": config_hash(spec, PROFILE),
        "config": {"seed": spec.seed},
        "clean_acc": 0.75,
        "fgsm_acc": 0.5,
        "pgd_acc": 0.25,
        "curve": [{"epoch": 1, "train_loss": 1.5, "val_acc": 0.7}],
        "train_seconds": 3.0,
        "attack_seconds": 1.0,
        "wall_seconds_this_call": 4.5,
    }
    result.update(changes)
    return result


def _run_folder(root: Path, names, *, tag: str = "", edit=None) -> Path:
    """A finished run folder holding the models ``names``; ``edit(name, result)`` may change
    a result record before it is written."""
    root.mkdir(parents=True)
    for spec in SPECS:
        if spec.name not in names:
            continue
        folder = root / "models" / spec.name
        folder.mkdir(parents=True)
        result = _result(spec)
        if edit is not None:
            edit(spec.name, result)
        (folder / "result.json").write_text(json.dumps(result))
        (folder / "model.pt").write_bytes(f"weights of {spec.name}{tag}".encode())
        (folder / "log.jsonl").write_text(json.dumps({"epoch": 1, "time": 0.5}) + "\n")
    calls = [{"call": uuid.uuid4().hex, "wall_seconds": 10.0, "trained_now": len(names)}]
    (root / "runs.json").write_text(json.dumps(calls))
    return root


def _snapshot(root: Path) -> dict:
    """Every file's hash and modification time, and every folder, under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
        else:
            out[str(path.relative_to(root))] = "link" if path.is_symlink() else "folder"
    return out


@pytest.fixture
def collected(monkeypatch):
    """Replace the measuring and the report by a stub; the calls it got are listed here."""
    calls = []

    def collect(out, prof, **kwargs):
        calls.append((Path(out), kwargs))
        return {"models": sorted(p.name for p in (Path(out) / "models").iterdir()), **kwargs}

    monkeypatch.setattr(pipeline, "collect", collect)
    return calls


@pytest.fixture
def halves(tmp_path) -> tuple[Path, Path]:
    """Two shards of the test profile: A holds the first half of its models, B the rest."""
    return (
        _run_folder(tmp_path / "A", NAMES[:HALF]),
        _run_folder(tmp_path / "B", NAMES[HALF:], tag=" from B"),
    )


def _refused(tmp_path, dirs, out, fragments, error=ValueError):
    before = _snapshot(tmp_path)
    with pytest.raises(error) as info:
        merge(dirs, out, profile="test", progress=False)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed
    return message


# --------------------------------------------------------------------------- merges that go through


def test_a_merge_says_what_came_from_where(halves, tmp_path, collected):
    a, b = halves
    out = tmp_path / "out"
    summary = merge([a, b], out, profile="test", progress=False)
    merged = summary["merged"]
    assert merged["folders"] == {str(a): sorted(NAMES[:HALF]), str(b): sorted(NAMES[HALF:])}
    assert merged["identical"] == {} and merged["kept"] == []
    assert collected[0][1]["merged"] is merged  # recorded in results.json by collect
    for name in NAMES:
        source = a if name in NAMES[:HALF] else b
        for file in ("result.json", "model.pt", "log.jsonl"):
            assert (out / "models" / name / file).read_bytes() == (
                source / "models" / name / file
            ).read_bytes()
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 2


def test_identical_results_in_two_folders_are_fine(tmp_path, collected):
    """Identical: equal result records apart from the wall times; copied from the first."""
    shared = NAMES[0]

    def slower(name, result):
        if name == shared:
            result.update(train_seconds=99.0, attack_seconds=9.0, wall_seconds_this_call=120.0)

    a = _run_folder(tmp_path / "A", NAMES[:HALF])
    b = _run_folder(tmp_path / "B", [shared, *NAMES[HALF:]], tag=" from B", edit=slower)
    out = tmp_path / "out"
    merged = merge([a, b], out, profile="test", progress=False)["merged"]
    assert merged["identical"] == {shared: [str(a), str(b)]}
    assert shared in merged["folders"][str(a)] and shared not in merged["folders"][str(b)]
    assert (out / "models" / shared / "model.pt").read_bytes() == (
        a / "models" / shared / "model.pt"
    ).read_bytes()


def test_merging_again_into_the_same_output_changes_nothing(halves, tmp_path, collected):
    a, b = halves
    out = tmp_path / "out"
    merge([a, b], out, profile="test", progress=False)
    before = _snapshot(out)
    merged = merge([a, b], out, profile="test", progress=False)["merged"]
    assert sorted(merged["kept"]) == sorted(NAMES)
    assert merged["identical"] == {n: [str(out), str(a if n in NAMES[:HALF] else b)] for n in NAMES}
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != "runs.json"} == {
        k: v for k, v in before.items() if k != "runs.json"
    }
    assert len(json.loads((out / "runs.json").read_text())) == 2  # each call counted once


# --------------------------------------------------------------------------- refusals


def test_the_same_model_with_different_results_is_refused(tmp_path):
    shared = NAMES[0]

    def other(name, result):
        if name == shared:
            result["clean_acc"] = 0.5

    a = _run_folder(tmp_path / "A", NAMES[:HALF])
    b = _run_folder(tmp_path / "B", [shared, *NAMES[HALF:]], edit=other)
    message = _refused(
        tmp_path,
        [a, b],
        tmp_path / "out",
        [f"model {shared} (configuration ", f"different results in {a} and {b}"],
    )
    assert "clean_acc 0.75 vs 0.5" in message and "nothing was written" in message


def test_a_different_curve_is_a_different_result(tmp_path):
    shared = NAMES[-1]

    def other(name, result):
        if name == shared:
            result["curve"][0]["train_loss"] = 1.25

    a = _run_folder(tmp_path / "A", [shared, *NAMES[:HALF]], edit=other)
    b = _run_folder(tmp_path / "B", NAMES[HALF:])
    _refused(tmp_path, [a, b], tmp_path / "out", [f"different results in {a} and {b} (curve)"])


def test_the_same_name_with_other_settings_is_refused(tmp_path):
    shared = NAMES[0]

    def other(name, result):
        if name == shared:
            result["config_hash"] = "0123456789abcdef"

    a = _run_folder(tmp_path / "A", NAMES)
    b = _run_folder(tmp_path / "B", [shared], edit=other)
    _refused(
        tmp_path,
        [a, b],
        tmp_path / "out",
        [f"model {shared} in {b} was trained with other settings than profile 'test'"],
    )


def test_a_result_of_another_profile_names_that_profile(tmp_path):
    quick = PROFILES["quick"]
    spec = next(s for s in model_specs(quick) if s.name in NAMES)

    def other(name, result):
        if name == spec.name:
            result["config_hash"] = config_hash(spec, quick)

    a = _run_folder(tmp_path / "A", NAMES, edit=other)
    _refused(tmp_path, [a], tmp_path / "out", ["merge with --profile quick"])


@pytest.mark.parametrize("spelling", ["same", "dot", "link"])
def test_a_folder_merged_with_itself_is_refused(halves, tmp_path, spelling):
    a, _ = halves
    twin = {"same": a, "dot": a.parent / "." / a.name / "models" / "..", "link": tmp_path / "L"}
    if spelling == "link":
        os.symlink(a, twin["link"])
    _refused(tmp_path, [a, twin[spelling]], tmp_path / "out", [f"{a} and ", "are the same folder"])


@pytest.mark.parametrize("where", ["input", "link", "inside"])
def test_an_output_among_the_inputs_is_refused(halves, tmp_path, where):
    a, b = halves
    if where == "link":
        os.symlink(b, tmp_path / "L")
    out = {"input": b, "link": tmp_path / "L", "inside": b / "models" / "merged"}[where]
    verb = "lies inside" if where == "inside" else "is"
    _refused(tmp_path, [a, b], out, [f"the output folder {out} {verb} the run folder {b}"])


def test_a_merge_that_lacks_models_is_refused_before_writing(halves, tmp_path):
    a, _ = halves
    _refused(
        tmp_path,
        [a],
        tmp_path / "out",
        [f"the folders hold {HALF} of the {len(NAMES)} models of profile 'test'", NAMES[HALF]],
    )


def test_the_output_holding_another_result_of_a_model_is_refused(halves, tmp_path):
    a, b = halves
    out = _run_folder(
        tmp_path / "out", [NAMES[0]], edit=lambda name, result: result.update(pgd_acc=0.0)
    )
    _refused(tmp_path, [a, b], out, [f"different results in {out} and {a}"])


def test_damaged_result_and_runs_files_are_refused(halves, tmp_path):
    a, b = halves
    result = a / "models" / NAMES[0] / "result.json"
    result.write_text(json.dumps({"clean_acc": 0.5}))
    _refused(tmp_path, [a, b], tmp_path / "out", [f"{result} has no configuration hash"])
    result.write_text(json.dumps(_result(SPECS[0])))
    (b / "runs.json").write_text(json.dumps({"calls": 3}))
    _refused(tmp_path, [a, b], tmp_path / "out", [f"{b / 'runs.json'} is not a list of calls"])


def test_a_folder_without_models_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(
        tmp_path, [tmp_path / "empty"], tmp_path / "out", ["not a reproduction folder"],
        error=FileNotFoundError,
    )  # fmt: skip


# --------------------------------------------------------------------------- the command line


def _cli_refused(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEEPFRAME_DEBUG", raising=False)
    before = _snapshot(tmp_path)
    assert main(["reproduce", "--profile", "test", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert errors[0].startswith("deepframe reproduce: error: merge: ") and fragment in errors[0]
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--merge", "A", "A", "--out", "C"], "A and A are the same folder"),
        (["--merge", "A", "./A/", "--out", "C"], "are the same folder"),
        (["--merge", "A", "B", "--out", "A"], "the output folder A is the run folder A"),
        (["--merge", "A", "B", "--out", "B/models/C"], "lies inside the run folder B"),
        (["--merge", "A", "--out", "C"], f"the folders hold {HALF} of the {len(NAMES)} models"),
        (["--merge", "A", "D", "--out", "C"], f"model {NAMES[0]} (configuration "),
    ],
    ids=["twice", "spelled", "out is input", "out inside", "incomplete", "disagree"],
)
def test_the_command_line_refuses_in_one_line(
    halves, tmp_path, monkeypatch, capsys, argv, fragment
):
    _run_folder(
        tmp_path / "D",
        [NAMES[0], *NAMES[HALF:]],
        edit=lambda name, result: result.update(fgsm_acc=0.0),
    )
    _cli_refused(tmp_path, monkeypatch, capsys, argv, fragment)


def test_the_command_line_message_names_both_folders(halves, tmp_path, monkeypatch, capsys):
    _run_folder(
        tmp_path / "D",
        [NAMES[0], *NAMES[HALF:]],
        edit=lambda name, result: result.update(fgsm_acc=0.0),
    )
    fragment = f"model {NAMES[0]} (configuration {config_hash(SPECS[0], PROFILE)}) has "
    fragment += "different results in A and D (fgsm_acc 0.5 vs 0.0)"
    _cli_refused(tmp_path, monkeypatch, capsys, ["--merge", "A", "D", "--out", "C"], fragment)


def test_the_command_line_merges(halves, tmp_path, monkeypatch, capsys, collected):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["reproduce", "--profile", "test", "--quiet", "--merge", "A", "B", "--out", "C"]) == 0
    )
    out = capsys.readouterr().out
    assert re.search(rf"merged {len(NAMES)} models", out), out
    assert sorted(p.name for p in (tmp_path / "C" / "models").iterdir()) == sorted(NAMES)
