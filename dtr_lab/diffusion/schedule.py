"""Variance-preserving forward process: β-schedules, ᾱ_t, SNR(t) and q_sample (Ho et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dtr_lab.errors import DTRLabError

SCHEDULES = ("linear", "cosine")


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, max_beta: float = 0.999
) -> torch.Tensor:
    """Ho et al.'s linear β_t, rescaled so that any T spans the same ᾱ range as T = 1000."""
    scale = 1000 / num_timesteps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)  # T < 50 would otherwise give β_t ≥ 1


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021) cosine schedule: ᾱ(t) = cos²(((t/T)+s)/(1+s)·π/2)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


class GaussianDiffusion(nn.Module):
    """The forward process q(x_t | x_0) over T timesteps, with ε-prediction losses."""

    def __init__(self, num_timesteps: int = 1000, schedule: str = "linear") -> None:
        super().__init__()
        if num_timesteps < 2:
            raise DTRLabError(f"model.num_timesteps={num_timesteps} must be at least 2; the papers use 1000")
        if schedule not in SCHEDULES:
            raise DTRLabError(f"model.schedule={schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        betas = linear_betas(num_timesteps) if schedule == "linear" else cosine_betas(num_timesteps)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        # float64 tables keep 1 − ᾱ_t accurate near t = 0; coefficients are formed in float64, then cast
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1−ᾱ_t)) computed in float64, then cast to like's dtype and shaped (N, 1, 1, ...).

        1 − ᾱ_t is formed before the cast: in float32, 1 − ᾱ_0 = 1e-4 would keep only ~4 digits.
        """
        ab = self.alpha_bar[t]  # float64
        shape = (-1, *([1] * (like.dim() - 1)))
        return ab.sqrt().to(like.dtype).view(shape), (1 - ab).sqrt().to(like.dtype).view(shape)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t), float32, shape of t."""
        ab = self.alpha_bar[t]
        return (ab / (1 - ab)).float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε."""
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(t, x0)
        return sqrt_ab * x0 + sqrt_one_minus_ab * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t."""
        sqrt_ab, sqrt_one_minus_ab = self._coefficients(t, x_t)
        return (x_t - sqrt_one_minus_ab * eps) / sqrt_ab

    def sample_timesteps(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """t ~ U{0, …, T−1}, (n,) long."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device=device)


def per_sample_mse(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """‖ε − ε_θ‖² averaged over every dim but the batch, in float32: (N,)."""
    return (eps_pred.float() - noise.float()).pow(2).flatten(1).mean(dim=1)
