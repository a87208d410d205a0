"""Nash-MTL over task intervals: the Nash bargaining update Σ_k α_k g_k (Navon et al., ICML 2022,
arXiv 2202.01017)."""

from __future__ import annotations

import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.mtl.method import MTLMethod, TaskBatch, Update, clip_norm


def nash_weights(
    gram: torch.Tensor, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-12
) -> torch.Tensor:
    """Bargaining weights α > 0 with (Gᵀ G) α = 1/α, from the Gram matrix M = Gᵀ G (K, K) -> (K,).

    The solution is the unique minimiser of the strictly convex f(α) = ½ αᵀ M α − Σ_k log α_k on
    α > 0 (its gradient is M α − 1/α, its Hessian M + diag(1/α²)). Newton's method with a
    backtracking line search that keeps α positive finds it in a few iterations, in float64.
    ``ridge`` adds ridge · mean(diag M) to the diagonal so a solution exists when the gradients are
    linearly dependent (e.g. g_1 = −g_2, where the update Σ α_k g_k then tends to 0).
    """
    m = gram.detach().double().cpu()
    scale = float(m.diagonal().mean())
    if scale <= 0:  # every gradient is zero: any weights give a zero update
        return torch.ones(len(m), dtype=gram.dtype)
    m = m + ridge * scale * torch.eye(len(m), dtype=torch.float64)

    def f(a: torch.Tensor) -> torch.Tensor:
        return 0.5 * a @ m @ a - a.log().sum()

    # exact when the gradients are orthogonal
    alpha = m.diagonal().rsqrt()
    for _ in range(max_iter):
        grad = m @ alpha - 1 / alpha
        hess = m + torch.diag(alpha.pow(-2))
        step = -torch.linalg.solve(hess, grad)
        decrement = float(-(grad @ step))  # the Newton decrement λ², the predicted decrease × 2
        if decrement < tol:
            break
        t = 1.0
        while t > 1e-12 and (
            bool((alpha + t * step <= 0).any()) or f(alpha + t * step) > f(alpha) - 0.25 * t * decrement
        ):
            t *= 0.5
        alpha = alpha + t * step
    return alpha.to(gram.dtype)


class NashMTL(MTLMethod):
    """Nash-MTL as the gradient method of a run: K per-interval gradients -> one update.

    intervals: the run's K task intervals, if stated here rather than as the module's ``intervals``.
    update_every: solve for new weights every this many steps and reuse them in between.
    max_norm: clip the combined update to this L2 norm.
    normalize_gram: solve on M/‖M‖_F instead of the raw Gram matrix M = Gᵀ G of the gradients G.
    divide_by_k: divide the update by K before the clip, as ANT's mtl_library/nash.py does (its weighted
        loss is Σ_k α_k L_k / K); the reference (Navon et al., LibMTL) does not.

    By default α solves M α = 1/α on the raw Gram matrix, as the reference code does (Navon et al.'s
    nash-mtl, LibMTL's weighting/Nash_MTL.py, ANT's mtl_library/nash.py: their solver divides M by
    its norm and multiplies α by it again in the constraints), so α_k (Mα)_k = 1 and
    ‖Σ α_k g_k‖ = √K before the clip to ``max_norm``. With ``normalize_gram`` the weights depend only
    on the gradients' directions and relative sizes and the update scales with the gradients like a
    plain step. ANT's code divides the weighted loss by K (``divide_by_k``): before the clip, so it changes
    how often the clip binds (‖update‖ = √K/K), not only the scale that Adam undoes.
    Between solves the update is the gradient of Σ_k α_k L_k: one ordinary backward instead of the K
    per-interval ones, the paper's saving.
    """

    gradient_method = True
    tag = "nash"

    def __init__(
        self,
        intervals: Intervals | None = None,
        update_every: int = 25,
        max_norm: float = 1.0,
        normalize_gram: bool = False,
        divide_by_k: bool = False,
    ) -> None:
        super().__init__(intervals)
        if update_every < 1:
            raise DTRLabError(f"NashMTL update_every={update_every} must be >= 1, e.g. 25")
        if not max_norm > 0:
            raise DTRLabError(f"NashMTL max_norm={max_norm} must be > 0, e.g. 1.0")
        self.update_every = update_every
        self.max_norm = float(max_norm)
        self.normalize_gram = bool(normalize_gram)
        self.divide_by_k = bool(divide_by_k)
        self.alpha: torch.Tensor | None = None  # (K,), the weights in use
        self.solved_at: int | None = None  # the step they were solved at

    def due(self, step: int) -> bool:
        """Whether the weights are re-solved at this step (always on the first call, e.g. after resuming)."""
        return self.alpha is None or not 0 <= step - self.solved_at < self.update_every

    def solve(self, grads: torch.Tensor, step: int) -> None:
        """New bargaining weights α from the (K, P) interval gradients."""
        gram = grads @ grads.T  # (K, K)
        scale = gram.norm()
        if self.normalize_gram and scale > 0:
            gram = gram / scale
        self.alpha = nash_weights(gram).to(grads.device)
        self.solved_at = step

    def forward(self, batch: TaskBatch) -> Update:
        if self.due(batch.step):
            g = batch.gradients()
            self.solve(g.float(), batch.step)
            update = (self.alpha @ g.float()).to(g.dtype)  # (P,)
        else:
            losses = batch.losses()  # (K,)
            update = batch.gradient(self.alpha.to(losses) @ losses)
        if self.divide_by_k:
            update = update / len(self.alpha)
        update, _ = clip_norm(update, self.max_norm)
        metrics = {f"{self.tag}/alpha_{k}": a for k, a in enumerate(self.alpha.tolist())}
        return Update(grad=update, metrics=metrics)
