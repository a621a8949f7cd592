"""End-to-end checks of ``deepframe.experiments.reproduce`` (SPEC §7)."""

from __future__ import annotations

import json

import pytest

from deepframe.experiments import PROFILES, model_specs, reproduce

FIGURES = ("fig5", "fig6", "fig7", "fig8", "fig9", "fig10")


def _accuracies(numbers: dict) -> list[float]:
    """Every value under an ``*_acc`` key of a figure's JSON, flattened."""
    found = []
    for key, value in numbers.items():
        if isinstance(value, dict):
            found += _accuracies(value)
        elif key.endswith("_acc"):
            found += list(value) if isinstance(value, list) else [value]
    return found


def test_model_specs_share_the_feedforward_baselines():
    specs = model_specs(PROFILES["quick"])
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    # 3 depths x (ResNet, chain) + 3 families x 3 nonzero T
    assert len(specs) == 6 + 9
    assert {s.method for s in specs if s.iterations == 0} == {"feedforward"}


def test_reproduce_test_profile_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = reproduce(out, profile="test", progress=False)

    for name in FIGURES:
        assert (out / f"{name}.json").is_file(), name
        if "skipped" not in json.loads((out / f"{name}.json").read_text()):
            assert (out / f"{name}.png").stat().st_size > 0, name
    assert (out / "report.md").is_file()
    report = (out / "report.md").read_text()
    assert "CPU-scale profile" in report and "CIFAR-10" in report
    specs = model_specs(PROFILES["test"])
    for spec in specs:
        folder = out / "models" / spec.name
        assert (folder / "checkpoint.pt").is_file()
        assert (folder / "log.jsonl").is_file()
        assert (folder / "result.json").is_file()

    accs = []
    for name in ("fig5", "fig6", "fig7"):
        accs += _accuracies(json.loads((out / f"{name}.json").read_text()))
    assert accs and all(0.0 <= a <= 1.0 for a in accs)
    fig6 = json.loads((out / "fig6.json").read_text())
    assert fig6["T"] == list(PROFILES["test"].iterations)
    fig8 = json.loads((out / "fig8.json").read_text())
    errors = fig8["DP-res"]["node_errors"]
    assert errors and all(len(e) == max(PROFILES["test"].iterations) + 1 for e in errors.values())
    fig9 = json.loads((out / "fig9.json").read_text())
    if "skipped" not in fig9:
        assert all(v >= 0 for v in fig9["DP-res"]["deep_frame_potential"])
        fig10 = json.loads((out / "fig10.json").read_text())
        assert all(0 <= v <= 1 + 1e-9 for v in fig10["DP"]["mutual_coherence"])
    assert result["summary"]["trained_now"] == len(specs)

    mtimes = {s.name: (out / "models" / s.name / "checkpoint.pt").stat().st_mtime_ns for s in specs}
    again = reproduce(out, profile="test", progress=False)
    assert again["summary"]["trained_now"] == 0
    assert {
        s.name: (out / "models" / s.name / "checkpoint.pt").stat().st_mtime_ns for s in specs
    } == mtimes
    assert again["figures"]["fig6"] == result["figures"]["fig6"]


def test_reproduce_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        reproduce(tmp_path, profile="huge")
    with pytest.raises(ValueError, match="data_dir"):
        reproduce(tmp_path, dataset="cifar10")


def test_cli_reproduce_arguments():
    from deepframe.cli import build_parser, reproduce_command

    args = build_parser().parse_args(
        [
            "reproduce",
            "--profile",
            "full",
            "--dataset",
            "cifar10",
            "--data-dir",
            "/data",
            "--out",
            "o",
            "--seed",
            "3",
            "--quiet",
        ]
    )
    assert args.func is reproduce_command
    assert (args.profile, args.dataset, args.data_dir, args.out, args.seed, args.quiet) == (
        "full",
        "cifar10",
        "/data",
        "o",
        3,
        True,
    )
    defaults = build_parser().parse_args(["reproduce"])
    assert (defaults.profile, defaults.dataset, defaults.out) == (
        "quick",
        "digits",
        "runs/reproduce",
    )
