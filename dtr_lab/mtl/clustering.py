"""Interval clustering (ANT, Go et al., NeurIPS 2023, arXiv 2306.00354): split n ordered units
(timesteps, or fine intervals) into k contiguous intervals minimising a summed cost, by exact dynamic
programming.

Costs of an interval [a, b) over timesteps, by name (SNR_OBJECTIVES):
- ``ant_snr``, ANT's SNR objective (ANT's interval_clustering.py, snr_based_clustering):
  Σ_{u∈[a,b)} |SNR(u) − SNR(c)| on raw SNR, c = round((a+b)/2) with halves to even as Python rounds;
- ``log_snr_variance``: Σ_{u∈[a,b)} (log SNR(u) − mean over [a,b))², the spread of log-SNR.
And over units with a measured affinity (ANT's tas_based_clustering): minus the affinity of each
unit to its interval's centre unit ⌊(a+b)/2⌋.

The command line that prints clustered boundaries for a config is ``analysis/cluster_intervals.py``.
"""

from __future__ import annotations

import torch

from dtr_lab.errors import DTRLabError

SNR_OBJECTIVES = ("ant_snr", "log_snr_variance")  # the interval costs over timesteps, by name


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


if __name__ == "__main__":  # the command line that lived here moved: say where, never exit 0 in silence
    import sys

    print(
        "error: python -m dtr_lab.mtl.clustering moved to analysis/cluster_intervals.py, with the same "
        "options: python analysis/cluster_intervals.py RUN_DIR --k K (or --snr --k K)",
        file=sys.stderr,
    )
    sys.exit(2)
