"""Re-judge a finished reproduction from its ``results.json`` alone: no training, no data.

    python analysis/rejudge.py docs/results/cifar-small [docs/results/quick ...]

Recomputes with the current ``deepframe.experiments`` what depends only on the
records: the claims table (``claims.claims_table``), the two figures that show
rank correlations (``fig_selection.png``, ``fig_geometry_robustness.png``) and
``report.md``; rewrites ``results.json`` with the new ``claims`` and those
figures' numbers, everything else as it was. For a change of the statistics
(docs/results.md, "How verdicts are decided"); a change of what is measured
needs ``deepframe reproduce`` on the run folder with its models.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from deepframe._io import read_json, write_json
from deepframe.experiments import claims, figures, report
from deepframe.experiments.profiles import Profile


def rejudge(folder: Path) -> None:
    summary = read_json(folder / "results.json")
    if not isinstance(summary, dict) or "models" not in summary:
        raise SystemExit(f"{folder / 'results.json'} is not a reproduction's results")
    names = {f.name for f in dataclasses.fields(Profile)}
    if set(summary["profile"]) != names:
        raise SystemExit(
            f"{folder}: the recorded profile's settings differ from this deepframe's "
            f"({sorted(set(summary['profile']) ^ names)}): re-judge it with the version it "
            "was written by"
        )
    # JSON turned the profile's tuples into lists; the report prints them as tuples
    settings = summary["profile"].items()
    prof = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings})
    summary["profile"] = dataclasses.asdict(prof)
    summary["claims"] = claims.claims_table(summary["models"], summary["selection"], prof)
    summary["figures"]["selection"] = figures.figure_selection(summary, folder)
    summary["figures"]["geometry_robustness"] = figures.figure_geometry_robustness(summary, folder)
    write_json(folder / "results.json", summary)
    report.write_report(summary, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders with a results.json")
    for folder in parser.parse_args().folders:
        rejudge(folder)
        print(f"re-judged {folder}")


if __name__ == "__main__":
    main()
