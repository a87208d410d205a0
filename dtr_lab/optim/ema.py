"""The sampling weights' exponential moving average, by one of two rules, updated without reading a device
tensor on the host.

- official (DiT's and DTR's train.py): the weights copied at step 0 (``update_ema(ema, model, decay=0)``
  before the first step; here the copy the EMA is built from), then e ← d·e + (1 − d)·θ after every
  optimizer step. After n steps θ_0 still weighs d^n: 0.9999^10000 = 37 % at 10K steps.
- warm-up (TensorFlow's ExponentialMovingAverage ``num_updates``): the weights copied at the first update,
  then decay_n = min(d, (1 + n) / (10 + n)), so a short run's average is not mostly its initial weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    """EMA of a model's parameters and buffers: with ``warmup``, decay_n = min(decay, (1 + n) / (10 + n))
    after a copy at n = 0; without, the official plain decay from the copy made here (step 0). n is the
    number of updates so far (``n_averaged``, saved in checkpoints).

    AveragedModel's own update reads ``n_averaged`` on the host twice a step (``bool(n == 0)``,
    ``n > 0``), and a decay computed from it a third time: on a GPU each read waits for every queued kernel.
    Here the count is mirrored on the host, read from the device once after a state is loaded.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        super().__init__(model, use_buffers=True)  # a deep copy: the official rule's step-0 weights
        self.decay = decay
        self.warmup = warmup
        self.count: int | None = 0  # n on the host; None: read n_averaged at the next update (after a load)
        self.register_load_state_dict_post_hook(EMA._forget_count)

    @staticmethod
    def _forget_count(module: EMA, incompatible_keys) -> None:
        module.count = None

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        if self.count is None:
            self.count = int(self.n_averaged)  # once after a checkpoint load, not per step
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [p.detach() for p in (*model.parameters(), *model.buffers())]
        if not self.warmup:
            torch._foreach_lerp_(averaged, current, 1 - self.decay)
        elif self.count == 0:
            torch._foreach_copy_(averaged, current)
        else:
            n = float(self.count)
            torch._foreach_lerp_(averaged, current, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.n_averaged += 1
        self.count += 1
