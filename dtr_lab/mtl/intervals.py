"""Task intervals: K contiguous groups of timesteps, the "tasks" of MTL analysis and optimisation.

Interval k holds the timesteps ``[edges[k], edges[k+1])``. The edges are uniform in t, uniform in
log-SNR, clustered by an SNR objective of :mod:`dtr_lab.mtl.clustering` (ANT's ``ant_snr``, or
``log_snr_variance``), or given explicitly (e.g. printed by ``analysis/cluster_intervals.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.clustering import SNR_OBJECTIVES, snr_intervals

SPACINGS = ("uniform", "log_snr", *SNR_OBJECTIVES)


def check_num_intervals(num_intervals: int, num_timesteps: int | None = None) -> int:
    """K must be at least 2 (one interval is no multi-task split) and at most T."""
    if num_intervals < 2:
        raise DTRLabError(
            f"intervals.num_intervals={num_intervals} must be at least 2: one interval is not a "
            "multi-task split; use e.g. 5"
        )
    if num_timesteps is not None and num_intervals > num_timesteps:
        raise DTRLabError(
            f"intervals.num_intervals={num_intervals} is larger than the number of timesteps "
            f"T={num_timesteps}; use at most {num_timesteps}"
        )
    return num_intervals


@dataclass(frozen=True)
class Intervals:
    """How to split the T timesteps into K task intervals (the config value; ``build`` makes them).

    num_intervals: K, the number of intervals (ignored when ``boundaries`` is given).
    spacing: "uniform" (equal widths in t), "log_snr" (equal widths in log-SNR), or the exact optimum of
        an SNR clustering objective: "ant_snr" (ANT's) or "log_snr_variance".
    boundaries: explicit edges [0, b_1, …, T]; overrides the other two options.
    """

    num_intervals: int = 5
    spacing: str = "uniform"
    boundaries: list[int] | None = None

    @property
    def k(self) -> int:
        """The number of intervals this config makes."""
        return len(self.boundaries) - 1 if self.boundaries is not None else self.num_intervals

    def build(self, snr: torch.Tensor) -> TaskIntervals:
        """The intervals for a schedule whose SNR table (T,) decreases with t."""
        num_timesteps = len(snr)
        if self.boundaries is not None:
            return TaskIntervals(self.boundaries, num_timesteps)
        k = check_num_intervals(self.num_intervals, num_timesteps)
        if self.spacing == "uniform":
            edges = torch.div(torch.arange(k + 1) * num_timesteps, k, rounding_mode="floor")
        elif self.spacing == "log_snr":
            edges = _log_snr_edges(snr, k)
        elif self.spacing in SNR_OBJECTIVES:
            edges = torch.tensor(snr_intervals(snr, k, self.spacing))
        else:
            raise DTRLabError(
                f"intervals.spacing={self.spacing!r} is unknown; choose one of {', '.join(SPACINGS)}"
            )
        return TaskIntervals(edges.tolist(), num_timesteps)


DEFAULT_INTERVALS = Intervals()  # five uniform intervals; the shared default is safe because it is frozen


def _log_snr_edges(snr: torch.Tensor, k: int) -> torch.Tensor:
    """Edges cutting log-SNR (decreasing in t) into k equal-width ranges, (k+1,) long."""
    log_snr = snr.double().log()
    if not bool((log_snr[1:] < log_snr[:-1]).all()):
        raise DTRLabError(
            "intervals.spacing='log_snr' needs an SNR that strictly decreases with t; "
            "use spacing: uniform or explicit intervals.boundaries"
        )
    levels = torch.linspace(float(log_snr[0]), float(log_snr[-1]), k + 1, dtype=torch.float64)
    # edge k = how many timesteps lie strictly above level k; the end levels are pinned to 0 and T
    edges = torch.searchsorted(-log_snr, -levels[1:-1])
    edges = torch.cat([torch.tensor([0]), edges, torch.tensor([len(snr)])])
    widths = edges.diff()
    if bool((widths == 0).any()):
        raise DTRLabError(
            f"intervals.num_intervals={k} with spacing='log_snr' leaves interval "
            f"{int((widths == 0).nonzero()[0])} empty on this schedule; use fewer intervals or "
            "spacing: uniform"
        )
    return edges


class TaskIntervals:
    """K contiguous timestep intervals [edges[k], edges[k+1]) covering 0 … T−1."""

    def __init__(self, edges: list[int], num_timesteps: int) -> None:
        edges = [int(e) for e in edges]
        check_num_intervals(len(edges) - 1, num_timesteps)
        if edges[0] != 0 or edges[-1] != num_timesteps:
            raise DTRLabError(
                f"intervals.boundaries={edges} must start at 0 and end at T={num_timesteps}, "
                f"e.g. [0, {num_timesteps // 2}, {num_timesteps}]"
            )
        if any(b <= a for a, b in zip(edges[:-1], edges[1:], strict=True)):
            raise DTRLabError(
                f"intervals.boundaries={edges} must be strictly increasing (every interval non-empty)"
            )
        self.edges = torch.tensor(edges, dtype=torch.long)  # (K+1,)
        self.num_intervals = len(edges) - 1
        self.num_timesteps = num_timesteps

    def __repr__(self) -> str:
        return f"TaskIntervals(edges={self.edges.tolist()}, num_timesteps={self.num_timesteps})"

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """The interval of each timestep, same shape as t."""
        return torch.bucketize(t, self.edges[1:-1].to(t.device), right=True)

    def per_interval(self, batch_size: int) -> int:
        """B/K, the samples each interval gets in a stratified batch; B must be a multiple of K."""
        if batch_size % self.num_intervals:
            raise DTRLabError(
                f"data.batch_size={batch_size} is not a multiple of intervals.num_intervals="
                f"{self.num_intervals}, so stratified timestep sampling cannot give every interval "
                f"B/K samples; use a multiple of {self.num_intervals}, e.g. "
                f"{(batch_size // self.num_intervals + 1) * self.num_intervals}"
            )
        return batch_size // self.num_intervals

    def stratified_timesteps(
        self, per_interval: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Stratified timesteps, (K·per_interval,) long: per_interval uniform draws from each interval, in
        interval order."""
        lo, hi = self.edges[:-1].to(device), self.edges[1:].to(device)
        u = torch.rand(
            self.num_intervals, per_interval, generator=generator, device=device, dtype=torch.float64
        )
        # the clamp guards u·width rounding up to width
        t = lo[:, None] + (u * (hi - lo)[:, None]).long()  # (K, per_interval)
        return torch.minimum(t, hi[:, None] - 1).flatten()

    def midpoints(self) -> torch.Tensor:
        """The centre timestep of each interval, ⌊(start + end)/2⌋ with end exclusive, (K,) long."""
        return torch.div(self.edges[:-1] + self.edges[1:], 2, rounding_mode="floor")

    def labels(self) -> list[str]:
        """Readable inclusive timestep ranges, e.g. "0–199"."""
        return [
            f"{a}–{b - 1}" for a, b in zip(self.edges[:-1].tolist(), self.edges[1:].tolist(), strict=True)
        ]
