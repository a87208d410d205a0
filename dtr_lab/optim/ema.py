"""The sampling weights' exponential moving average, with the warm-up of TensorFlow's
ExponentialMovingAverage, updated without reading a device tensor on the host."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMA(AveragedModel):
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after a copy at n = 0, so early averages
    aren't stale; n is the number of updates so far (``n_averaged``, saved in checkpoints).

    AveragedModel's own update reads ``n_averaged`` on the host twice a step (``bool(n == 0)``,
    ``n > 0``), and a decay computed from it a third time: on a GPU each read waits for every queued kernel.
    Here the count is mirrored on the host, read from the device once after a state is loaded.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__(model, use_buffers=True)
        self.decay = decay
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
        if self.count == 0:
            torch._foreach_copy_(averaged, current)
        else:
            n = float(self.count)
            torch._foreach_lerp_(averaged, current, 1 - min(self.decay, (1 + n) / (10 + n)))
        self.n_averaged += 1
        self.count += 1
