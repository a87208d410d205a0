"""The sampling weights' exponential moving average, with the warm-up of TensorFlow's
ExponentialMovingAverage."""

from __future__ import annotations

from collections.abc import Callable

import torch


def ema_multi_avg_fn(decay: float) -> Callable:
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)), so early averages aren't stale."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update
