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
    # a rerun replaces its own earlier result (said so); --json prints it
    capsys.readouterr()
    again = ["attack", str(out / "checkpoint.pt"), "--attack", "pgd", "--steps", "2"]
    again += ["--eps", "0,8/255", "--limit", "64"]
    assert main([*again, "--json"]) == 0
    captured = capsys.readouterr()
    assert "replaced its earlier result in" in captured.err
    assert json.loads(captured.out) == json.loads((out / "attack_pgd.json").read_text())
    assert json.loads(captured.out)["accuracy"] == result["accuracy"]  # seeded: the same
    assert "device cpu" in captured.err  # the device it ran on
    assert "pgd x 2 eps" in captured.err  # the progress bar


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


# --------------------------------------------------------------------------- the command line as
# a user meets it


_PROBE = """
import json, runpy, sys
sys.argv = ["deepframe", *json.loads(sys.argv[1])]
try:
    runpy.run_module("deepframe", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as stop:
    code = stop.code
heavy = sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("torch", "numpy", "networkx")
    or m in ("deepframe.graph", "deepframe.dictionary", "deepframe.train", "deepframe.data")
)
print(json.dumps({"code": code, "heavy": heavy}))
"""


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["describe", "--help"], 0),
        (["train", "--help"], 0),
        (["train", "chain", "--lr", "nan"], 2),
        (["attack", "ck.pt", "--limit", "0"], 2),
        (["metrics", "chain", "--memory-budget", "lots"], 2),
        (["reproduce", "--profile", "huge"], 2),
    ],
)
def test_help_and_argument_errors_do_not_import_torch(argv, code):
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": code, "heavy": []}, done.stderr


def test_version(capsys):
    import deepframe

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deepframe {deepframe.__version__}"


def _options():
    import argparse

    from deepframe.cli import build_parser

    parser = build_parser()
    commands = parser.get_default("subcommands")
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            yield name, sub, action


@pytest.mark.parametrize(
    ("command", "option"),
    [(name, action.option_strings[-1]) for name, _, action in _options()],
)
def test_every_option_has_help_with_its_default_and_choices(command, option):
    import argparse

    name, sub, action = next(
        (n, s, a) for n, s, a in _options() if n == command and a.option_strings[-1] == option
    )
    text = sub.formatter_class(sub.prog)._expand_help(action)
    assert action.help, option
    flag = isinstance(action, argparse._StoreTrueAction)
    assert flag or "default" in text, f"{command} {option}: {text}"
    if action.choices:  # shown in the usage and the option's line
        words = sub.format_help()
        for mark in ",{}[]()":
            words = words.replace(mark, " ")
        assert set(map(str, action.choices)) <= set(words.split())


def test_describe_help_explains_the_spec_syntax(capsys):
    import inspect

    from deepframe.graph import _BUILDERS

    assert main(["describe", "--help"]) == 0
    text = capsys.readouterr().out
    for name, builder in _BUILDERS.items():
        assert name in text
        for option in inspect.signature(builder).parameters:
            assert f"{option}=" in text, (name, option)
    examples = [line.split()[0] for line in text.splitlines() if line.startswith("    ")]
    assert "resnet:blocks_per_stage=2,shortcut=B" in examples
    for spec in ("resnet:blocks_per_stage=2,shortcut=B", "chain:input_shape=64,widths=32x10"):
        assert main(["describe", spec]) == 0  # the examples work
    assert "SPEC" not in text


def test_cli_lists_match_the_library():
    from deepframe.cli.arguments import DATASET_EPS
    from deepframe.cli.train import METHOD_ITERATIONS
    from deepframe.data import DATASETS
    from deepframe.pursuit import METHODS

    assert DATASET_EPS == {name: info.eps for name, info in DATASETS.items()}
    assert tuple(METHOD_ITERATIONS) == METHODS
    assert METHOD_ITERATIONS["feedforward"] == 0 and METHOD_ITERATIONS["deep"] > 0


