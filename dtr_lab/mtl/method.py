"""The one protocol of the MTL methods over timestep intervals.

A method is called once per training step with the step's batch grouped by interval
(``TaskBatch``); it asks for what it needs — the K interval losses, the K interval gradients, or the
gradient of a loss it builds — and returns an ``Update``: a loss for the trainer to back-propagate
(loss-weighting methods) or a flat gradient for the module to apply (gradient methods, which
optimise manually), with its own named metrics. The module calls every method the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dtr_lab.mtl.gradients import flat_grad
from dtr_lab.mtl.intervals import Intervals, check_num_intervals
from dtr_lab.mtl.tasks import Tasks

# sub-batch (x0, t, noise, y) -> (objective, reported) per sample
LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Update:
    """What a method returns: ``loss`` (back-propagated by the trainer) or ``grad`` (P,), and metrics."""

    loss: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


class TaskBatch:
    """One training batch grouped by interval (B/K rows each, in interval order), as a method sees it.

    Losses and gradients are computed on demand, each at most once; ``reported`` holds the per-sample
    ε-MSE of whichever pass ran, for the training log.
    """

    def __init__(
        self,
        tasks: Tasks,
        loss_fn: LossFn,
        batch: tuple[torch.Tensor | None, ...],
        params: Sequence[torch.Tensor],
        step: int,
        seed: int,
    ) -> None:
        self.tasks = tasks
        self.loss_fn = loss_fn
        self.batch = batch
        self.params = params
        self.step = step
        self.seed = seed
        self.num_intervals = tasks.num_intervals
        self.reported: torch.Tensor | None = None
        self._losses: torch.Tensor | None = None

    def losses(self) -> torch.Tensor:
        """The K interval mean objectives L_k, (K,), differentiable: one forward over the whole batch."""
        if self._losses is None:
            objective, reported = self.loss_fn(*self.batch)  # (N,) each
            self._losses = objective.view(self.num_intervals, -1).mean(1)
            self.reported = reported
        return self._losses

    def gradients(self) -> torch.Tensor:
        """The K interval gradients ∇L_k, (K, P): one backward per interval sub-batch."""
        grads, reported = self.tasks.gradients(
            ("train", self.step), self.loss_fn, self.batch, self.num_intervals, self.params
        )
        self.reported = reported
        return grads

    def gradient(self, loss: torch.Tensor) -> torch.Tensor:
        """∂loss/∂θ of a scalar built from ``losses()``, flat (P,)."""
        return flat_grad(loss, self.params)


class MTLMethod(nn.Module):
    """Base of the methods over K task intervals: ``method(batch) -> Update``.

    ``gradient_method`` says whether it returns a gradient (the module then optimises manually) or a loss.
    ``intervals`` optionally states the run's split where the method is configured; the module's
    ``intervals`` may state it instead, and the two must agree.
    """

    gradient_method = False
    tag = ""  # the prefix of its metrics, e.g. "pcgrad"

    def __init__(self, intervals: Intervals | None = None) -> None:
        super().__init__()
        if intervals is not None:
            check_num_intervals(intervals.k)
        self.intervals = intervals

    def bind(self, tasks: Tasks) -> None:
        """Size the method's state for the run's K intervals (called once by the module)."""

    def options(self) -> dict[str, Any]:
        """The options that decide how it trains (CAGrad's c, Nash-MTL's update_every, …), part of a
        checkpoint's identity: its constructor's arguments, each kept under its own name (an attribute of
        another name fails here, at the first checkpoint, not silently); the intervals are recorded apart."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name not in ("self", "intervals")}

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups of the method's own learnable state."""
        return []

    def forward(self, batch: TaskBatch) -> Update:
        raise NotImplementedError


def clip_norm(update: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The update scaled down to L2 norm ``max_norm`` when longer, and its norm before."""
    norm = update.norm()
    return update * (max_norm / norm).clamp(max=1.0), norm
