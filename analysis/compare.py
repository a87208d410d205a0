"""Compare a pair or group of runs: each group's final metrics, their change against a baseline group,
and (with --out) the comparison figures.

    python analysis/compare.py runs/quickstart/vanilla/version_0 runs/quickstart/dtr/version_0
    python analysis/compare.py 'runs/sweep/*/version_*' --by weighting --baseline uniform --out cmp/

Groups are runs with the same --by label (routing by default; seeds of one configuration average).
Each group averages its comparable fits only, those trained to the same number of steps; a test, validate
or predict run goes with the fit it evaluated, a resumed run with the fit it continues, and what is left
out is said in one line. FIDs are named with their number of samples N. A metric that some group lacks
shows as "–" with a note; runs with no metric in common end with one error line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dtr_lab.errors import DTRLabError  # noqa: E402
from dtr_lab.report import catalogue, load, out_problem, write_figures, write_out  # noqa: E402
from dtr_lab.runs import RunError, comparable, final_metrics  # noqa: E402
from dtr_lab.runs.markdown import markdown_table  # noqa: E402

PROG = Path(__file__).name
FIGURES = ("training_curves", "loss_by_t_probe", "conflict_share", "cos_vs_distance")


def comparison(runs, by: str, baseline: str) -> tuple[pd.DataFrame, list[str]]:
    """Metrics × groups (mean ± sd over runs) and the change of each group against the baseline;
    notes name metrics some group lacks. RunError if no metric is shared by all groups."""
    per_run = pd.DataFrame([{by: r.labels[by], **final_metrics(r)} for r in runs])
    groups = list(dict.fromkeys(per_run[by]))
    metrics = [c for c in per_run.columns if c != by]
    have = per_run.groupby(by)[metrics].apply(lambda g: g.notna().any())
    shared = [m for m in metrics if have[m].all()]
    if not shared:
        listing = "; ".join(
            f"{g} has {', '.join(m for m in metrics if have.loc[g, m]) or 'none'}" for g in groups
        )
        raise RunError(
            f"the runs have no metric in common across {by} groups ({listing}); "
            "compare runs that log the same metrics"
        )
    notes = [
        f"{m!r} is missing or undefined for {by}={', '.join(str(g) for g in groups if not have.loc[g, m])}"
        for m in metrics
        if m not in shared and have[m].any()
    ]
    mean, sd = per_run.groupby(by, sort=False)[metrics].mean(), per_run.groupby(by, sort=False)[metrics].std()
    counts = per_run.groupby(by, sort=False).size()
    measured = per_run.groupby(by, sort=False)[metrics].count()
    table = pd.DataFrame({"metric": [m for m in metrics if have[m].any()]})
    for g in groups:
        table[f"{g} (n={counts[g]})"] = [
            f"{mean.loc[g, m]:.4g} ± {sd.loc[g, m]:.2g}"
            if measured.loc[g, m] > 1
            else (f"{mean.loc[g, m]:.4g}" if np.isfinite(mean.loc[g, m]) else "–")
            for m in table["metric"]
        ]
    if baseline in groups:
        for g in groups:
            if g == baseline:
                continue
            change = (mean.loc[g] - mean.loc[baseline]) / mean.loc[baseline].abs() * 100
            table[f"{g} vs {baseline}"] = [
                f"{change[m]:+.1f} %" if np.isfinite(change[m]) else "–" for m in table["metric"]
            ]
    else:
        notes.append(f"no run has {by}={baseline!r}, so no change against a baseline is shown")
    return table, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, folders above them, or glob patterns")
    parser.add_argument(
        "--by", default="routing", help="label that groups runs (routing, weighting, model, seed, run)"
    )
    parser.add_argument(
        "--baseline", default="vanilla", help="the --by value the others are compared against"
    )
    parser.add_argument("--out", type=Path, help="also write the comparison figures and compare.md here")
    args = parser.parse_args(argv)
    problem = None if args.out is None else out_problem(args.out)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2

    runs, bad = load(args.runs, PROG, args.by)
    if runs is None:
        return 2
    runs, left_out = comparable(runs, args.by)
    try:
        table, notes = comparison(runs, args.by, args.baseline)
    except RunError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    notes = left_out + notes
    print(table.to_string(index=False))
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if args.out is not None:
        figures = [f for f in catalogue(args.by, args.baseline) if f.name in FIGURES]
        summary = ["", "## Final metrics", "", markdown_table(table), "", *[f"- {n}" for n in notes], ""]
        try:
            drawn, skipped = write_figures(runs, args.out, figures, title=f"Comparison by {args.by}")
            text = (args.out / "index.md").read_text()
            write_out(args.out / "compare.md", lambda path: path.write_text(text + "\n".join(summary)))
        except DTRLabError as err:  # a full or read-only device
            print(f"{PROG}: error: {err}", file=sys.stderr)
            return 2
        (args.out / "index.md").unlink()
        for reason in skipped:
            print(f"{PROG}: skipped {reason}", file=sys.stderr)
        print(f"wrote {drawn} figures and {args.out / 'compare.md'}")
    return 2 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