def test_train_choices_are_the_training_loops_names():
    """--optimizer and --schedule list exactly what deepframe.train accepts."""
    from deepframe.cli import build_parser
    from deepframe.train import OPTIMIZERS, SCHEDULES

    train_parser = build_parser().parse_args(["train", "x"]).subcommands["train"]
    choices = {a.dest: a.choices for a in train_parser._actions if a.choices}
    assert list(choices["optimizer"]) == list(OPTIMIZERS)
    assert list(choices["schedule"]) == [*SCHEDULES, "none"]  # "none" means schedule=None


@pytest.mark.parametrize(
    ("eps", "ladder"),
    [("8/255", "1/255,2/255,4/255,8/255"), ("0.1", "0.0125,0.025,0.05,0.1"), ("3/255", None)],
)
def test_default_attack_eps_are_a_ladder_up_to_the_data_sets_eps(eps, ladder):
    from fractions import Fraction

    from deepframe.cli.arguments import _eps_ladder

    got = _eps_ladder(eps)
    values = [float(Fraction(v)) for v in got.split(",")]
    expected = [float(Fraction(eps)) / k for k in (8, 4, 2, 1)]
    assert values == pytest.approx(expected, rel=1e-12)
    if ladder is not None:
        assert got == ladder


def test_describe_writes_node_link_graphml_and_dot(tmp_path, capsys):
    import networkx as nx

    import deepframe as df
    from deepframe.graph import from_spec

    spec = "resnet:input_shape=3x8x8,widths=2x3x4,shortcut=B"
    g = from_spec(spec)
    for suffix in ("json", "graphml", "dot"):
        assert main(["describe", spec, "--out", str(tmp_path / f"net.{suffix}")]) == 0
        assert f"wrote {tmp_path / f'net.{suffix}'} ({suffix})" in capsys.readouterr().err
    # node-link JSON reads back as the same architecture (an editable starting point)
    back = from_spec(str(tmp_path / "net.json"))
    assert nx.utils.graphs_equal(back, g)
    # GraphML: the same nodes and edges; tuples as "CxHxW" strings
    gml = nx.read_graphml(tmp_path / "net.graphml")
    assert set(gml.nodes) == {str(n) for n in g.nodes}
    assert {(u, v) for u, v in gml.edges} == {(str(u), str(v)) for u, v in g.edges}
    assert gml.nodes["s3b1b"]["shape"] == "4x2x2"
    assert gml.edges["s1b1b", "s2b1b"]["op"] == "project"
    # DOT: one statement per node and per edge, edge labels carry the op
    text = (tmp_path / "net.dot").read_text()
    assert text.startswith("digraph")
    edges = [line.strip() for line in text.splitlines() if " -> " in line]
    assert len(edges) == g.number_of_edges()
    assert '"s1b1b" -> "s2b1b" [label="project stride=2"];' in edges
    nodes = [line for line in text.splitlines() if "shape=" in line and " -> " not in line]
    assert len(nodes) == g.number_of_nodes()
    # an existing result is not replaced without --force
    assert main(["describe", spec, "--out", str(tmp_path / "net.dot")]) == 2
    assert main(["describe", spec, "--out", str(tmp_path / "net.dot"), "--force"]) == 0
    assert df.load(tmp_path / "net.json").number_of_nodes() == g.number_of_nodes()


def test_metrics_prints_a_table_of_the_report(capsys):
    spec = "chain:input_shape=1x6x6,widths=3x4"
    assert main(["metrics", spec, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert main(["metrics", spec]) == 0
    captured = capsys.readouterr()
    table = captured.out
    assert "{" not in table  # no raw dicts
    assert "device cpu" in captured.err
    rows = {
        line[:28].strip(): line[28:].split() for line in table.splitlines() if line[:28].strip()
    }
    assert float(rows["mutual coherence"][0]) == pytest.approx(report["coherence"], rel=1e-5)
    assert float(rows["mutual coherence"][1]) == pytest.approx(
        report["bounds"]["welch_coherence"], rel=1e-5, abs=1e-12
    )
    assert float(rows["frame potential"][0]) == pytest.approx(report["frame_potential"], rel=1e-5)
    assert float(rows["deep frame potential"][0]) == pytest.approx(
        report["deep_frame_potential"], rel=1e-5
    )
    assert f"{report['rows']} rows x {report['atoms']} atoms" in table
