"""ANT uncertainty weighting over task intervals (Go et al., NeurIPS 2023, arXiv 2306.00354).

Each interval k has a learnable log-variance s_k; the loss ``Σ_k ½(exp(−s_k) L_k/K + s_k)`` (Kendall
et al. 2018's homoscedastic weighting) down-weights intervals whose loss stays high. The batch is
stratified so every interval contributes B/K samples to its L_k. L_k/K is what ANT's and DTR's code
feed the weighting (ANT train_uw_multi_gpu.py, DTR diffusion/gaussian_diffusion.py): s_k then settles
at log(L_k/K), and the network's gradient at that point is the same as with L_k.
"""

from __future__ import annotations

import torch
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.mtl.method import MTLMethod, TaskBatch, Update
from dtr_lab.mtl.tasks import Tasks
from dtr_lab.optim.lr_schedule import SCHEDULED


class UncertaintyWeighting(MTLMethod):
    """Learned per-interval loss weights exp(−s_k) with a regulariser s_k (ANT-UW).

    intervals: the run's K task intervals, if stated here rather than as the module's ``intervals``;
        s has one entry per interval.
    lr: learning rate of s (its own optimizer parameter group; 0.025 in the ANT reference).
    scheduled: whether s's lr follows model.lr_schedule as the network's does (true: a schedule scales
        every parameter group) or stays at ``lr`` (false). Without a schedule, as in ANT, it is constant
        either way.
    """

    tag = "uw"

    def __init__(self, intervals: Intervals | None = None, lr: float = 0.025, scheduled: bool = True) -> None:
        super().__init__(intervals)
        if not lr > 0:
            raise DTRLabError(f"uncertainty weighting lr={lr} must be > 0; the ANT reference uses 0.025")
        self.lr = float(lr)
        self.scheduled = bool(scheduled)
        self.log_var: nn.Parameter | None = None  # s_k, (K,): sized by bind

    def bind(self, tasks: Tasks) -> None:
        self.log_var = nn.Parameter(torch.zeros(tasks.num_intervals))

    def weighted(self, interval_losses: torch.Tensor) -> torch.Tensor:
        """(K,) mean loss per interval L_k -> the scalar Σ_k ½(exp(−s_k) L_k/K + s_k)."""
        s = self.log_var  # (K,)
        return 0.5 * (torch.exp(-s) * interval_losses / len(s) + s).sum()

    def forward(self, batch: TaskBatch) -> Update:
        loss = self.weighted(batch.losses())
        metrics = {f"{self.tag}/s_{k}": s for k, s in enumerate(self.log_var.detach())}
        return Update(loss=loss, metrics=metrics)

    def param_groups(self) -> list[dict]:
        """s in its own optimizer parameter group, with its own lr and no weight decay (and, unscheduled,
        marked so that dtr_lab.optim.lr_schedule.hold_unscheduled keeps that lr)."""
        group = {"params": [self.log_var], "lr": self.lr, "weight_decay": 0.0}
        return [group if self.scheduled else {**group, SCHEDULED: False}]
