"""Stress test: draw many random architectures, compile them and dot-test D.

For every seed ``s`` in ``start .. start + count - 1`` the script draws
``random_architecture(random.Random(s))`` (the generator behind
``deepframe.testing.architectures``; no hypothesis needed), then

1. validates it (``deepframe.validate``),
2. compiles it (``deepframe.dictionary(g, seed=s)``, float64),
3. runs the dot test ``<D u, v> = <u, D^T v>`` (relative error < ``--rtol``),
4. with ``--reference N``: for graphs of at most N atoms, also compares
   ``D.todense()`` and ``D.tosparse()`` with the independent ``bmat`` assembly,

and reports every failure as ``seed, stage, error`` plus a summary (rate,
sizes, operator counts, worst dot-test error). With ``--malformed M`` it also
draws M malformed graphs and checks each raises ``ArchitectureError`` naming
its culprit. Exit status 1 when anything failed.

Reproduce one failure with::

    python -c "import random, deepframe as df; from deepframe.testing import \\
        random_architecture as r; df.dictionary(r(random.Random(SEED)), seed=SEED)"

Usage::

    python analysis/stress_graphs.py --count 10000
    python analysis/stress_graphs.py --count 2000 --reference 400 --malformed 5000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import deepframe as df  # noqa: E402
from deepframe.testing import (  # noqa: E402
    MALFORMED_KINDS,
    assert_dottest,
    assert_matches_reference,
    random_architecture,
    random_malformed,
)


def stress_valid(args) -> tuple[list, dict]:
    """Draw, validate, compile and dot-test ``args.count`` graphs."""
    failures = []
    stats: dict = collections.Counter()
    worst = 0.0
    atoms, rows, nodes = [], [], []
    generator_options = dict(
        max_nodes=args.max_nodes,
        max_size=args.max_size,
        max_channels=args.max_channels,
        max_atoms=args.max_atoms,
    )
    start = time.perf_counter()
    for seed in range(args.start, args.start + args.count):
        stage = "draw"
        try:
            g = random_architecture(random.Random(seed), **generator_options)
            stage = "validate"
            v = df.validate(g)
            stage = "compile"
            D = df.dictionary(v, seed=seed)
            stage = "dottest"
            error = assert_dottest(D, rtol=args.rtol, seed=seed)
            worst = max(worst, error)
            if args.reference and D.shape[1] <= args.reference:
                stage = "reference"
                assert_matches_reference(D, atol=1e-12)
                stats["reference checks"] += 1
        except Exception as exc:  # report every kind of failure, keep going
            failures.append({"seed": seed, "stage": stage, "error": f"{type(exc).__name__}: {exc}"})
            if not args.quiet:
                print(f"FAIL seed={seed} stage={stage}: {type(exc).__name__}: {exc}", flush=True)
            continue
        atoms.append(D.shape[1])
        rows.append(D.shape[0])
        nodes.append(len(D.nodes))
        for _, _, a in v.edges(data=True):
            stats[f"edge {a.get('op', 'identity')}"] += 1
        for _, a in v.nodes(data=True):
            if a.get("merge") == "input":
                stats[f"node-centric {a['op']}"] += 1
        stats["skip edges"] += sum(max(0, v.in_degree(j) - 1) for j in v.nodes)
        done = seed - args.start + 1
        if not args.quiet and done % args.progress == 0:
            rate = done / (time.perf_counter() - start)
            print(
                f"{done}/{args.count} graphs, {len(failures)} failures, {rate:.0f} graphs/s",
                flush=True,
            )
    elapsed = time.perf_counter() - start
    summary = {
        "graphs": args.count,
        "seeds": [args.start, args.start + args.count - 1],
        "failures": len(failures),
        "seconds": round(elapsed, 2),
        "graphs_per_second": round(args.count / elapsed, 1),
        "worst_dot_test_error": worst,
        "atoms_mean": round(sum(atoms) / max(1, len(atoms)), 1),
        "atoms_max": max(atoms, default=0),
        "rows_mean": round(sum(rows) / max(1, len(rows)), 1),
        "rows_max": max(rows, default=0),
        "nodes_histogram": dict(sorted(collections.Counter(nodes).items())),
        "counts": dict(sorted(stats.items())),
    }
    return failures, summary


def stress_malformed(args) -> tuple[list, dict]:
    """Draw ``args.malformed`` broken graphs; each must raise ArchitectureError naming it."""
    failures = []
    kinds = collections.Counter()
    start = time.perf_counter()
    for seed in range(args.start, args.start + args.malformed):
        kind = MALFORMED_KINDS[seed % len(MALFORMED_KINDS)]
        kinds[kind] += 1
        try:
            graph, fragment = random_malformed(random.Random(seed), kind)
        except Exception as exc:
            failures.append({"seed": seed, "kind": kind, "error": f"generator: {exc!r}"})
            continue
        try:
            df.validate(graph)
        except df.ArchitectureError as exc:
            if fragment not in str(exc):
                failures.append(
                    {
                        "seed": seed,
                        "kind": kind,
                        "error": f"message {str(exc)!r} lacks {fragment!r}",
                    }
                )
        except Exception as exc:
            failures.append({"seed": seed, "kind": kind, "error": f"raised {exc!r}"})
        else:
            failures.append({"seed": seed, "kind": kind, "error": "no error raised"})
    for failure in failures:
        if not args.quiet:
            print(
                f"FAIL malformed seed={failure['seed']} kind={failure['kind']}: {failure['error']}",
                flush=True,
            )
    elapsed = time.perf_counter() - start
    summary = {
        "graphs": args.malformed,
        "kinds": len(kinds),
        "failures": len(failures),
        "seconds": round(elapsed, 2),
    }
    return failures, summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="valid graphs to draw")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--max-nodes", type=int, default=6)
    parser.add_argument("--max-size", type=int, default=8)
    parser.add_argument("--max-channels", type=int, default=4)
    parser.add_argument("--max-atoms", type=int, default=2000)
    parser.add_argument("--rtol", type=float, default=1e-10, help="dot-test tolerance")
    parser.add_argument(
        "--reference",
        type=int,
        default=0,
        metavar="N",
        help="also compare with the bmat reference when D has <= N atoms",
    )
    parser.add_argument(
        "--malformed", type=int, default=0, metavar="M", help="also check M malformed graphs"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops)")
    parser.add_argument("--progress", type=int, default=1000)
    parser.add_argument("--json", help="write failures and summary to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    failures, summary = stress_valid(args)
    report = {"valid": {"summary": summary, "failures": failures}}
    if args.malformed:
        bad, bad_summary = stress_malformed(args)
        report["malformed"] = {"summary": bad_summary, "failures": bad}
        failures = failures + bad
    print(json.dumps({k: v["summary"] for k, v in report.items()}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if failures:
        print(f"{len(failures)} FAILURES", file=sys.stderr)
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
