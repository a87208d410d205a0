"""Interval clustering (ANT, Go et al., NeurIPS 2023, arXiv 2306.00354): split n ordered units
(timesteps, or fine intervals) into k contiguous intervals minimising a summed cost, by exact dynamic
programming.

Costs of an interval [a, b) over timesteps, by name (SNR_OBJECTIVES):
- ``ant_snr``, ANT's SNR objective (ANT's interval_clustering.py, snr_based_clustering):
  Σ_{u∈[a,b)} |SNR(u) − SNR(c)| on raw SNR, c = round((a+b)/2) with halves to even as Python rounds;
- ``log_snr_variance``: Σ_{u∈[a,b)} (log SNR(u) − mean over [a,b))², the spread of log-SNR.
And over units with a measured affinity (ANT's tas_based_clustering): minus the affinity of each
unit to its interval's centre unit ⌊(a+b)/2⌋.

    python -m dtr_lab.mtl.clustering RUN_DIR --k 5            # from a run's GradientConflict records
    python -m dtr_lab.mtl.clustering --snr --timesteps 1000 --schedule linear --k 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dtr_lab.diffusion import GaussianDiffusion
from dtr_lab.diffusion.schedule import SCHEDULES
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import SNR_OBJECTIVES


def cluster(cost: torch.Tensor, k: int) -> list[int]:
    """The edges [0, e_1, …, n] of the k contiguous intervals of minimal total cost.

    ``cost[a, b]`` (an (n+1, n+1) matrix) is the cost of the interval holding units a … b−1; entries
    with b <= a are ignored. O(k·n²) time, vectorised over n² per interval.
    """
    n = cost.shape[0] - 1
    if k < 2:
        raise DTRLabError(f"k={k} must be at least 2: one interval is not a split")
    if n < k:
        raise DTRLabError(f"k={k} is more than the {n} units to cluster; use k <= {n}")
    c = cost.detach().double().cpu()
    a, b = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    c = torch.where(b > a, c, torch.inf)  # (a, b); empty intervals are impossible
    if bool(c.isnan().any()):
        raise DTRLabError("the clustering cost has NaN entries; check the affinity matrix for NaN")
    best = c[0]  # (n+1,) best cost of units 0 … b−1 in one interval
    starts = []  # per extra interval: the start of the last interval in the best split of 0 … b−1
    for _ in range(k - 1):
        best, start = (best[:, None] + c).min(dim=0)  # (n+1,) over the last interval's start a
        starts.append(start)
    edges = [n]
    for start in reversed(starts):
        edges.append(int(start[edges[-1]]))
    return [0, *reversed(edges)]


def log_snr_variance_cost(snr: torch.Tensor) -> torch.Tensor:
    """cost[a, b] = Σ_{t∈[a,b)} (log SNR(t) − mean over [a,b))², from prefix sums, (n+1, n+1)."""
    x = snr.detach().double().cpu().log()
    x = x - x.mean()  # centring keeps the prefix sums small, against cancellation
    s1 = torch.cat([x.new_zeros(1), x.cumsum(0)])  # (n+1,)
    s2 = torch.cat([x.new_zeros(1), (x * x).cumsum(0)])
    width = (torch.arange(len(s1))[None, :] - torch.arange(len(s1))[:, None]).double()  # (a, b): b − a
    total = s1[None, :] - s1[:, None]
    return (s2[None, :] - s2[:, None]) - total.pow(2) / width.clamp(min=1)


def centres(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The centre unit ⌊(a+b)/2⌋ of the interval [a, b), as TaskIntervals.midpoints defines it."""
    return torch.div(a + b, 2, rounding_mode="floor")


