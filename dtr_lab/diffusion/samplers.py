"""Reverse-process samplers: DDPM ancestral and DDIM on any subsequence of timesteps,
with classifier-free guidance. Respaced steps call the model at the *original* t, so a
routed model uses the masks it was trained with. A model with learned σ (output ε and v
stacked on channels) samples DDPM with its own variance; DDIM ignores v."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dtr_lab.diffusion.learned_variance import Posterior, split_output
from dtr_lab.diffusion.schedule import GaussianDiffusion
from dtr_lab.errors import DTRLabError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> ε̂, or [ε̂, v] on channels


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` original timesteps, evenly spread over [0, T−1], increasing, ending at T−1."""
    if not 1 <= steps <= num_timesteps:
        raise DTRLabError(f"sampling steps={steps} must be in [1, {num_timesteps}] (the training T)")
    grid = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long()
    return sorted(set(grid.tolist()))


def guided(model: Callable, y: torch.Tensor | None, scale: float, null_label: int) -> EpsFn:
    """ε̂ = ε_u + s(ε_c − ε_u): conditional and unconditional halves in one batch, same t;
    a learned v is taken from the conditional half."""
    if y is None or scale == 1.0:
        return lambda x, t: model(x, t, y)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, null_label)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2N, C, H, W)
        cond, uncond = out.chunk(2)
        eps_cond, v_cond = split_output(cond, x.shape[1])
        eps_uncond, _ = split_output(uncond, x.shape[1])
        eps_guided = eps_uncond + scale * (eps_cond - eps_uncond)
        return eps_guided if v_cond is None else torch.cat([eps_guided, v_cond], dim=1)

    return eps


@torch.no_grad()
def sample(
    eps_fn: EpsFn,
    diffusion: GaussianDiffusion,
    noise: torch.Tensor,
    steps: int | None = None,
    eta: float = 1.0,
    clip_x0: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generalised DDIM (Song et al. 2021) from x_T = noise; eta = 1 is DDPM ancestral sampling
    with the posterior variance β̃ (or a learned-σ model's own variance), eta = 0 is deterministic
    DDIM."""
    T = diffusion.num_timesteps
    ts = respaced_timesteps(T, steps or T)
    alpha_bar = diffusion.alpha_bar
    posterior = Posterior(diffusion, ts)
    x = noise
    for i in reversed(range(len(ts))):
        t = torch.full((x.shape[0],), ts[i], device=x.device, dtype=torch.long)
        x_t = x.to(torch.float64)
        eps, v = split_output(eps_fn(x, t).to(torch.float64), x.shape[1])
        if v is not None and eta == 1.0:
            mean, log_var = posterior.p_mean_log_variance(x_t, torch.full_like(t, i), eps, v, clip_x0)
            std = (0.5 * log_var).exp()
        else:
            ab = alpha_bar[ts[i]]
            ab_prev = alpha_bar[ts[i - 1]] if i > 0 else torch.ones_like(ab)
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
            if clip_x0:
                x0 = x0.clamp(-1, 1)
                eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
            # σ² = η² β̃ with β̃ = (1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev)
            var = eta**2 * (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
            mean = ab_prev.sqrt() * x0 + (1 - ab_prev - var).clamp(min=0).sqrt() * eps
            std = var.sqrt()
        if i > 0 and eta > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
            mean = mean + std * z
        x = mean.to(noise.dtype)
    return x


def ddpm(eps_fn: EpsFn, diffusion: GaussianDiffusion, noise: torch.Tensor, steps: int | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (respaced when steps < T)."""
    return sample(eps_fn, diffusion, noise, steps, eta=1.0, generator=generator)


def ddim(eps_fn: EpsFn, diffusion: GaussianDiffusion, noise: torch.Tensor, steps: int | None = None,
         eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM sampling; deterministic for eta = 0."""
    return sample(eps_fn, diffusion, noise, steps, eta=eta, generator=generator)
