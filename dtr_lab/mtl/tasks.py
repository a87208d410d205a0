"""The timestep tasks of a run: one owner for the K intervals, the training timesteps and the per-interval
gradients of a step.

The module builds one ``Tasks`` from its schedule; the MTL method and the analysis callbacks read its
intervals, so K is stated once. A callback that wants another split asks ``split`` for it explicitly
(and pays for its own gradients). Per-interval gradients of a batch grouped by interval are computed
through ``gradients``, at most once per key: GradientConflict and TaskAffinity measuring the same probe
at the same step share one set, whatever the order of the callback list, and the module releases the
set before its own training step so it never lives beside the step's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import torch

from dtr_lab.mtl.gradients import interval_gradients
from dtr_lab.mtl.intervals import DEFAULT_INTERVALS, Intervals, TaskIntervals

LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class Tasks:
    """K timestep intervals of one schedule, the training timesteps over them, a per-step gradient cache."""

    def __init__(self, snr: torch.Tensor, intervals: Intervals = DEFAULT_INTERVALS, stratified: bool = False):
        """
        Args:
            snr: SNR(t) of the schedule, (T,), decreasing in t.
            intervals: how to split the T timesteps into K intervals.
            stratified: sample training timesteps B/K per interval (the MTL methods) instead of
                uniformly over 0 … T−1.
        """
        self.snr = snr.detach().cpu()
        self.config = intervals
        self.intervals = intervals.build(self.snr)
        self.stratified = stratified
        self._key: Hashable | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_intervals(self) -> int:
        return self.intervals.num_intervals

    @property
    def num_timesteps(self) -> int:
        return self.intervals.num_timesteps

    def split(self, intervals: Intervals | None) -> TaskIntervals:
        """The module's intervals (None), or another split of the same schedule asked for explicitly."""
        return self.intervals if intervals is None else intervals.build(self.snr)

    def check_batch_size(self, batch_size: int) -> None:
        """Stratified sampling needs B divisible by K."""
        if self.stratified:
            self.intervals.per_interval(batch_size)

    def training_timesteps(
        self, batch_size: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Training timesteps, (B,) long: B/K from each interval in interval order when stratified,
        else t ~ U{0, …, T−1}."""
        if self.stratified:
            per_interval = self.intervals.per_interval(batch_size)
            return self.intervals.stratified_timesteps(per_interval, generator, device)
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=device)

    def gradients(
        self,
        key: Hashable,
        loss_fn: LossFn,
        batch: tuple[torch.Tensor | None, ...],
        num_intervals: int,
        params: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-interval gradients (K, P) and per-sample reported values (N,) of a batch grouped by interval
        (see ``interval_gradients``), computed once for every caller with the same key until released."""
        if self._key != key or self._value is None:
            self.release()
            self._value = interval_gradients(loss_fn, batch, num_intervals, params)
            self._key = key
        return self._value

    def release(self) -> None:
        """Drop the cached gradients (K·P floats: the size of K models' gradients)."""
        self._key, self._value = None, None

    def __repr__(self) -> str:
        return f"Tasks({self.intervals!r}, stratified={self.stratified})"
