"""Learned variance: L_vb against hand/quadrature values, stopped mean, respaced chains, sampling."""

import math

import pytest
import torch
from scipy import integrate, stats

from dtr_lab.diffusion.learned_variance import Posterior, split_output, vb_term
from dtr_lab.diffusion.samplers import guided, respaced_timesteps, sample
from dtr_lab.diffusion.schedule import GaussianDiffusion
from dtr_lab.errors import DTRLabError


def hand_alpha_bar(t: int, T: int = 1000) -> float:
    """ᾱ_t for Ho et al.'s linear schedule at T = 1000, in plain floats; ᾱ_{−1} = 1."""
    betas = [1e-4 + (0.02 - 1e-4) * k / (T - 1) for k in range(T)]
    return math.prod(1 - b for b in betas[: t + 1])


def bayes_posterior(x0: float, x_t: float, ab: float, ab_prev: float) -> tuple[float, float]:
    """q(x_prev | x_t, x_0) as a product of q(x_prev | x_0) and q(x_t | x_prev): (mean, variance)."""
    alpha = ab / ab_prev
    precision = 1 / (1 - ab_prev) + alpha / (1 - alpha)
    mean = (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(alpha) * x_t / (1 - alpha)) / precision
    return mean, 1 / precision


def one_pixel(value: float) -> torch.Tensor:
    return torch.full((1, 1, 1, 1), value)


# at low t the bounds β_t and β̃_t differ most (β̃_5/β_5 ≈ 0.78), at high t they nearly agree
@pytest.mark.parametrize("t", [5, 500])
def test_vb_term_is_the_kl_between_two_gaussians_by_quadrature(t):
    diffusion = GaussianDiffusion(1000)
    x0, noise, eps_hat, v = 0.3, 0.7, 0.2, 0.4
    ab, ab_prev = hand_alpha_bar(t), hand_alpha_bar(t - 1)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    true_mean, true_var = bayes_posterior(x0, x_t, ab, ab_prev)
    x0_hat = (x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
    model_mean, _ = bayes_posterior(x0_hat, x_t, ab, ab_prev)
    beta = 1 - ab / ab_prev
    frac = (v + 1) / 2
    model_var = math.exp(frac * math.log(beta) + (1 - frac) * math.log(true_var))
    p = stats.norm(true_mean, math.sqrt(true_var))
    q = stats.norm(model_mean, math.sqrt(model_var))
    span = 12 * math.sqrt(true_var)
    kl_nats, _ = integrate.quad(
        lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)),
        true_mean - span,
        true_mean + span,
        epsabs=1e-12,
        limit=200,
    )
    got = vb_term(
        diffusion, one_pixel(x0), one_pixel(x_t), torch.tensor([t]), one_pixel(eps_hat), one_pixel(v)
    )
    assert got.shape == (1,)
    assert got.item() == pytest.approx(kl_nats / math.log(2), rel=1e-3)


@pytest.mark.parametrize("x0", [0.3, -1.0, 1.0])
def test_vb_term_at_t0_is_the_discretized_decoder_nll(x0):
    diffusion = GaussianDiffusion(1000)
    noise, eps_hat, v = -0.4, -0.1, -0.3
    ab = hand_alpha_bar(0)
    x_1 = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    # at t = 0 the posterior mean is x̂_0 itself; σ² interpolates β_0 and the clipped β̃ (= β̃_1)
    mean = (x_1 - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
    _, var_tilde_1 = bayes_posterior(0.0, 0.0, hand_alpha_bar(1), hand_alpha_bar(0))
    frac = (v + 1) / 2
    std = math.exp(0.5 * (frac * math.log(1 - ab) + (1 - frac) * math.log(var_tilde_1)))
    normal = stats.norm(mean, std)
    upper = 1.0 if x0 > 0.999 else normal.cdf(x0 + 1 / 255)
    lower = 0.0 if x0 < -0.999 else normal.cdf(x0 - 1 / 255)
    expected_bits = -math.log(upper - lower) / math.log(2)
    got = vb_term(
        diffusion, one_pixel(x0), one_pixel(x_1), torch.tensor([0]), one_pixel(eps_hat), one_pixel(v)
    )
    # the exact normal CDF, to float32's rounding: ADM's tanh approximation of Φ (DiT's diffusion_utils.py
    # approx_standard_normal_cdf) is 3.2e-4 and 6.5e-4 away here at x0 = 0.3 and −1 (1.1e-5 at 1)
    assert got.item() == pytest.approx(expected_bits, rel=3e-5)


def test_vb_term_averages_over_pixels_per_sample():
    diffusion = GaussianDiffusion(1000)
    gen = torch.Generator().manual_seed(0)
    x0, x_t, eps, v = (torch.randn(2, 1, 1, 2, generator=gen) for _ in range(4))
    t = torch.tensor([0, 700])
    whole = vb_term(diffusion, x0, x_t, t, eps, v)
    per_pixel = torch.stack(
        [
            vb_term(
                diffusion, x0[..., j : j + 1], x_t[..., j : j + 1], t, eps[..., j : j + 1], v[..., j : j + 1]
            )
            for j in range(2)
        ]
    )
    assert torch.allclose(whole, per_pixel.mean(dim=0), rtol=1e-5)


def test_vb_gradient_reaches_v_only_and_vanishes_at_the_true_posterior():
    diffusion = GaussianDiffusion(1000)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 2, 2, 2, generator=gen) * 2 - 1
    noise = torch.randn(3, 2, 2, 2, generator=gen)
    t = torch.tensor([0, 10, 900])
    x_t = diffusion.q_sample(x0, t, noise)
    eps = torch.randn(3, 2, 2, 2, generator=gen).requires_grad_()
    v = torch.randn(3, 2, 2, 2, generator=gen).requires_grad_()
    grad_eps, grad_v = torch.autograd.grad(
        vb_term(diffusion, x0, x_t, t, eps, v).sum(), [eps, v], allow_unused=True
    )
    assert grad_eps is None
    assert grad_v.abs().amax() > 0
    # with the true ε the means agree, and v = −1 (σ² = β̃) makes the KL zero and stationary
    v_star = torch.full_like(v, -1.0).requires_grad_()
    vb = vb_term(diffusion, x0[1:], x_t[1:], t[1:], noise[1:], v_star[1:])
    (grad_star,) = torch.autograd.grad(vb.sum(), [v_star])
    assert vb.abs().amax() < 1e-4
    assert grad_star.abs().amax() < 1e-4


