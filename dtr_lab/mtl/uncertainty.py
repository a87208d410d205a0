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
from dtr_lab.mtl.intervals import DEFAULT_INTERVALS, Intervals, check_num_intervals


class UncertaintyWeighting(nn.Module):
    """Learned per-interval loss weights exp(−s_k) with a regulariser s_k (ANT-UW).

    intervals: the K task intervals; s has one entry per interval.
    lr: learning rate of s (its own optimizer parameter group; 0.025 in the ANT reference).
    """

    def __init__(self, intervals: Intervals = DEFAULT_INTERVALS, lr: float = 0.025) -> None:
        super().__init__()
        if not lr > 0:
            raise DTRLabError(f"uncertainty weighting lr={lr} must be > 0; the ANT reference uses 0.025")
        self.intervals = intervals
        self.lr = float(lr)
        self.log_var = nn.Parameter(torch.zeros(check_num_intervals(intervals.k)))  # s_k, (K,)

    def forward(self, interval_losses: torch.Tensor) -> torch.Tensor:
        """(K,) mean loss per interval L_k -> the scalar Σ_k ½(exp(−s_k) L_k/K + s_k)."""
        s = self.log_var  # (K,)
        return 0.5 * (torch.exp(-s) * interval_losses / len(s) + s).sum()

    def param_group(self) -> dict:
        """An optimizer parameter group for s, with its own lr and no weight decay."""
        return {"params": [self.log_var], "lr": self.lr, "weight_decay": 0.0}
