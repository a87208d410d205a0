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


# ------------------------------------------------------------------- precision fixed before a study
def sd_of(d: PairedDifference, level: float = 0.95) -> float:
    """The per-seed sd of the differences behind an interval (its half-width · √n / t)."""
    if d.n < 2:
        return math.nan
    return d.half_width * math.sqrt(d.n) / stats.t.ppf((1 + level) / 2, d.n - 1)


def expected_half_width(sd: float, n: int, level: float = 0.95) -> float:
    """The half-width n pairs give at per-seed sd `sd`: t_{(1+level)/2, n−1} · sd/√n."""
    return stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def pairs_needed(sd: float, half_width: float, level: float = 0.95, most: int = 100_000) -> int:
    """The fewest pairs whose interval's half-width at sd `sd` is at most `half_width`."""
    n = 2
    while expected_half_width(sd, n, level) > half_width:
        n += 1
        if n > most:
            raise ValueError(f"more than {most} pairs needed for a half-width of {half_width:g} at sd {sd:g}")
    return n


def detectable_effect(sd: float, n: int, power: float = 0.8, level: float = 0.95) -> float:
    """The smallest true difference a two-sided paired t test at `level` detects with `power`, at n pairs
    and sd `sd`: (t_{(1+level)/2} + t_{power}) · sd/√n, both on n − 1 degrees of freedom."""
    return (stats.t.ppf((1 + level) / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n)


BETTER, WORSE, UNDECIDED = "better", "worse", "undecided at this precision"


def verdict(d: PairedDifference, margin: float, unit: str = "", lower_is_better: bool = True) -> str:
    """The verdict rule, fixed before a study and applied as it stands: an interval that excludes 0 says
    b is better or worse; one that lies inside ±margin says there is no difference beyond it (an
    equivalence test: two one-sided tests at (1 − level)/2 each); any other is undecided."""
    if d.n < 2:
        return UNDECIDED
    if d.excludes_zero():
        return BETTER if (d.high < 0) == lower_is_better else WORSE
    if -margin <= d.low and d.high <= margin:
        return f"no difference beyond ±{margin:g}{unit}"
    return UNDECIDED
