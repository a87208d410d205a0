"""Paired differences over seeds: mean and Student-t confidence interval (no training imports).

A paired study trains both arms of a comparison from the same seed (same initial weights, data order
and noise), so the seed-to-seed variation common to both arms cancels in the per-seed difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences b − a with the half-width of its confidence interval."""

    mean: float
    half_width: float  # nan when fewer than 2 pairs
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)


def paired_difference(differences: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Mean ± t_{(1+level)/2, n−1} · sd/√n of the per-seed differences (sd with n − 1 dof)."""
    d = [float(x) for x in differences if not math.isnan(float(x))]
    n = len(d)
    if n == 0:
        return PairedDifference(math.nan, math.nan, 0)
    mean = sum(d) / n
    if n == 1:
        return PairedDifference(mean, math.nan, 1)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return PairedDifference(mean, stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n), n)
