"""The reproduction pipeline (profiles, resume, shards, merge, claims) on a reduced setting."""

from __future__ import annotations

import copy
import json
import math

import pytest

from deepframe.experiments import PROFILES, claims_table, merge, model_specs, reproduce
from deepframe.experiments.profiles import select_shard
from deepframe.experiments.stats import combination, spearman, verdict, wilson

PROFILE = PROFILES["test"]
FIELDS = (
    "name",
    "method",
    "skips",
    "depth",
    "iterations",
    "seed",
    "adversarial_training",
    "train_images",
    "eval_images",
    "epochs",
    "eps",
    "clean_acc",
    "fgsm_acc",
    "pgd_acc",
    "test_clean_acc",
    "test_images",
    "checkpoint",
    "mutual_coherence",
    "deep_frame_potential",
)
#: Fields of a record that depend on the wall clock, not on the computation.
TIMING = ("train_seconds", "attack_seconds")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = reproduce(out, profile="test", progress=False, jobs=1)
    return out, result


def test_model_specs_cover_the_figures_once_per_seed():
    quick = PROFILES["quick"]
    specs = model_specs(quick)
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    per_seed = 6 + 2 + 1 + 9  # Fig. 5, DenseNets, adversarial baseline, 3 families x 3 T
    assert len(specs) == per_seed * len(quick.seeds) and len(quick.seeds) >= 3
    assert {s.method for s in specs if s.iterations == 0} == {"feedforward"}
    assert sum(s.adversarial for s in specs) == len(quick.seeds)
    curves = {s.base for s in specs if s.curve}
    assert curves == {"ff-chain-n1", "lbp-n1-T4", "dp-n1-T4"}


def test_shards_partition_the_models():
    specs = model_specs(PROFILES["quick"])
    parts = [select_shard(specs, (i, 3)) for i in (1, 2, 3)]
    assert sorted(s.name for p in parts for s in p) == sorted(s.name for s in specs)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="shard"):
        select_shard(specs, (4, 3))


def test_results_json_has_every_field_the_report_reads(run):
    out, result = run
    data = json.loads((out / "results.json").read_text())
    assert len(data["models"]) == len(model_specs(PROFILE))
    for record in data["models"]:
        for key in FIELDS:
            assert key in record, key
        assert record["method"] in ("feedforward", "layered", "deep")
        for key in ("clean_acc", "fgsm_acc", "pgd_acc"):
            assert 0.0 <= record[key] <= 1.0
        assert record["train_images"] == PROFILE.train_images
        assert record["eval_images"] == PROFILE.eval_images
        assert (out / record["checkpoint"]).is_file()
        assert 0.0 <= record["mutual_coherence"] <= 1.0 + 1e-9
        assert record["paper_iterations"] == record["iterations"] + 1
    for name in ("fig5", "fig6", "fig7", "fig8", "fig9", "fig10", "fig_selection"):
        assert (out / f"{name}.png").stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "| # | claim" in report and "PGD" in report and "paper's T" in report
    assert {c["id"] for c in data["claims"]} >= {
        "skips-feedforward",
        "dpres-beats-lbp",
        "reconstruction",
        "geometry-predicts-robustness",
        "dataless-selection",
    }
    assert len(data["selection"]) == 5


def test_weights_only_checkpoints_load_and_reproduce_the_clean_accuracy(run):
    import torch

    from deepframe import load_model
    from deepframe.attacks import accuracy
    from deepframe.experiments.datasets import load_data

    out, _ = run
    record = next(
        r for r in json.loads((out / "results.json").read_text())["models"] if r["iterations"]
    )
    state = torch.load(out / record["checkpoint"], weights_only=True)
    assert state["optimizer"] is None
    model = load_model(out / record["checkpoint"])
    _, eval_set, _ = load_data(PROFILE, None, record["seed"])
    assert accuracy(model, eval_set) == record["clean_acc"]
    # the whole held-out set, of which the attacks' images are a subset
    held = eval_set.dataset
    assert record["test_images"] == len(held) > len(eval_set)
    assert accuracy(model, held) == record["test_clean_acc"]