def ant_snr_centres(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ANT's SNR centre round((a+b)/2) of [a, b), halves to even; a single unit is its own centre."""
    return torch.minimum(torch.round((a + b) / 2).long(), (b - 1).clamp(min=0))  # torch.round: half to even


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index grids (a, b) over the (n+1, n+1) interval table."""
    return torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")


def centre_sums(values: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """cost[a, b] = Σ_{u∈[a,b)} values[u, centre[a, b]] from column prefix sums, (n+1, n+1) float64."""
    n = values.shape[0]
    column_sums = torch.cat([torch.zeros(1, n, dtype=torch.float64), values.cumsum(0)])  # (n+1, n)
    a, b = _grid(n)
    c = centre.clamp(max=n - 1)  # (n+1, n+1); entries with b <= a are ignored by cluster
    return column_sums[b, c] - column_sums[a, c]


def ant_snr_cost(snr: torch.Tensor) -> torch.Tensor:
    """cost[a, b] = Σ_{u∈[a,b)} |SNR(u) − SNR(c)| with c ANT's centre of [a, b), (n+1, n+1)."""
    x = snr.detach().double().cpu()
    return centre_sums((x[:, None] - x[None, :]).abs(), ant_snr_centres(*_grid(len(x))))  # (u, c) distances


def affinity_cost(affinity: torch.Tensor) -> torch.Tensor:
    """cost[a, b] = −Σ_{u∈[a,b)} affinity[u, c] with c the interval's centre unit, (n+1, n+1).

    ``affinity[u, v]`` is how much unit u has in common with unit v (e.g. the cosine of their
    gradients); the cost reads the centre's column.
    """
    if affinity.dim() != 2 or affinity.shape[0] != affinity.shape[1]:
        raise DTRLabError(f"the affinity matrix must be square, got shape {tuple(affinity.shape)}")
    affinity = affinity.detach().double().cpu()
    if bool(affinity.isnan().any()):
        i, j = (int(v) for v in affinity.isnan().nonzero()[0])
        raise DTRLabError(f"the affinity matrix has NaN (first at i={i}, j={j}); measure it again")
    return -centre_sums(affinity, centres(*_grid(affinity.shape[0])))


def snr_intervals(snr: torch.Tensor, k: int, objective: str = "ant_snr") -> list[int]:
    """Timestep edges of the k intervals of least SNR cost: ANT's objective or the log-SNR variance."""
    if objective == "ant_snr":
        return cluster(ant_snr_cost(snr), k)
    if objective == "log_snr_variance":
        return cluster(log_snr_variance_cost(snr), k)
    raise DTRLabError(
        f"clustering objective={objective!r} is unknown; choose one of {', '.join(SNR_OBJECTIVES)}"
    )


def affinity_intervals(affinity: torch.Tensor, k: int) -> list[int]:
    """Unit edges of the k intervals whose units have the most affinity to their centre."""
    return cluster(affinity_cost(affinity), k)


def boundaries_yaml(edges: list[int]) -> str:
    """The edges as a YAML snippet the ``intervals`` option accepts."""
    return f"intervals:\n  boundaries: [{', '.join(str(e) for e in edges)}]"


def _read_csv(path: Path, columns: set[str], hint: str):
    """A records CSV as a DataFrame with at least these columns."""
    import pandas as pd

    if not path.is_file():
        raise DTRLabError(f"{path} does not exist; {hint}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DTRLabError(f"{path} is not a readable CSV ({type(e).__name__}); {hint}") from None
    if not columns <= set(frame.columns):
        raise DTRLabError(
            f"{path} lacks the columns {','.join(sorted(columns - set(frame.columns)))}; {hint}"
        )
    return frame


def read_affinity(
    run_dir: Path, records: str, metric: str, step: int | None
) -> tuple[torch.Tensor, list[int], int]:
    """(affinity between the fine intervals (n, n), their timestep edges (n+1), the step read)."""
    hint = f"train with the callback that writes {records!r} records, or pass --records"
    matrix_path = run_dir / "records" / f"{records}.csv"
    intervals_path = run_dir / "records" / "intervals.csv"
    rows = _read_csv(matrix_path, {"step", "metric", "i", "j", "value"}, hint)
    spans = _read_csv(intervals_path, {"name", "k", "start", "end"}, hint)

    rows = rows[rows["metric"] == metric]
    if rows.empty:
        raise DTRLabError(f"{matrix_path} has no rows with metric {metric!r}; pass another --metric")
    if rows[["i", "j"]].isna().any().any():
        raise DTRLabError(
            f"{matrix_path}: metric {metric!r} is not a matrix (no i, j); pass another --metric"
        )
    steps = sorted(int(s) for s in rows["step"].unique())
    step = steps[-1] if step is None else step
    if step not in steps:
        raise DTRLabError(f"--step={step} is not in {matrix_path}; it holds steps {steps[0]} … {steps[-1]}")
    rows = rows[rows["step"] == step]

    # a resumed run appends its intervals again; the last copy is the one in use
    spans = spans[spans["name"] == records].drop_duplicates("k", keep="last").sort_values("k")
    n = len(spans)
    starts, ends = spans["start"].astype(int).tolist(), spans["end"].astype(int).tolist()
    if n == 0 or starts[0] != 0 or starts[1:] != ends[:-1]:
        raise DTRLabError(f"{intervals_path} has no contiguous intervals named {records!r} starting at 0")

    i, j = rows["i"].astype(int).to_numpy(), rows["j"].astype(int).to_numpy()
    if len(rows) != n * n or min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n:
        raise DTRLabError(
            f"{matrix_path} at step {step} holds {len(rows)} {metric!r} entries, not the {n}×{n} matrix "
            f"of the {n} intervals in {intervals_path}"
        )
    affinity = torch.full((n, n), torch.nan, dtype=torch.float64)
    values = torch.as_tensor(rows["value"].to_numpy(dtype=float), dtype=torch.float64)
    affinity[torch.as_tensor(i), torch.as_tensor(j)] = values
    if bool(affinity.isnan().any()):
        raise DTRLabError(
            f"{matrix_path} has NaN or missing {metric!r} entries at step {step}; pass another --step"
        )
    return affinity, [*starts, ends[-1]], step


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    """Print the clustered boundaries as YAML; bad input prints one ``error:`` line and returns 2."""
    parser = _Parser(prog="python -m dtr_lab.mtl.clustering", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="run directory with records/ from training")
    parser.add_argument("--k", type=int, required=True, help="number of intervals to make")
    parser.add_argument(
        "--records", default="conflict", help="records file (and interval name), default conflict"
    )
    parser.add_argument("--metric", default="cos", help="matrix metric in the records, default cos")
    parser.add_argument("--step", type=int, default=None, help="training step to read (default: the last)")
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
            affinity, fine_edges, step = read_affinity(args.run_dir, args.records, args.metric, args.step)
            if args.k > len(affinity):
                raise DTRLabError(
                    f"--k={args.k} is more than the {len(affinity)} {args.records} intervals to cluster"
                )
            groups = affinity_intervals(affinity, args.k)
            edges = [fine_edges[g] for g in groups]
            print(f"# {len(affinity)} {args.records} intervals clustered by {args.metric!r} at step {step}")
    except DTRLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(boundaries_yaml(edges))
    return 0


if __name__ == "__main__":
    sys.exit(main())
