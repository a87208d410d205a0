"""Diffusion processes, losses, loss weights and samplers (pure torch)."""

from dtr_lab.diffusion.samplers import ddim, ddpm, guided, respaced_timesteps, sample
from dtr_lab.diffusion.schedule import GaussianDiffusion, per_sample_mse

__all__ = ["GaussianDiffusion", "per_sample_mse", "sample", "ddpm", "ddim", "guided", "respaced_timesteps"]
