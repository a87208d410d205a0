"""Diffusion processes, losses, loss weights and samplers (pure torch)."""

from dtr_lab.diffusion.learned_variance import Posterior, split_output, vb_term
from dtr_lab.diffusion.samplers import ddim, ddpm, guided, respaced_timesteps, sample
from dtr_lab.diffusion.schedule import GaussianDiffusion, per_sample_mse
from dtr_lab.diffusion.weighting import P2, LossWeighting, MinSNR, Uniform

__all__ = [
    "GaussianDiffusion",
    "per_sample_mse",
    "sample",
    "ddpm",
    "ddim",
    "guided",
    "respaced_timesteps",
    "Posterior",
    "split_output",
    "vb_term",
    "LossWeighting",
    "Uniform",
    "MinSNR",
    "P2",
]
