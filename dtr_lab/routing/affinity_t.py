"""Per-timestep affinity routing: affinity routing's windows interpolated between interval centres.

AffinityRouting (affinity.py) places one window per interval, so the window jumps at every interval edge
(K = 5 windows jumped 16 channels at t = 200 in the README's study, where DTR moves a channel at a time);
its note proposes windows interpolated between interval centres as a next step. This is that step: interval
k keeps its coordinate x_k (the same spectral seriation of the measured affinity), placed at its centre
c_k = (start_k + end_k − 1)/2 in t; between two centres the coordinate is linear in t, before the first
and after the last it is flat:

    x(t) = x_k + (x_{k+1} − x_k)·(t − c_k)/(c_{k+1} − c_k)   for c_k ≤ t ≤ c_{k+1}
    start(t) = round((C − C_β)·x(t))                          half away from zero, as AffinityRouting

so at an interval's centre the window is AffinityRouting's, and it moves by at most
(C − C_β)·|x_{k+1} − x_k|/(c_{k+1} − c_k) + 1 channels a timestep. Same table in every block, no parameters.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dtr_lab.mtl.intervals import Intervals
from dtr_lab.routing.affinity import AffinityRouting
from dtr_lab.routing.base import active_channels


class InterpolatedAffinityRouting(AffinityRouting):
    """Affinity routing whose window moves with t: linear between interval centres, flat beyond the ends."""

    label = "affinity_t"

    def centres(self, num_timesteps: int) -> np.ndarray:
        """Each interval's centre in t, (K,): the midpoint of its first and last timestep."""
        k = len(self.affinity)
        if self.edges is None:
            edges = Intervals(num_intervals=k).build(torch.ones(num_timesteps)).edges.tolist()
        else:
            self.task_intervals(num_timesteps)  # a source measured over another T: one line
            edges = self.edges
        return np.array([(edges[i] + edges[i + 1] - 1) / 2 for i in range(k)])

    def table(self, num_timesteps: int, channels: int, block: int = 0) -> torch.Tensor:
        if len(self.affinity) == 1:
            return super().table(num_timesteps, channels, block)
        c_beta = active_channels(self.beta, channels)
        x = np.interp(np.arange(num_timesteps), self.centres(num_timesteps), self.coordinates)  # (T,)
        start = torch.tensor([math.floor((channels - c_beta) * v + 0.5) for v in x], dtype=torch.long)
        c = torch.arange(channels)
        return (c >= start[:, None]) & (c < start[:, None] + c_beta)  # (T, C)
