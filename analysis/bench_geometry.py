"""Benchmark: exact mutual coherence + frame potential of global dictionaries.

Runs every case in its own subprocess so that its peak memory is its own, and
prints one line per case plus a JSON summary (``--json``).

Cases (docs/geometry.md):

* ``resnet-1``, ``resnet-3``: ``resnet((3, 32, 32))`` with 1 and 3 basic blocks
  per stage (CIFAR 6n+2 family, widths 16/32/64, option-A shortcuts);
* ``resnet18-width``: ``resnet((3, 32, 32), 2, widths=(64, 128, 256, 512))``,
  a ResNet-18-width graph at 32x32, 557,056 atoms (its dense Gram would take
  557056^2 * 8 bytes = 2.5 TB); target <= 10 s on 2 cores;
* ``ratio-chain``: ``chain((3, 16, 16), (16, 16))``, exactly 8,192 atoms,
  structured and dense (``D.todense()``, normalise, Gram) in the same process;
  target structured/dense speed-up >= 100x. (The dense Gram costs ``2 n N^2``
  flops; a ResNet of that size has ``n > N`` rows, its skips add rows, which
  makes the dense reference slower still.)

What is timed: ``gram_metrics(D, deep=False)``, i.e. coherence (with its
location) and FP in one exact pass, float64, after compiling ``D`` (not timed).
``deep=True`` adds the structural count ``N_nz`` (for the DFP), timed
separately as ``nnz_s``. Structured times are the best of ``--repeat`` runs,
the dense reference runs once (the machine may be shared: the load average is
printed).

Memory: peak resident set size from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(Linux, KiB), which sees torch's CPU allocations (``tracemalloc`` does not);
``rss_before`` is that peak just before the first timed call, so
``peak - rss_before`` is what the computation itself added on top of the
interpreter, torch and the compiled dictionary.

Usage::

    python analysis/bench_geometry.py [--repeat 3] [--threads 2] [--json] [--case NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("resnet-1", "resnet-3", "resnet18-width", "ratio-chain")


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _graph(name: str):
    import deepframe as df

    if name == "resnet-1":
        return df.resnet((3, 32, 32), 1)
    if name == "resnet-3":
        return df.resnet((3, 32, 32), 3)
    if name == "resnet18-width":
        return df.resnet((3, 32, 32), 2, widths=(64, 128, 256, 512))
    if name == "ratio-chain":
        return df.chain((3, 16, 16), (16, 16))
    raise ValueError(f"unknown case {name!r}; expected one of {CASES}")


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_case(name: str, repeat: int) -> dict:
    """One case in this process: compile, time the structured (and dense) metrics."""
    import torch

    import deepframe as df
    from deepframe import geometry

    d = df.dictionary(_graph(name), seed=0)
    n, big_n = d.shape
    row = {"case": name, "atoms": big_n, "rows": n, "threads": torch.get_num_threads()}
    row["rss_before_mib"] = round(_maxrss_mib(), 1)
    seconds, m = _best(lambda: geometry.gram_metrics(d, deep=False), repeat)
    row.update(
        structured_s=round(seconds, 3),
        coherence=m.coherence,
        frame_potential=m.frame_potential,
        attained_at=[m.attained_at["atoms"][0]["node"], m.attained_at["atoms"][1]["node"]],
    )
    row["peak_structured_mib"] = round(_maxrss_mib(), 1)
    start = time.perf_counter()
    row["structural_nonzeros"] = geometry._StructuredGram(d).structural_nonzeros()
    row["nnz_s"] = round(time.perf_counter() - start, 3)
    if name.startswith("ratio"):
        seconds, r = _best(lambda: geometry.gram_metrics(d, method="dense", deep=False), 1)
        row.update(
            dense_s=round(seconds, 3),
            speedup=round(seconds / row["structured_s"], 1),
            max_abs_diff_coherence=abs(r.coherence - m.coherence),
            rel_diff_fp=abs(r.frame_potential - m.frame_potential) / r.frame_potential,
        )
        row["peak_dense_mib"] = round(_maxrss_mib(), 1)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", action="append", choices=CASES, help="run only these cases (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.child, args.repeat)))
        return 0

    print(
        f"# cpus={os.cpu_count()} torch threads={args.threads} "
        f"load average at start={os.getloadavg()}",
        flush=True,
    )
    rows = []
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for name in args.case or CASES:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            name,
            "--repeat",
            str(args.repeat),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr}", file=sys.stderr)
            return 1
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        line = (
            f"{name:15s} N={row['atoms']:>7d} n={row['rows']:>7d}  "
            f"structured {row['structured_s']:7.3f} s  peak RSS "
            f"{row['peak_structured_mib']:7.1f} MiB (+"
            f"{row['peak_structured_mib'] - row['rss_before_mib']:.1f})  "
            f"mu={row['coherence']:.6f} FP={row['frame_potential']:.6g}  "
            f"N_nz={row['structural_nonzeros']} ({row['nnz_s']:.2f} s)"
        )
        if "dense_s" in row:
            line += (
                f"\n{'':15s} dense {row['dense_s']:.3f} s  peak RSS "
                f"{row['peak_dense_mib']:.1f} MiB  speed-up {row['speedup']}x  "
                f"|dmu|={row['max_abs_diff_coherence']:.1e} "
                f"rel dFP={row['rel_diff_fp']:.1e}"
            )
        print(line, flush=True)
    print(f"# load average at end={os.getloadavg()}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
