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


def at(table: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[index] cast to like's dtype and shaped (N, 1, 1, ...) to broadcast over like."""
    return table[index].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1−ᾱ) ε̂) / √ᾱ, with ᾱ broadcast over x_t."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


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
        # float64 tables keep 1 − ᾱ_t accurate near t = 0 (in float32, 1 − ᾱ_0 = 1e-4 would keep ~4
        # digits); the q_sample coefficients are tabled once, then gathered and cast per call
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.register_buffer("sqrt_alpha_bar", alpha_bar.sqrt(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bar", (1 - alpha_bar).sqrt(), persistent=False)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t), float32, shape of t."""
        ab = self.alpha_bar[t]
        return (ab / (1 - ab)).float()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε."""
        return at(self.sqrt_alpha_bar, t, x0) * x0 + at(self.sqrt_one_minus_alpha_bar, t, x0) * noise


def per_sample_mse(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """‖ε − ε_θ‖² averaged over every dim but the batch, in float32: (N,)."""
    return (eps_pred.float() - noise.float()).pow(2).flatten(1).mean(dim=1)
