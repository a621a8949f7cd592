"""``deepframe reproduce``: the seed paper's Figs. 5-10 and a verdict per claim.

Trains, attacks and measures the models of a profile, then writes the report
(docs/results.md); a run folder is resumable, can be split into shards and
merged; ``--out`` is locked while the command runs. The pipeline is
:mod:`deepframe.experiments`'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import _integer, _seed_list
from .errors import EXIT_OK, CommandError
from .options import add_command
from .outputs import (
    REPRODUCE_MARKERS,
    _check_not_being_written,
    _check_output_folder,
    _run_lock,
    _same_file,
)
from .runtime import _say

__all__ = ["add_parser", "reproduce_command"]


def reproduce_command(args) -> int:
    """The seed paper's Figs. 5-10 and claims end to end: train, attack, measure, report."""
    out = Path(args.out)
    _check_output_folder(out, "--out", (), REPRODUCE_MARKERS, "a reproduction")
    if args.only and not args.merge:
        _check_only(args)
    for folder in args.merge or ():
        if not _same_file(Path(folder), out):  # merge() refuses merging a folder into itself
            _check_not_being_written(Path(folder), f"--merge {folder}")
    with _run_lock(args, out, "--out"):
        return _reproduce(args)


def _check_only(args) -> None:
    """Refuse an ``--only`` pattern that matches none of the profile's models (a typo)."""
    import fnmatch

    from ..experiments.profiles import PROFILES, model_specs

    names = [spec.name for spec in model_specs(PROFILES[args.profile], args.seeds)]
    for pattern in (p.strip() for p in args.only.split(",")):
        if pattern and not fnmatch.filter(names, pattern):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise CommandError(
                f"--only {pattern!r} matches none of the {len(names)} models of the profile "
                f"{args.profile!r} ({shown}): nothing would be trained"
            )


def _reproduce(args) -> int:
    """:func:`reproduce_command` once ``--out`` is checked and locked."""
    from ..experiments import merge, reproduce

    seeds = args.seeds
    _say(args, f"device cpu ({args.jobs} model(s) at a time, one process each)")
    if args.merge:
        summary = merge(
            args.merge,
            args.out,
            profile=args.profile,
            data_dir=args.data_dir,
            seeds=seeds,
            jobs=args.jobs,
            progress=not args.quiet,
        )
        merged = summary["merged"]
        for folder, names in merged["folders"].items():
            skipped = merged["unfinished"].get(folder, [])
            extra = f" ({len(skipped)} unfinished there, not merged)" if skipped else ""
            print(f"  {folder}: {len(names)} models{extra}")
        if merged["identical"]:
            print(
                f"  {len(merged['identical'])} models were in several folders with identical "
                "results (taken from the first)"
            )
        if merged["kept"]:
            print(f"  {len(merged['kept'])} models already in {args.out}, left as they were")
        print(f"merged {len(summary['models'])} models; report: {args.out}/report.md")
        return EXIT_OK
    result = reproduce(
        args.out,
        profile=args.profile,
        data_dir=args.data_dir,
        seeds=seeds,
        shard=args.shard,
        only=args.only,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    done = len(result["models"])
    if result["results"] is None:
        print(
            f"{done} models ({result['trained_now']} trained now) in {args.out}; "
            "no report for a part of the profile: merge the parts with "
            f"deepframe reproduce --profile {args.profile} --merge DIR... --out DEST"
        )
    else:
        print(
            f"{done} models ({result['trained_now']} trained now); "
            f"report: {args.out}/report.md, numbers: {args.out}/results.json"
        )
    return EXIT_OK


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``deepframe reproduce`` and its options to the program's ``subparsers``."""
    p = add_command(
        subparsers,
        "reproduce",
        "the seed paper's Figs. 5-10 and a verdict per claim (docs/results.md)",
        reproduce_command,
    )
    p.add_argument(
        "--profile",
        default="quick",
        choices=["quick", "cifar-small", "full", "test"],
        help="quick: digits, 3 seeds, minutes on a CPU (default); cifar-small: CIFAR-10 "
        "subset, hours on 2 CPU cores (docs/results.md); full: the paper's scale, for a GPU; "
        "test: a seconds-long smoke test",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="CIFAR-10 folder (cifar-10-batches-py layout), required by cifar-small and full "
        "(default: none)",
    )
    p.add_argument("--out", default="runs/reproduce", help="run folder (resumable)")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="comma-separated seeds, e.g. 0,1,2 (default: the profile's)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="train only shard i of n, e.g. 1/3 (default: all)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="PATTERNS",
        help="train only models whose names match these comma-separated shell patterns, e.g. "
        "'ff-*,adv-*' (default: all)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="join the models of these run folders into --out and write the report "
        "(default: train instead)",
    )
    p.add_argument(
        "--jobs", type=_integer(1), default=2, help="models trained at once, one process each"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p
