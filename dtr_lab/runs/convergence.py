"""Convergence summaries of a score curve (e.g. digits-FID against training steps), paired over seeds
(no training imports).

- Steps to a target: the first step at which the curve is ≤ the target, linearly interpolated between the
  last scoring point above it and the first at or below it (a curve that starts at or below the target
  reaches it at its first scored step). A curve that never gets there is "not reached by step N", N its
  last scored step.
- Plateau: the mean of the curve's last m scoring points (m = 3 by default), the level a run that has
  converged holds.

"Accelerates convergence" is the paired difference b − a of steps to a target chosen beforehand. A pair in
which one arm reaches the target and the other does not is censored: the other arm counts as reaching it
at its last scored step N, so that pair's difference is a bound (the true one is at least as large), and
the summary reports how many pairs were censored. A pair in which neither arm reaches it carries no
difference and is left out, counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dtr_lab.errors import DTRLabError
from dtr_lab.runs.stats import PairedDifference, paired_difference


@dataclass(frozen=True)
class TargetSteps:
    """When a curve first reaches a target: `step`, or None when not reached by its last scored step."""

    step: float | None
    last_step: int

    @property
    def reached(self) -> bool:
        return self.step is not None

    @property
    def censored_step(self) -> float:
        """The step, or the last scored step N for a curve that did not reach the target by then."""
        return self.last_step if self.step is None else self.step

    def entry(self) -> str:
        return f"not reached by step {self.last_step}" if self.step is None else f"{self.step:.0f}"


def _points(steps: Sequence[float], values: Sequence[float]) -> list[tuple[float, float]]:
    if len(steps) != len(values):
        raise DTRLabError(f"a curve needs one value per step, got {len(steps)} steps, {len(values)} values")
    pairs = zip(steps, values, strict=True)
    points = sorted((float(s), float(v)) for s, v in pairs if not math.isnan(float(v)))
    if not points:
        raise DTRLabError(
            "a curve has no scored point; score the runs along training (SampleQuality every_n_steps)"
        )
    return points


def steps_to_target(steps: Sequence[float], values: Sequence[float], target: float) -> TargetSteps:
    """The first step at which the curve (scored at `steps`, NaN points skipped) is ≤ `target`, linearly
    interpolated between scoring points; not reached (step None) when no point is ≤ target."""
    points = _points(steps, values)
    last = int(points[-1][0])
    previous = None
    for step, value in points:
        if value <= target:
            if previous is None:
                return TargetSteps(step, last)
            s0, v0 = previous  # v0 > target ≥ value: the crossing lies in (s0, step]
            return TargetSteps(s0 + (step - s0) * (v0 - target) / (v0 - value), last)
        previous = (step, value)
    return TargetSteps(None, last)


def plateau(steps: Sequence[float], values: Sequence[float], last: int = 3) -> float:
    """Mean of the curve's last `last` scoring points (NaN points skipped)."""
    points = _points(steps, values)
    if last < 1 or len(points) < last:
        raise DTRLabError(
            f"plateau over the last {last} scoring points needs at least {max(last, 1)}, the curve has "
            f"{len(points)}; score more often along training or average fewer points"
        )
    return sum(v for _, v in points[-last:]) / last


@dataclass(frozen=True)
class PairedSteps:
    """Paired difference b − a of steps to a target over seeds, with how the pairs reached it."""

    difference: PairedDifference  # over the pairs where at least one arm reached, unreached ones censored
    both: int  # pairs where both arms reached the target
    a_only: int  # only a reached: b censored at its last step, the difference a lower bound
    b_only: int  # only b reached: a censored, the difference an upper bound
    neither: int  # left out of the difference
    last_step: int  # the largest last scored step of the pairs

    @property
    def censored(self) -> int:
        return self.a_only + self.b_only

    def entry(self) -> str:
        """A table cell: 'mean [low, high]' in steps, the censored pairs named; 'not reached by step N'
        when no arm of any pair reached the target."""
        d = self.difference
        if d.n == 0:
            return f"not reached by step {self.last_step}"
        text = f"{d.mean:+.0f}" if d.n < 2 else f"{d.mean:+.0f} [{d.low:+.0f}, {d.high:+.0f}]"
        notes = []
        if self.censored:
            notes.append(f"{self.censored} of {d.n} censored at step {self.last_step}")
        if self.neither:
            notes.append(f"{self.neither} not reached by step {self.last_step}")
        return text + (f" ({'; '.join(notes)})" if notes else "")


def paired_steps(a: Sequence[TargetSteps], b: Sequence[TargetSteps], level: float = 0.95) -> PairedSteps:
    """Per-seed differences b − a of steps to the target (pairs in seed order), censored as the module
    states, and their mean with its t interval."""
    if len(a) != len(b):
        raise DTRLabError(f"paired steps need one b per a, got {len(a)} and {len(b)} curves")
    pairs = list(zip(a, b, strict=True))
    diffs = [pb.censored_step - pa.censored_step for pa, pb in pairs if pa.reached or pb.reached]
    return PairedSteps(
        difference=paired_difference(diffs, level),
        both=sum(pa.reached and pb.reached for pa, pb in pairs),
        a_only=sum(pa.reached and not pb.reached for pa, pb in pairs),
        b_only=sum(pb.reached and not pa.reached for pa, pb in pairs),
        neither=sum(not (pa.reached or pb.reached) for pa, pb in pairs),
        last_step=max((max(pa.last_step, pb.last_step) for pa, pb in pairs), default=0),
    )
