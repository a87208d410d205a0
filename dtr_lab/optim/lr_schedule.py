"""Learning-rate schedules over a run's optimizer steps (model.lr_schedule; none: constant, as DiT and DTR).

model.lr_schedule is a factory, optimizer -> torch.optim.lr_scheduler.LRScheduler, stepped once per optimizer
step: any class of torch.optim.lr_scheduler is one as configured, e.g.

    lr_schedule:
      class_path: torch.optim.lr_scheduler.StepLR
      init_args: {step_size: 500, gamma: 0.5}

(ReduceLROnPlateau, which steps on a metric, is not: it is not an LRScheduler.) It scales every parameter
group, an MTL method's own included (ANT-UW's s_k), unless the method keeps its group out of it
(UncertaintyWeighting(scheduled=false)). The digits convergence pilot used WarmupCosine: at a constant lr its
unrouted FID rises again after its minimum (docs/studies.md, "The pilot").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from dtr_lab.errors import DTRLabError

LRScheduleFactory = Callable[[torch.optim.Optimizer], LRScheduler]
# a parameter group with this key false keeps its own lr whatever the schedule (hold_unscheduled)
SCHEDULED = "scheduled"


class WarmupCosine(LambdaLR):
    """Linear warm-up over `warmup_steps` (factor (n + 1) / warmup_steps), then half a cosine from 1 down to
    `final_ratio` at step total_steps − 1 (Loshchilov & Hutter, SGDR, ICLR 2017, without restarts)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        final_ratio: float = 0.0,
    ) -> None:
        """
        Args:
            optimizer: filled in by the module.
            total_steps: the optimizer steps the schedule spans, as a rule trainer.max_steps.
            warmup_steps: steps of linear warm-up from lr/warmup_steps to lr (0: none), below total_steps.
            final_ratio: the factor reached at the last step, in [0, 1] (0: the lr decays to 0).
        """
        for name, value, least in (("total_steps", total_steps, 1), ("warmup_steps", warmup_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise DTRLabError(
                    f"model.lr_schedule.init_args.{name}={value!r} must be an integer ≥ {least}"
                )
        if warmup_steps >= total_steps:
            raise DTRLabError(
                f"model.lr_schedule.init_args.warmup_steps={warmup_steps} must be below "
                f"total_steps={total_steps}"
            )
        if not 0.0 <= final_ratio <= 1.0:
            raise DTRLabError(f"model.lr_schedule.init_args.final_ratio={final_ratio} must be in [0, 1]")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.final_ratio = final_ratio
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The lr's factor at optimizer step `step` = 0, 1, …"""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def hold_unscheduled(optimizer: torch.optim.Optimizer) -> None:
    """Put the groups marked ``scheduled: False`` back at the lr they started with, after the schedule was
    built or stepped (a torch scheduler scales every group; it records each one's start as initial_lr)."""
    for group in optimizer.param_groups:
        if not group.get(SCHEDULED, True):
            group["lr"] = group["initial_lr"]
