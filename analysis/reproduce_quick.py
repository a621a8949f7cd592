"""The seed paper's Figs. 5-10 on scikit-learn's digits, CPU scale (SPEC §7).

A thin wrapper of :func:`deepframe.experiments.reproduce` (the same as
``deepframe reproduce``): trains the 15 models of the quick profile, writes
``fig5.png`` ... ``fig10.png``, their JSON numbers and ``report.md``.
Resumable: a second run reuses finished models.

    python analysis/reproduce_quick.py [--out runs/reproduce] [--seed 0] [--quiet]

About 5 minutes on a 2-core CPU (docs/results.md has a measured run).
"""

from __future__ import annotations

import argparse

from deepframe.experiments import reproduce


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/reproduce")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    result = reproduce(
        args.out, profile="quick", dataset="digits", seed=args.seed, progress=not args.quiet
    )
    summary = result["summary"]
    print(
        f"{summary['models']} models ({summary['trained_now']} trained now) in "
        f"{summary['wall_seconds']:.1f} s; see {args.out}/report.md"
    )


if __name__ == "__main__":
    main()
