"""The seed paper's Figs. 5-10 and claims table on scikit-learn's digits, CPU scale.

A thin wrapper of :func:`deepframe.experiments.reproduce` (the same as
``deepframe reproduce --profile quick``): trains the quick profile's models
(3 seeds), attacks each with FGSM and PGD, writes the figures,
``results.json`` and ``report.md``. Resumable: a second run reuses finished
models.

    python analysis/reproduce_quick.py [--out runs/reproduce] [--jobs 2] [--quiet]

docs/results.md has a measured run (wall time on 2 CPU cores included).
"""

from __future__ import annotations

import argparse

from deepframe.experiments import reproduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/reproduce")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    result = reproduce(args.out, profile="quick", jobs=args.jobs, progress=not args.quiet)
    print(
        f"{len(result['models'])} models ({result['trained_now']} trained now); "
        f"see {args.out}/report.md"
    )


if __name__ == "__main__":
    main()
