"""Learned reverse-process variance (Nichol & Dhariwal 2021, "Improved DDPM", as ADM and DiT train).

The model outputs ε and v; its reverse-step log-variance interpolates between the two bounds,
log σ²_θ = v' log β_t + (1 − v') log β̃_t with v' = (v + 1)/2, and v is trained by the
variational-bound term L_vb with the mean stopped, so the MSE alone trains ε.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dtr_lab.diffusion.schedule import GaussianDiffusion, at, predict_x0
from dtr_lab.errors import DTRLabError


def split_output(out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A model output (N, C or 2C, ...) as (ε, v): ε is the first C channels, v the rest or None."""
    if out.shape[1] == channels:
        return out, None
    if out.shape[1] == 2 * channels:
        eps, v = out.split(channels, dim=1)
        return eps, v
    raise DTRLabError(
        f"the model outputs {out.shape[1]} channels for {channels}-channel images; expected {channels} (ε) "
        f"or {2 * channels} (ε and v with learn_sigma): make model.in_channels match the data's channels"
    )


class Posterior:
    """β_t, β̃_t and q(x_prev | x_t, x_0) on a chain of training timesteps (all T, or a respaced subset).

    Tables are indexed by step i along the chain, which is t itself for the full chain. A respaced
    chain is a diffusion process of its own with β_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}}.
    """

    def __init__(self, diffusion: GaussianDiffusion, timesteps: Sequence[int] | None = None) -> None:
        alpha_bar = diffusion.alpha_bar  # float64
        self.source = alpha_bar  # the table it was built from (a device move replaces it)
        if timesteps is not None:
            alpha_bar = alpha_bar[torch.as_tensor(list(timesteps), device=alpha_bar.device)]
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        self.alpha_bar = alpha_bar
        self.betas = 1 - alpha_bar / alpha_bar_prev
        self.variance = self.betas * (1 - alpha_bar_prev) / (1 - alpha_bar)  # β̃
        # β̃ is 0 at the first step; like Improved DDPM, its log takes the next step's value there
        first = self.variance[1:2] if len(alpha_bar) > 1 else self.betas[:1]
        self.log_variance_clipped = torch.log(torch.cat([first, self.variance[1:]]))
        self.coef_x0 = alpha_bar_prev.sqrt() * self.betas / (1 - alpha_bar)
        self.coef_xt = (1 - self.betas).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)

    @staticmethod
    def of(diffusion: GaussianDiffusion) -> Posterior:
        """The full chain's posterior, built once per diffusion (and device) rather than per loss call."""
        cached = diffusion.__dict__.get("_posterior")
        if cached is None or cached.source is not diffusion.alpha_bar:
            cached = diffusion.__dict__["_posterior"] = Posterior(diffusion)
        return cached

    def fixed_variance(self, kind: str) -> torch.Tensor:
        """σ² per step of a fixed-variance reverse process, (S,): "small" is β̃_i; "large" is β_i with
        β̃ of the second step at the first (ADM's FIXED_LARGE, guided_diffusion/gaussian_diffusion.py,
        which DiT's create_diffusion picks unless sigma_small), on this chain's own β."""
        if kind == "small":
            return self.variance
        first = self.variance[1:2] if len(self.betas) > 1 else self.betas[:1]
        return torch.cat([first, self.betas[1:]])

    def mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """μ̃(x_t, x_0) = √ᾱ_prev β/(1−ᾱ) x_0 + √α (1−ᾱ_prev)/(1−ᾱ) x_t."""
        return at(self.coef_x0, i, x_t) * x0 + at(self.coef_xt, i, x_t) * x_t

    def log_variance(self, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """log β̃ (clipped at the first step), shaped to broadcast over like."""
        return at(self.log_variance_clipped, i, like)

    def model_log_variance(self, v: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """log σ²_θ = v' log β + (1 − v') log β̃ with v' = (v + 1)/2, elementwise over v."""
        frac = (v + 1) / 2
        return frac * at(self.betas, i, v).log() + (1 - frac) * self.log_variance(i, v)

    def p_mean_log_variance(
        self, x_t: torch.Tensor, i: torch.Tensor, eps: torch.Tensor, v: torch.Tensor, clip_x0: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's reverse step p_θ(x_prev | x_t): mean μ̃(x_t, x̂_0(ε)) and log σ²_θ(v)."""
        x0 = predict_x0(x_t, eps, at(self.alpha_bar, i, x_t))
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        return self.mean(x0, x_t, i), self.model_log_variance(v, i)


def normal_kl(
    mean1: torch.Tensor, log_var1: torch.Tensor, mean2: torch.Tensor, log_var2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) ‖ N(mean2, e^log_var2)) in nats, elementwise."""
    return 0.5 * (
        log_var2 - log_var1 - 1 + (log_var1 - log_var2).exp() + (mean1 - mean2).pow(2) * (-log_var2).exp()
    )


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(x) in nats for x in [-1, 1] on 256 levels: the Gaussian's mass in x's bin of width 2/255,
    the edge bins extending to ±∞ (Ho et al. 2020, eq. 13), elementwise."""
    inv_std = (-log_scale).exp()
    upper = inv_std * (x - mean + 1 / 255)
    lower = inv_std * (x - mean - 1 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log Φ, accurate in the far tails
    log_sf_lower = torch.special.log_ndtr(-lower)  # log(1 − Φ)
    log_bin = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_bin))


def vb_term(
    diffusion: GaussianDiffusion,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    v: torch.Tensor,
) -> torch.Tensor:
    """L_vb per sample in bits per dim, float32 (N,): KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) for t > 0 and
    −log p_θ(x_0|x_1), discretised, for t = 0. The mean uses ε detached: only v learns from L_vb."""
    x0, x_t, eps, v = x0.float(), x_t.float(), eps.detach().float(), v.float()
    posterior = Posterior.of(diffusion)
    true_mean = posterior.mean(x0, x_t, t)
    true_log_var = posterior.log_variance(t, x_t)
    model_mean, model_log_var = posterior.p_mean_log_variance(x_t, t, eps, v)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(dim=1)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(dim=1)
    return torch.where(t == 0, nll, kl) / math.log(2.0)
