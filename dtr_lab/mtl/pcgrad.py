"""PCGrad over task intervals: project away conflicting gradient components (Yu et al., NeurIPS 2020,
arXiv 2001.06782).

Each task visits every task, itself included, as the original code does (tianheyu927/PCGrad
``PCGrad_tf.py``; LibMTL ``weighting/PCGrad.py`` likewise): once earlier projections have turned g_i
against its own original gradient, it is projected off that too. The paper's Algorithm 1 skips j = i
(``self_projection: false``).
"""

from __future__ import annotations

import torch

from dtr_lab.mtl.intervals import Intervals
from dtr_lab.mtl.method import MTLMethod, TaskBatch, Update
from dtr_lab.seeds import derive_seed


def pcgrad(
    grads: torch.Tensor, generator: torch.Generator, self_projection: bool = True
) -> tuple[torch.Tensor, int]:
    """Gradient surgery on K task gradients (K, P) -> (the projected gradients (K, P), projections made).

    Task i visits the tasks (itself too, unless not self_projection) in its own random order; whenever
    its current gradient g_i has a negative dot product with the original g_j, it drops its component
    along g_j: g_i ← g_i − (g_i·g_j / ‖g_j‖²) g_j.
    """
    k = grads.shape[0]
    g = grads.float()  # (K, P)
    sq_norm = g.pow(2).sum(dim=1).clamp(min=torch.finfo(g.dtype).tiny)  # (K,)
    # one random visiting order per task, drawn on the CPU so any device gives the same orders
    order = torch.stack([torch.randperm(k, generator=generator) for _ in range(k)])  # (K, K)
    order = order.to(g.device)
    tasks = torch.arange(k, device=g.device)
    projected = g.clone()
    projections = torch.zeros((), dtype=torch.long, device=g.device)
    # all K tasks advance one position of their order at a time, so the loop is K steps of (K, P) work
    for step in range(k):
        j = order[:, step]  # (K,) the task each task projects against now
        dot = (projected * g[j]).sum(dim=1)  # (K,)
        conflict = (dot < 0) & (self_projection | (j != tasks))  # (K,)
        coef = torch.where(conflict, dot / sq_norm[j], torch.zeros_like(dot))  # (K,)
        projected = projected - coef[:, None] * g[j]
        projections += conflict.sum()
    return projected.to(grads.dtype), int(projections)


class PCGrad(MTLMethod):
    """PCGrad as the gradient method of a run: K per-interval gradients -> one update.

    The update is the *mean* of the projected gradients, so that without conflicts it equals the
    gradient of the batch-mean loss of a stratified batch (a plain step's scale). Each step's visiting
    orders are drawn from a generator seeded by (model seed, step).

    intervals: the run's K task intervals, if stated here rather than as the module's ``intervals``.
    self_projection: also project a task off its own original gradient (the original code's and
        LibMTL's default); false visits the other tasks only, as the paper's Algorithm 1.
    The projection rate counts projections over the K² (K(K − 1) without self-projection) visits.
    """

    def __init__(self, intervals: Intervals | None = None, self_projection: bool = True) -> None:
        super().__init__(intervals)
        self.self_projection = bool(self_projection)

    gradient_method = True
    tag = "pcgrad"

    def forward(self, batch: TaskBatch) -> Update:
        grads = batch.gradients()  # (K, P)
        k = grads.shape[0]
        gen = torch.Generator().manual_seed(derive_seed(batch.seed, batch.step))
        projected, projections = pcgrad(grads, gen, self.self_projection)
        rate = projections / (k * (k - int(not self.self_projection)))
        return Update(grad=projected.mean(dim=0), metrics={f"{self.tag}/projection_rate": float(rate)})
