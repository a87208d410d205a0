"""Interval boundaries for a config, clustered by a run's measured affinity or by an SNR objective
(ANT's interval clustering, dtr_lab.mtl.clustering), printed as the YAML the ``intervals`` option takes.

    python analysis/cluster_intervals.py RUN_DIR --k 5     # from a run's GradientConflict records
    python analysis/cluster_intervals.py --snr --timesteps 1000 --schedule linear --k 5

From a run, the matrix is the one ``dtr_lab.runs.read_affinity`` reads (AffinityRouting reads the same):
the mean over the later half of its measured steps, or the matrix at ``--step``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dtr_lab.diffusion import GaussianDiffusion
from dtr_lab.diffusion.schedule import SCHEDULES
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.clustering import SNR_OBJECTIVES, affinity_intervals, boundaries_yaml, snr_intervals
from dtr_lab.runs import read_affinity

PROG = Path(__file__).name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Print the clustered boundaries as YAML; bad input prints one ``error:`` line and returns 2."""
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="run directory with records/ from training")
    parser.add_argument("--k", type=int, required=True, help="number of intervals to make")
    parser.add_argument(
        "--records", default="conflict", help="records file (and interval name), default conflict"
    )
    parser.add_argument("--metric", default="cos", help="matrix metric in the records, default cos")
    parser.add_argument(
        "--step", type=int, default=None, help="training step to read (default: the later half's mean)"
    )
    parser.add_argument("--snr", action="store_true", help="cluster timesteps by an SNR objective instead")
    parser.add_argument(
        "--objective", default="ant_snr", choices=SNR_OBJECTIVES, help="objective for --snr, default ant_snr"
    )
    parser.add_argument("--timesteps", type=int, default=1000, help="T for --snr")
    parser.add_argument("--schedule", default="linear", choices=SCHEDULES, help="noise schedule for --snr")
    args = parser.parse_args(argv)
    try:
        if args.k < 2:
            raise DTRLabError(f"--k={args.k} must be at least 2: one interval is not a split")
        if args.snr:
            if args.timesteps < 2:
                raise DTRLabError(f"--timesteps={args.timesteps} must be at least 2 (T, the steps to split)")
            if args.k > args.timesteps:
                raise DTRLabError(f"--k={args.k} is more than --timesteps={args.timesteps}; lower --k")
            diffusion = GaussianDiffusion(args.timesteps, args.schedule)
            edges = snr_intervals(diffusion.snr(torch.arange(args.timesteps)), args.k, args.objective)
            print(
                f"# {args.k} intervals of least {args.objective}, {args.schedule} schedule, "
                f"T={args.timesteps}"
            )
        else:
            if args.run_dir is None:
                raise DTRLabError("give a RUN_DIR to read affinity records from, or --snr")
            affinity, fine_edges, _ = read_affinity(args.run_dir, (args.records, args.metric), args.step)
            if args.k > len(affinity):
                raise DTRLabError(
                    f"--k={args.k} is more than the {len(affinity)} {args.records} intervals to cluster"
                )
            groups = affinity_intervals(torch.from_numpy(affinity), args.k)
            edges = [fine_edges[g] for g in groups]
            when = "the later half of its steps" if args.step is None else f"step {args.step}"
            print(f"# {len(affinity)} {args.records} intervals clustered by {args.metric!r}, {when}")
    except DTRLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(boundaries_yaml(edges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
