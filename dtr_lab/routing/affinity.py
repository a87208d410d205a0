"""Affinity routing: DTR-shaped channel windows placed by a measured task affinity (dtr_lab's own idea).

DTR (Park et al., ICLR 2024) shifts a window of C_β channels monotonically with t, assuming that
nearby timesteps help each other. Affinity routing asks the measurement instead: it takes a K×K
affinity between timestep intervals — TaskAffinity's lookahead Z_{i→j} (TAG; Fifty et al., 2021) or,
as a fallback, GradientConflict's gradient cosine — and places the intervals on a line so that
intervals with high affinity sit close together (spectral seriation: the Fiedler vector of the
similarity graph's Laplacian; Atkins, Boman and Hendrickson, SIAM J. Comput. 1998). Interval k gets
the window [start_k, start_k + C_β) with start_k = round((C − C_β)·x_k), x_k ∈ [0, 1] its coordinate:
intervals that help each other share channels, intervals that conflict end up at opposite ends and
share only what two windows of width C_β must (max(0, 2·C_β − C) channels). Like DTR's, the table is the same
in every block and is a buffer (no parameters).

Steps:
    S = (Z + Zᵀ)/2                          symmetric affinity; the diagonal (self-affinity) is ignored
    W_ij = (S_ij − min S)/(max S − min S)   i ≠ j, min/max over pairs: only relative affinity matters,
                                            so the result does not depend on η or the loss scale
    L = D − W                               the graph Laplacian
    v = argmin of vᵀLv over unit v ⊥ 1      the Fiedler vector (ties: the one closest to the t order)
    x = (v − min v)/(max v − min v)         oriented so interval 0 (lowest t) is at the low end

Degenerate cases: one interval → one window, at channel 0, for every t. Every pair with the same
affinity (always the case for K = 2) says nothing relative: if that affinity is ≥ 0 (all help each
other) every interval gets the same window at channel 0; if it is < 0 (all conflict) the intervals
are spread evenly in t order (K = 2: the two ends).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import null_space
from scipy.sparse.csgraph import laplacian

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals, TaskIntervals
from dtr_lab.routing.base import active_channels, check_beta
from dtr_lab.routing.tables import TableRouting
from dtr_lab.runs import read_affinity_options

DIGITS = 6  # significant digits kept of the matrix: the identity (a checkpoint's) is exact


def check_matrix(source: list, k: int | None) -> np.ndarray:
    """An inline affinity as a finite square float matrix, K×K when K is asked for."""
    try:
        matrix = np.array(source, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        raise DTRLabError(
            f"AffinityRouting.source={source!r} is not a square K×K matrix; give K rows of K numbers "
            "(row i: the affinity of interval i to every interval j) or a run directory"
        )
    if k is not None and matrix.shape[0] != k:
        raise DTRLabError(
            f"AffinityRouting.source is {matrix.shape[0]}×{matrix.shape[0]} but intervals={k}; "
            f"give a {k}×{k} matrix or set intervals to {matrix.shape[0]}"
        )
    if not np.isfinite(matrix).all():
        i, j = np.argwhere(~np.isfinite(matrix))[0]
        raise DTRLabError(
            f"AffinityRouting.source has no finite affinity at ({i}, {j}); every entry must be a number "
            "(a run must have measured every pair of intervals)"
        )
    return matrix


def fiedler_coordinates(affinity: np.ndarray) -> np.ndarray:
    """Each interval's coordinate x_k ∈ [0, 1] on the line that keeps high-affinity intervals close, (K,)."""
    k = affinity.shape[0]
    if k == 1:
        return np.zeros(1)
    sym = (affinity + affinity.T) / 2  # (K, K)
    off = ~np.eye(k, dtype=bool)
    low, high = sym[off].min(), sym[off].max()
    order = np.arange(k, dtype=np.float64)
    if high - low <= 1e-12 * max(abs(high), abs(low), 1e-300):
        # no pair is more alike than another: share one window if they help, spread them if they conflict
        return order / (k - 1) if low < 0 else np.zeros(k)
    weights = np.where(off, (sym - low) / (high - low), 0.0)  # (K, K) in [0, 1]
    basis = null_space(np.ones((1, k)))  # (K, K−1): an orthonormal basis of 1⊥
    values, vectors = np.linalg.eigh(basis.T @ laplacian(weights) @ basis)  # ascending
    # a disconnected graph (e.g. three mutually conflicting blocks) ties the smallest eigenvalue:
    # the affinity does not choose among the tied directions, so take the one closest to the t order
    tied = basis @ vectors[:, values <= values[0] + 1e-9 * max(values[-1], 1.0)]  # (K, m)
    v = tied @ (tied.T @ (order - order.mean()))
    if np.ptp(v) <= 1e-12:
        v = tied[:, 0]
    x = np.round((v - v.min()) / np.ptp(v), 12)  # drops eigensolver noise (1e-16) at the ends
    # orient: interval 0 nearer the low end (when it is exactly in the middle: x increasing with t)
    if x[0] > 0.5 or (x[0] == 0.5 and np.corrcoef(x, order)[0, 1] < 0):
        x = 1.0 - x
    return x


