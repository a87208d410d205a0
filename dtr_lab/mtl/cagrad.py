"""CAGrad over task intervals: conflict-averse gradient descent (Liu et al., NeurIPS 2021, arXiv 2110.14048).

The update d maximises the worst task's improvement min_k ⟨g_k, d⟩ within a ball of radius c·‖g₀‖
around the mean gradient g₀. Its dual is a problem over the simplex: w minimises
F(w) = ⟨g_w, g₀⟩ + c‖g₀‖ ‖g_w‖ with g_w = Σ_k w_k g_k, and then d = g₀ + (c‖g₀‖ / ‖g_w‖) g_w.
Conventions of the official code (Cranial-XIX/CAGrad, nyuv2/utils.py ``cagrad``) and LibMTL
(weighting/CAGrad.py): F is solved on the K×K Gram matrix with SciPy's SLSQP from the uniform w,
and the update is rescaled by 1/(1 + c²) (``rescale=1``; 0: none, 2: 1/(1 + c)). c = 0.4 is the
official NYUv2 setting (nyuv2/run.sh); LibMTL's command-line default is 0.5. The official NYUv2 code
then multiplies the update by K = 3 "to match the sum loss" (nyuv2/model_segnet_mt.py
``overwrite_grad``: ``newgrad * 3``); LibMTL does not. That is ``multiply_by_k``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.mtl.method import MTLMethod, TaskBatch, Update

RESCALES = (0, 1, 2)
EPS = 1e-8  # keeps the square roots and the division defined for zero gradients, as the reference does


def cagrad_weights(gram: torch.Tensor, c: float) -> torch.Tensor:
    """The simplex weights w (K,) minimising ⟨g_w, g₀⟩ + c‖g₀‖‖g_w‖, from the Gram matrix G Gᵀ (K, K)."""
    a = gram.detach().double().cpu().numpy()
    k = len(a)
    uniform = np.full(k, 1.0 / k)
    radius = c * float(np.sqrt(a.mean() + EPS))  # c‖g₀‖: mean(G Gᵀ) = ‖g₀‖²

    def objective(w: np.ndarray) -> float:
        return float(w @ a @ uniform + radius * np.sqrt(w @ a @ w + EPS))

    result = minimize(
        objective,
        uniform,
        bounds=[(0.0, 1.0)] * k,
        constraints={"type": "eq", "fun": lambda w: 1.0 - w.sum()},
        method="SLSQP",
    )
    return torch.from_numpy(result.x)


def cagrad_update(grads: torch.Tensor, c: float, rescale: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """K task gradients (K, P) -> (CAGrad's update d (P,), the simplex weights w (K,))."""
    g = grads.float()  # (K, P)
    w = cagrad_weights(g @ g.T, c)
    mean = g.mean(dim=0)  # (P,) g₀
    g_w = w.to(g) @ g  # (P,)
    radius = c * (mean.norm().pow(2) + EPS).sqrt()
    d = mean + radius / (g_w.norm() + EPS) * g_w
    scale = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
    return (d / scale).to(grads.dtype), w


class CAGrad(MTLMethod):
    """CAGrad as the gradient method of a run: K per-interval gradients -> one update.

    intervals: the run's K task intervals, if stated here rather than as the module's ``intervals``.
    c: the radius of the ball around the mean gradient, relative to its norm (0: plain mean gradient).
    rescale: 1 divides the update by 1 + c² (the reference's default), 2 by 1 + c, 0 not at all.
    multiply_by_k: multiply the update by K, the scale of the summed losses, as the official NYUv2 code
        does (nyuv2/model_segnet_mt.py ``overwrite_grad``); LibMTL's update (the default) is not.
    """

    gradient_method = True
    tag = "cagrad"

    def __init__(
        self,
        intervals: Intervals | None = None,
        c: float = 0.4,
        rescale: int = 1,
        multiply_by_k: bool = False,
    ) -> None:
        super().__init__(intervals)
        if not c >= 0:
            raise DTRLabError(f"CAGrad c={c} must be >= 0 (the official NYUv2 runs use 0.4)")
        if rescale not in RESCALES:
            raise DTRLabError(f"CAGrad rescale={rescale!r} must be one of 0, 1, 2 (1 is the reference's)")
        self.c = float(c)
        self.rescale = rescale
        self.multiply_by_k = bool(multiply_by_k)

    def forward(self, batch: TaskBatch) -> Update:
        grads = batch.gradients()  # (K, P)
        update, w = cagrad_update(grads, self.c, self.rescale)
        if self.multiply_by_k:
            update = update * grads.shape[0]
        return Update(grad=update, metrics={f"{self.tag}/w_{k}": v for k, v in enumerate(w.tolist())})
