"""Reverse-process samplers: DDPM ancestral and DDIM on any subsequence of timesteps,
with classifier-free guidance. Respaced steps call the model at the *original* t, so a
routed model uses the masks it was trained with. A model with learned σ (output ε and v
stacked on channels) samples DDPM with its own variance; DDIM ignores v. A fixed-variance
model samples DDPM with σ² = β_t ("large", the DiT/ADM default) or β̃_t ("small")."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dtr_lab.diffusion.learned_variance import Posterior, split_output
from dtr_lab.diffusion.schedule import GaussianDiffusion, at, predict_x0
from dtr_lab.errors import DTRLabError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> ε̂, or [ε̂, v] on channels


FIXED_VARIANCES = ("large", "small")
RESPACINGS = ("even", "ddim")
# classifier-free guidance's two conventions: DTR's and Switch-DiT's forward_with_cfg mix every ε channel
# (model_out[:, :in_channels]); DiT's mixes the first 3 output channels (model_out[:, :3], "for exact
# reproducibility" of its RGB-era results), so on a 4-channel latent model the 4th ε channel stays conditional
GUIDANCE_RULES = ("all", "first3")
DIT_GUIDED_CHANNELS = 3


def check_fixed_variance(kind: str) -> str:
    """The fixed reverse variance must be "large" (σ² = β_t) or "small" (σ² = β̃_t)."""
    if kind not in FIXED_VARIANCES:
        raise DTRLabError(
            f"fixed_variance={kind!r} is unknown; choose large (σ² = β_t, the DiT/ADM default) "
            "or small (σ² = β̃_t)"
        )
    return kind


def check_sample_steps(steps: int, num_timesteps: int, option: str) -> None:
    """Sampling steps must be an int in [1, T]: 0 or more than T would silently mean something else."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise DTRLabError(
            f"{option}={steps!r} must be an integer from 1 to T={num_timesteps} (model.num_timesteps); "
            "DiT and DTR sample with 250"
        )


def respaced_timesteps(num_timesteps: int, steps: int, respacing: str = "even") -> list[int]:
    """`steps` original timesteps, increasing.

    "even" spreads them over [0, T−1], ending at T−1, as DiT's space_timesteps(T, "N") does
    (diffusion/respace.py: a float stride (T−1)/(N−1) added up, each partial sum rounded by Python's
    round, half to even); "ddim" takes every s-th from 0 with the smallest stride s giving exactly
    `steps` (space_timesteps(T, "ddimN"): ddim25 of T = 1000 is 0, 40, …, 960).
    """
    if respacing not in RESPACINGS:
        raise DTRLabError(
            f"respacing={respacing!r} is unknown; choose even (spread over [0, T−1]) "
            "or ddim (stride T/N from 0)"
        )
    if not 1 <= steps <= num_timesteps:
        raise DTRLabError(f"sampling steps={steps} must be in [1, {num_timesteps}] (the training T)")
    if respacing == "ddim":
        # len(range(0, T, s)) = ⌈T/s⌉ falls as s grows, so the first stride that reaches `steps` is the one
        stride = next((s for s in range(1, num_timesteps + 1) if -(-num_timesteps // s) <= steps), None)
        if stride is None or -(-num_timesteps // stride) != steps:
            raise DTRLabError(
                f"respacing=ddim cannot make exactly {steps} steps of T={num_timesteps} with an integer "
                "stride; pick a step count such as T/s for an integer s, or respacing: even"
            )
        return list(range(0, num_timesteps, stride))
    stride = (num_timesteps - 1) / (steps - 1) if steps > 1 else 1
    taken, position = [], 0.0
    for _ in range(steps):  # the sum accumulates the float stride's rounding, as the official loop does
        taken.append(round(position))
        position += stride
    return taken


def guided_channel_count(rule: str, channels: int) -> int:
    """How many leading output channels classifier-free guidance mixes under a rule (GUIDANCE_RULES)."""
    if rule not in GUIDANCE_RULES:
        raise DTRLabError(
            f"guidance_channels={rule!r} is unknown; choose all (every ε channel: DTR, Switch-DiT) or first3 "
            "(the first 3 output channels: DiT's forward_with_cfg)"
        )
    return channels if rule == "all" else DIT_GUIDED_CHANNELS


def guided(
    model: Callable, y: torch.Tensor | None, scale: float, null_label: int, channels: str = "all"
) -> EpsFn:
    """ε̂ = ε_u + s(ε_c − ε_u): conditional and unconditional halves in one batch, same t, on the leading
    output channels the rule names (``channels``: all or first3, GUIDANCE_RULES); every other channel (a
    learned v, and under first3 the 4th ε channel of a latent model) is taken from the conditional half."""
    if y is None or scale == 1.0:
        return lambda x, t: model(x, t, y)

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        null = torch.full_like(y, null_label)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))  # (2N, C or 2C, H, W)
        cond, uncond = out.chunk(2)
        k = guided_channel_count(channels, x.shape[1])
        mixed = uncond[:, :k] + scale * (cond[:, :k] - uncond[:, :k])  # (N, k, H, W)
        return torch.cat([mixed, cond[:, k:]], dim=1)

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
    fixed_variance: str = "large",
    respacing: str = "even",
) -> torch.Tensor:
    """Ancestral DDPM (eta = 1) or DDIM (Song et al. 2021, 0 <= eta < 1) from x_T = noise.

    DDPM steps use the posterior mean μ̃(x_t, x̂_0) with a learned-σ model's own variance, else the
    fixed σ² of ``fixed_variance`` on the respaced chain; DDIM steps use σ² = η² β̃ (eta = 0 is
    deterministic). ``respacing`` picks the timesteps (see respaced_timesteps).
    """
    T = diffusion.num_timesteps
    ts = respaced_timesteps(T, steps or T, respacing)
    alpha_bar = diffusion.alpha_bar
    posterior = Posterior(diffusion, ts)
    fixed_var = posterior.fixed_variance(check_fixed_variance(fixed_variance))  # (S,)
    x = noise
    for i in reversed(range(len(ts))):
        t = torch.full((x.shape[0],), ts[i], device=x.device, dtype=torch.long)
        x_t = x.to(torch.float64)
        eps, v = split_output(eps_fn(x, t).to(torch.float64), x.shape[1])
        step = torch.full_like(t, i)
        if eta == 1.0 and v is not None:
            mean, log_var = posterior.p_mean_log_variance(x_t, step, eps, v, clip_x0)
            std = (0.5 * log_var).exp()
        elif eta == 1.0:
            x0 = predict_x0(x_t, eps, at(alpha_bar, t, x_t))
            mean = posterior.mean(x0.clamp(-1, 1) if clip_x0 else x0, x_t, step)
            std = fixed_var[i].sqrt()
        else:
            ab = alpha_bar[ts[i]]
            ab_prev = alpha_bar[ts[i - 1]] if i > 0 else torch.ones_like(ab)
            x0 = predict_x0(x_t, eps, ab)
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
         generator: torch.Generator | None = None, fixed_variance: str = "large") -> torch.Tensor:
    """DDPM ancestral sampling (respaced when steps < T)."""
    return sample(
        eps_fn, diffusion, noise, steps, eta=1.0, generator=generator, fixed_variance=fixed_variance
    )


def ddim(eps_fn: EpsFn, diffusion: GaussianDiffusion, noise: torch.Tensor, steps: int | None = None,
         eta: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM sampling with σ² = η² β̃; deterministic for eta = 0, DDPM with β̃ for eta = 1."""
    return sample(eps_fn, diffusion, noise, steps, eta=eta, generator=generator, fixed_variance="small")
