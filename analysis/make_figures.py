"""Every figure of a set of runs, as PNG and PDF, with an index.md of what each shows and its numbers.

    python analysis/make_figures.py runs/quickstart/*/version_* --out runs/quickstart/figures

A path that is not a readable run is reported on one line and left out; a figure whose metric no
run recorded is skipped with the reason (in index.md too); the rest are still written. Exits 2 if a
path was bad or no figure could be drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

from dtr_lab.errors import DTRLabError  # noqa: E402
from dtr_lab.report import catalogue, load, out_problem, write_figures  # noqa: E402

PROG = Path(__file__).name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, folders above them, or glob patterns")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNG/PDF figures and index.md")
    parser.add_argument(
        "--by", default="routing", help="label that groups runs (routing, weighting, model, seed)"
    )
    parser.add_argument("--baseline", default="vanilla", help="the --by value that ratios are taken against")
    args = parser.parse_args(argv)
    problem = out_problem(args.out)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2

    runs, bad = load(args.runs, PROG, args.by)
    if runs is None:
        return 2
    try:
        drawn, skipped = write_figures(runs, args.out, catalogue(args.by, args.baseline))
    except DTRLabError as err:  # a full or read-only device
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for reason in skipped:
        print(f"{PROG}: skipped {reason}", file=sys.stderr)
    print(
        f"wrote {drawn} figures (PNG and PDF) for {len(runs)} runs to {args.out}; see {args.out / 'index.md'}"
    )
    return 2 if bad or drawn == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
