"""Learning-rate schedules over a run's optimizer steps (model.lr_schedule; none: constant, as DiT and DTR).

A schedule is a factor of the optimizer's lr at each optimizer step n = 0, 1, …, bound to the run's length
(trainer.max_steps) when the trainer starts. The digits convergence study (analysis/reproduce.py) uses
WarmupCosine: at a constant lr its unrouted FID rises again after its minimum (README, "The pilot").
"""

from __future__ import annotations

import math

from dtr_lab.errors import DTRLabError


class WarmupCosine:
    """Linear warm-up over `warmup_steps` (factor (n + 1) / warmup_steps), then half a cosine from 1 down to
    `final_ratio` at the run's last step (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts)."""

    def __init__(self, warmup_steps: int = 0, final_ratio: float = 0.0) -> None:
        """
        Args:
            warmup_steps: steps of linear warm-up from lr/warmup_steps to lr (0: none).
            final_ratio: the factor reached at the last step, in [0, 1] (0: the lr decays to 0).
        """
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise DTRLabError(
                f"model.lr_schedule.init_args.warmup_steps={warmup_steps!r} must be an integer ≥ 0"
            )
        if not 0.0 <= final_ratio <= 1.0:
            raise DTRLabError(f"model.lr_schedule.init_args.final_ratio={final_ratio} must be in [0, 1]")
        self.warmup_steps = warmup_steps
        self.final_ratio = final_ratio
        self.total_steps = 0  # set by bind

    def bind(self, max_steps: int) -> WarmupCosine:
        """Fix the run's length; the warm-up must end before it."""
        if max_steps < 1:
            raise DTRLabError(
                "model.lr_schedule needs the run's length: set trainer.max_steps (a step-based run)"
            )
        if self.warmup_steps >= max_steps:
            raise DTRLabError(
                f"model.lr_schedule.init_args.warmup_steps={self.warmup_steps} must be below "
                f"trainer.max_steps={max_steps}"
            )
        self.total_steps = max_steps
        return self

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return f"WarmupCosine(warmup_steps={self.warmup_steps}, final_ratio={self.final_ratio})"