def test_resume_skips_finished_models(run):
    out, first = run
    files = sorted((out / "models").glob("*/model.pt"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = reproduce(out, profile="test", progress=False, jobs=1)
    assert again["trained_now"] == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    assert again["results"]["claims"] == first["results"]["claims"]


def test_an_interrupted_model_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    only = "ff-res-n1-seed0"
    reproduce(out, profile="test", progress=False, only=only)
    folder = out / "models" / only
    (folder / "result.json").unlink()  # as if killed after training, before the attacks
    (folder / "model.pt").unlink()
    before = (folder / "train" / "checkpoint.pt").stat().st_mtime_ns
    again = reproduce(out, profile="test", progress=False, only=only)
    # the finished training is not repeated: its checkpoint is untouched
    assert (folder / "train" / "checkpoint.pt").stat().st_mtime_ns == before
    assert again["trained_now"] == 1 and (folder / "model.pt").is_file()


def test_an_interrupted_call_leaves_its_wall_time(tmp_path, monkeypatch):
    from deepframe.experiments import pipeline

    out = tmp_path / "run"
    real, calls = pipeline.run_model, []

    def run_two_then_stop(spec, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends
        calls.append(spec.name)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_model", run_two_then_stop)
    with pytest.raises(KeyboardInterrupt):
        reproduce(out, profile="test", progress=False, jobs=1, only="ff-*")
    (entry,) = json.loads((out / "runs.json").read_text())
    assert entry["finished"] is None and entry["trained_now"] == 2 and entry["wall_seconds"] > 0
    monkeypatch.setattr(pipeline, "run_model", real)
    reproduce(out, profile="test", progress=False, jobs=1, only="ff-*")
    first, second = json.loads((out / "runs.json").read_text())
    assert first == entry  # kept, not overwritten by the next call
    ff = [s for s in model_specs(PROFILE, (0, 1)) if s.name.startswith("ff-")]
    assert second["finished"] and second["trained_now"] == len(ff) - 2


def test_report_says_which_models_no_call_timed():
    from deepframe.experiments.report import _calls

    runs = [
        {"jobs": 2, "threads_per_job": 1, "trained_now": 3, "finished": None},
        {"jobs": 2, "threads_per_job": 1, "trained_now": 4, "finished": "2026-11-25T22:00"},
    ]
    text = _calls({"runs": runs, "models": [{}] * 9})
    assert "2 call(s), 1 interrupted" in text and "2 of the 9 models" in text
    assert "models were trained" not in _calls({"runs": runs, "models": [{}] * 7})


def _comparable(data: dict) -> dict:
    models = [{k: v for k, v in r.items() if k not in TIMING} for r in data["models"]]
    return {"models": sorted(models, key=lambda r: r["name"]), "claims": data["claims"]}


def test_shards_merged_equal_the_unsharded_run(run, tmp_path):
    out, _ = run
    parts = []
    for i in (1, 2):
        part = tmp_path / f"part{i}"
        result = reproduce(part, profile="test", progress=False, shard=f"{i}/2")
        assert result["results"] is None  # a part alone writes no report
        parts.append(part)
    merged = merge(parts, tmp_path / "merged", profile="test", progress=False)
    whole = json.loads((out / "results.json").read_text())
    assert _comparable(merged) == _comparable(whole)
    assert len(merged["runs"]) == 2


def test_merge_refuses_a_folder_without_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a reproduction folder"):
        merge([tmp_path], tmp_path / "out", profile="test", progress=False)


def _claim(claims, cid):
    return next(c for c in claims if c["id"] == cid)


def test_claims_are_computed_from_the_results(run):
    out, _ = run
    data = json.loads((out / "results.json").read_text())
    records, selection = data["models"], data["selection"]

    # ResNet far above its chain twin: supported; far below: contradicted
    up = claims_table(_set(records, "ff-res-n2", 1.0, "ff-chain-n2", 0.0), selection, PROFILE)
    down = claims_table(_set(records, "ff-res-n2", 0.0, "ff-chain-n2", 1.0), selection, PROFILE)
    assert _claim(up, "skips-feedforward")["verdict"]["fgsm"] == "supported"
    assert _claim(down, "skips-feedforward")["verdict"]["fgsm"] == "contradicted"
    # the PGD verdict reads pgd_acc, untouched here
    assert (
        _claim(up, "skips-feedforward")["verdict"]["pgd"]
        == _claim(claims_table(records, selection, PROFILE), "skips-feedforward")["verdict"]["pgd"]
    )


def test_predictor_claim_says_when_most_robust_accuracies_are_tied(run):
    out, _ = run
    data = json.loads((out / "results.json").read_text())
    records = copy.deepcopy(data["models"])
    undefended = [r for r in records if not r["adversarial_training"]]
    for i, r in enumerate(undefended):
        r["fgsm_acc"] = 0.1 + 0.01 * i  # all distinct
        r["pgd_acc"] = 0.0 if i >= 3 else 0.05 * (i + 1)  # all but three at 0
    table = _claim(
        claims_table(records, data["selection"], PROFILE), "geometry-predicts-robustness"
    )
    tied = f"{len(undefended) - 3} of {len(undefended)} tied at one value"
    assert all(tied in part["quantity"] for part in table["evidence"]["pgd"])
    assert not any("tied" in part["quantity"] for part in table["evidence"]["fgsm"])


def _set(records, high, high_value, low, low_value):
    changed = copy.deepcopy(records)
    for r in changed:
        if r["base"] == high:
            r["fgsm_acc"] = high_value
        if r["base"] == low:
            r["fgsm_acc"] = low_value
    return changed


def test_geometry_claim_flips_with_the_geometry(run):
    out, _ = run
    data = json.loads((out / "results.json").read_text())
    records = copy.deepcopy(data["models"])
    for r in records:
        lower = r["base"].startswith("dpres")
        r["deep_frame_potential"] = (0.001 if lower else 0.01) * (1 + 0.01 * r["seed"])
        r["mutual_coherence"] = (0.1 if lower else 0.5) * (1 + 0.01 * r["seed"])
    claims = claims_table(records, data["selection"], PROFILE)
    assert _claim(claims, "geometry-lower-dpres")["verdict"]["fgsm"] == "supported"
    for r in records:
        r["deep_frame_potential"], r["mutual_coherence"] = (
            (0.05, 0.9) if r["base"].startswith("dpres") else (0.01, 0.5)
        )
        r["deep_frame_potential"] *= 1 + 0.01 * r["seed"]
    claims = claims_table(records, data["selection"], PROFILE)
    assert _claim(claims, "geometry-lower-dpres")["verdict"]["fgsm"] == "contradicted"


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (37, 100), (500, 1000), (1000, 1000)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    iv = wilson(k / n, n)
    assert math.isclose(iv.low, ref.low, abs_tol=1e-9)
    assert math.isclose(iv.high, ref.high, abs_tol=1e-9)


@pytest.mark.parametrize("n", [96, 359, 1000, 10000])
def test_wilson_holds_the_proportion_at_the_ends(n):
    for p in (0.0, 1.0):
        iv = wilson(p, n)
        assert 0.0 <= iv.low <= p <= iv.high <= 1.0
    assert wilson(0.0, n).low == 0.0 and wilson(1.0, n).high == 1.0


def test_one_seed_report_with_zero_robust_accuracy(run, tmp_path):
    """The cifar-small setting: one seed (Wilson bars, binomial claims) and PGD at 0."""
    import shutil

    from deepframe.experiments import collect

    out = tmp_path / "one-seed"
    shutil.copytree(run[0], out)
    for result_path in (out / "models").glob("*-seed0/result.json"):
        result = json.loads(result_path.read_text())
        result["pgd_acc"] = 0.0
        result_path.write_text(json.dumps(result))
    summary = collect(out, "test", seeds=(0,), progress=False)
    assert summary["seeds"] == [0] and all(r["pgd_acc"] == 0.0 for r in summary["models"])
    report = (out / "report.md").read_text()
    assert "one seed" in report and "Wilson" in report
    for name in ("fig5", "fig6", "fig7", "fig8", "fig9", "fig10", "fig_selection"):
        assert (out / f"{name}.png").stat().st_size > 0, name


def _wilson_scipy(k, n):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


def test_combination_one_seed_is_newcombes_interval_of_a_difference():
    # Newcombe (1998), method 10: L = p1 - p2 - sqrt((p1 - l1)^2 + (u2 - p2)^2), U likewise
    iv = combination([(1, [0.6], 1000), (-1, [0.5], 500)])
    (l1, u1), (l2, u2) = _wilson_scipy(600, 1000), _wilson_scipy(250, 500)
    assert math.isclose(iv.value, 0.1)
    assert math.isclose(iv.low, 0.1 - math.hypot(0.6 - l1, u2 - 0.5), rel_tol=1e-9)
    assert math.isclose(iv.high, 0.1 + math.hypot(u1 - 0.6, 0.5 - l2), rel_tol=1e-9)
    # both at 0: not the Wald interval's single point but +- the Wilson upper end
    zero = combination([(1, [0.0], 1000), (-1, [0.0], 1000)])
    _, u = _wilson_scipy(0, 1000)
    assert zero.value == 0 and math.isclose(zero.high, u, rel_tol=1e-9)
    assert math.isclose(zero.low, -zero.high, rel_tol=1e-12)


def test_combination_of_four_terms_is_mover():
    # a difference of gains, (a - b) - (c - d), as claim 4 has it
    p, n = [0.034, 0.011, 0.022, 0.015], 1000
    iv = combination([(1, [p[0]], n), (-1, [p[1]], n), (-1, [p[2]], n), (1, [p[3]], n)])
    ci = [_wilson_scipy(round(v * n), n) for v in p]
    below = (p[0] - ci[0][0], ci[1][1] - p[1], ci[2][1] - p[2], p[3] - ci[3][0])
    above = (ci[0][1] - p[0], p[1] - ci[1][0], p[2] - ci[2][0], ci[3][1] - p[3])
    value = p[0] - p[1] - p[2] + p[3]
    assert math.isclose(iv.low, value - math.sqrt(sum(v * v for v in below)), rel_tol=1e-9)
    assert math.isclose(iv.high, value + math.sqrt(sum(v * v for v in above)), rel_tol=1e-9)


def test_combination_several_seeds_is_students_t_with_a_binomial_floor():
    from scipy.stats import t

    a, b = [0.70, 0.74, 0.69], [0.60, 0.61, 0.66]
    iv = combination([(1, a, 10**9), (-1, b, 10**9)])
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / 2)
    assert math.isclose(iv.high - iv.value, t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert math.isclose(iv.value - iv.low, t.ppf(0.975, 2) * sd / math.sqrt(3))
    same = combination([(1, [0.7, 0.7], 100), (-1, [0.6, 0.6], 100)])  # zero sample sd
    floor = combination([(1, [0.7], 200), (-1, [0.6], 200)])  # the seed means' interval
    assert same.value == floor.value
    assert math.isclose(same.low, floor.low) and math.isclose(same.high, floor.high)


def test_spearman_matches_scipy_and_has_an_interval():
    from scipy.stats import spearmanr

    x = [0.1, 0.4, 0.2, 0.9, 0.5, 0.3, 0.8]
    y = [0.9, 0.5, 0.8, 0.1, 0.4, 0.6, 0.3]
    iv = spearman(x, y)
    assert math.isclose(iv.value, spearmanr(x, y).statistic)
    assert iv.low <= iv.value <= iv.high


def test_verdict_rules():
    from deepframe.experiments.stats import Interval

    assert verdict([Interval(0.2, 0.1, 0.3)]) == "supported"
    assert verdict([Interval(0.2, 0.1, 0.3), Interval(-0.2, -0.3, -0.1)]) == "contradicted"
    assert verdict([Interval(0.1, -0.1, 0.3)]) == "inconclusive"
    assert verdict([Interval(0.1, None, None)]) == "inconclusive"
    assert verdict([Interval(0.1, None, None)], sign_only_ok=True) == "supported"


def test_cli_reproduce_arguments():
    from deepframe.cli import build_parser
    from deepframe.cli.reproduce import reproduce_command

    args = build_parser().parse_args(
        [
            "reproduce",
            "--profile",
            "cifar-small",
            "--data-dir",
            "/data",
            "--out",
            "o",
            "--shard",
            "2/3",
            "--jobs",
            "1",
            "--seeds",
            "0,1",
            "--quiet",
        ]
    )
    assert args.func is reproduce_command
    assert (args.profile, args.data_dir, args.shard, args.jobs, args.seeds) == (
        "cifar-small",
        "/data",
        "2/3",
        1,
        (0, 1),
    )
    merged = build_parser().parse_args(["reproduce", "--merge", "a", "b", "--out", "c"])
    assert merged.merge == ["a", "b"]
    assert build_parser().parse_args(["reproduce"]).profile == "quick"


def test_reproduce_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="profile"):
        reproduce(tmp_path, profile="huge")
    with pytest.raises(ValueError, match="data_dir"):
        reproduce(tmp_path, profile="cifar-small")
    with pytest.raises(ValueError, match="jobs"):
        reproduce(tmp_path, profile="test", jobs=0)