class AffinityRouting(TableRouting):
    """A window of C_β channels per interval, placed on a 1-D spectral embedding of measured task affinity.

    It takes numbers: a K×K matrix (and the intervals it was measured on). A run directory is turned into
    them by ``dtr_lab.runs.read_affinity_options`` (``run_options``: on the command line and in configs
    ``source: runs/NAME/version_N`` is read so before the routing is built; config.yaml keeps the path).
    """

    label = "affinity"
    run_options = {"source": read_affinity_options}

    def __init__(
        self,
        source: list[list[float]] | str,
        beta: float = 0.8,
        intervals: int | None = None,
        edges: list[int] | None = None,
        measured: str = "inline",
    ) -> None:
        """
        Args:
            source: a K×K affinity matrix (row i: interval i's affinity to interval j); in a config also a
                run directory (``runs/NAME/version_N``) with TaskAffinity records (GradientConflict's
                cosine records when it has none), read by dtr_lab.runs into the mean over the later half
                of its measured steps and the intervals it measured on.
            beta: the fraction of channels active per timestep (C_β = ⌊β·C⌋), as DTR's.
            intervals: the K the routing asks for; a source of another size is an error (null: any K).
            edges: the K + 1 interval edges the matrix was measured on (null: K uniform intervals over T).
            measured: where the matrix came from ("inline", "affinity/tag", "conflict/cos").
        """
        self.beta = check_beta(beta)
        if intervals is not None and intervals < 1:
            raise DTRLabError(f"AffinityRouting.intervals={intervals} must be at least 1 (or null for any K)")
        if isinstance(source, str):
            raise DTRLabError(
                f"AffinityRouting.source={source!r} is a path: a run directory is read by dtr_lab.runs "
                "(configs and the command line do it); in Python pass "
                "AffinityRouting(**dtr_lab.runs.read_affinity_options(path)) or the K×K matrix"
            )
        if edges is not None and intervals is not None and len(edges) - 1 != intervals:
            raise DTRLabError(
                f"AffinityRouting.source ({measured}) measured K={len(edges) - 1} intervals but "
                f"intervals={intervals}; measure with TaskAffinity.intervals.num_intervals={intervals} "
                f"or set intervals to {len(edges) - 1}"
            )
        self.intervals = intervals
        self.measured = measured
        self.edges = None if edges is None else [int(e) for e in edges]  # None: K uniform intervals over T
        matrix = check_matrix(source, intervals)
        # rounded once, here: the table and the identity (a checkpoint's) use the same numbers
        self.affinity = [[float(f"{v:.{DIGITS}g}") for v in row] for row in matrix.tolist()]
        self.coordinates = fiedler_coordinates(np.array(self.affinity))  # (K,)

    def options(self) -> dict:
        # what decides the table, not where it was read from: a moved source run still resumes,
        # a source that gained records does not
        return {"beta": self.beta, "measured": self.measured, "edges": self.edges, "affinity": self.affinity}

    def task_intervals(self, num_timesteps: int) -> torch.Tensor:
        """The interval of every timestep t = 0 … T−1, (T,)."""
        k = len(self.affinity)
        t = torch.arange(num_timesteps)
        if k == 1:
            return torch.zeros(num_timesteps, dtype=torch.long)
        if self.edges is None:
            # uniform spacing reads only the schedule's length
            return Intervals(num_intervals=k).build(torch.ones(num_timesteps)).index(t)
        if self.edges[-1] != num_timesteps:
            raise DTRLabError(
                f"AffinityRouting ({self.measured}) measured intervals {self.edges} over "
                f"T={self.edges[-1]} timesteps, but this model has T={num_timesteps}; measure with the same T"
            )
        return TaskIntervals(self.edges, num_timesteps).index(t)

    def starts(self, channels: int) -> torch.Tensor:
        """Each interval's window start round((C − C_β)·x_k), half up (DTRRouting: half to even), (K,)."""
        c_beta = active_channels(self.beta, channels)
        return torch.tensor(
            [math.floor((channels - c_beta) * x + 0.5) for x in self.coordinates], dtype=torch.long
        )

    def table(self, num_timesteps: int, channels: int, block: int = 0) -> torch.Tensor:
        c_beta = active_channels(self.beta, channels)
        start = self.starts(channels)[self.task_intervals(num_timesteps)]  # (T,)
        c = torch.arange(channels)
        return (c >= start[:, None]) & (c < start[:, None] + c_beta)  # (T, C)