def test_full_chain_posterior_matches_the_schedule_and_bayes():
    diffusion = GaussianDiffusion(1000)
    post = Posterior(diffusion)
    assert torch.allclose(post.betas, diffusion.betas, rtol=1e-9, atol=0)
    assert post.log_variance_clipped[0] == post.log_variance_clipped[1] == post.variance[1].log()
    t = 300
    mean, var = bayes_posterior(0.5, -0.2, hand_alpha_bar(t), hand_alpha_bar(t - 1))
    x0, x_t = torch.tensor([[0.5, -0.2]], dtype=torch.float64).T
    got = post.mean(x0, x_t, torch.tensor([t]))
    assert got.item() == pytest.approx(mean, rel=1e-9)
    assert post.variance[t].item() == pytest.approx(var, rel=1e-9)


def test_respaced_chain_is_its_own_diffusion_process():
    diffusion = GaussianDiffusion(1000)
    ts = respaced_timesteps(1000, 4)
    assert ts == [0, 333, 666, 999]
    post = Posterior(diffusion, ts)
    for i in range(1, 4):
        ab, ab_prev = hand_alpha_bar(ts[i]), hand_alpha_bar(ts[i - 1])
        assert post.betas[i].item() == pytest.approx(1 - ab / ab_prev, rel=1e-9)
        mean, var = bayes_posterior(0.1, 0.9, ab, ab_prev)
        assert post.variance[i].item() == pytest.approx(var, rel=1e-9)
        x0, x_t = torch.tensor([[0.1, 0.9]], dtype=torch.float64).T
        got = post.mean(x0, x_t, torch.tensor([i]))
        assert got.item() == pytest.approx(mean, rel=1e-9)
    # v' = 1 and v' = 0 are the two bounds β and β̃ of the respaced step
    v = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    log_var = post.model_log_variance(v, torch.tensor([2, 2]))
    assert torch.allclose(log_var.squeeze(1), torch.stack([post.betas[2].log(), post.variance[2].log()]))


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x + 1e-3 * t.to(x.dtype).view(-1, 1, 1, 1)


def with_v(v_value: float):
    return lambda x, t: torch.cat([toy_eps(x, t), torch.full_like(x, v_value)], dim=1)


@pytest.mark.parametrize(("steps", "clip_x0"), [(None, True), (10, True), (7, False)])
def test_learned_sampler_pinned_at_a_bound_is_ddpm_with_that_fixed_variance(steps, clip_x0):
    diffusion = GaussianDiffusion(100)
    noise = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))

    def run(fn, fixed_variance="large"):
        return sample(
            fn, diffusion, noise, steps, eta=1.0, clip_x0=clip_x0, generator=torch.Generator().manual_seed(5),
            fixed_variance=fixed_variance,
        )

    small, large = run(toy_eps, "small"), run(toy_eps, "large")
    # v = −1 is log β̃ (fixed small), v = +1 is log β (fixed large; they differ only at the first
    # step, which adds no noise)
    assert torch.allclose(run(with_v(-1.0)), small, atol=1e-5)
    assert torch.allclose(run(with_v(1.0)), large, atol=1e-5)
    assert not torch.allclose(small, large, atol=1e-3)


def test_ddim_ignores_v():
    diffusion = GaussianDiffusion(100)
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    for eta in (0.0, 0.5):
        expected = sample(toy_eps, diffusion, noise, 20, eta=eta, generator=torch.Generator().manual_seed(3))
        got = sample(with_v(0.7), diffusion, noise, 20, eta=eta, generator=torch.Generator().manual_seed(3))
        assert torch.equal(got, expected)


def test_guidance_mixes_eps_and_keeps_conditional_v():
    def model(x, t, y):
        label = y.to(x.dtype).view(-1, 1, 1, 1)
        return torch.cat([x + label, torch.zeros_like(x) - 0.1 * label], dim=1)

    x, t, y = torch.zeros(2, 3, 2, 2), torch.tensor([4, 4]), torch.tensor([2, 5])
    out = guided(model, y, scale=3.0, null_label=10)(x, t)
    eps, v = split_output(out, channels=3)
    # ε_u + s(ε_c − ε_u) with ε_c = y, ε_u = 10
    assert torch.allclose(eps, (10 + 3.0 * (y - 10)).float().view(-1, 1, 1, 1).expand(2, 3, 2, 2))
    assert torch.allclose(v, (-0.1 * y).float().view(-1, 1, 1, 1).expand(2, 3, 2, 2))


def test_split_output_names_the_slices_and_rejects_other_widths():
    out = torch.arange(4.0).view(1, 4, 1, 1)
    eps, v = split_output(out, 2)
    assert eps.flatten().tolist() == [0.0, 1.0] and v.flatten().tolist() == [2.0, 3.0]
    assert split_output(out, 4)[1] is None
    with pytest.raises(DTRLabError, match="in_channels"):
        split_output(out, 3)
