"""Schedules, q_sample and the samplers on cases worked out by hand."""

import math

import pytest
import torch

from dtr_lab.diffusion import (
    GaussianDiffusion,
    Posterior,
    ddim,
    ddpm,
    guided,
    per_sample_mse,
    respaced_timesteps,
    sample,
)
from dtr_lab.diffusion.schedule import at, predict_x0
from dtr_lab.errors import DTRLabError


def test_linear_schedule_endpoints_and_snr():
    d = GaussianDiffusion(1000, "linear")
    assert d.betas[0].item() == pytest.approx(1e-4) and d.betas[-1].item() == pytest.approx(0.02)
    ab0 = 1 - 1e-4
    assert d.snr(torch.tensor([0])).item() == pytest.approx(ab0 / (1 - ab0), rel=1e-4)
    snr = d.snr(torch.arange(1000))
    assert (snr[1:] < snr[:-1]).all()  # SNR decreases with t


def test_cosine_schedule_alpha_bar_formula():
    d = GaussianDiffusion(1000, "cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 300, 700):
        assert d.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)


def test_short_schedule_spans_the_same_range():
    d = GaussianDiffusion(100, "linear")  # betas rescaled by 1000/T
    assert d.betas[-1].item() == pytest.approx(0.2)


def test_q_sample_and_mse():
    d = GaussianDiffusion(10, "linear")
    x0, noise, t = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0), torch.tensor([0, 9])
    ab = d.alpha_bar[t].float()
    expected = ab.sqrt()[:, None, None, None] + 2 * (1 - ab).sqrt()[:, None, None, None]
    torch.testing.assert_close(d.q_sample(x0, t, noise), expected.expand(2, 1, 2, 2))
    assert per_sample_mse(torch.zeros(2, 1, 2, 2), noise).tolist() == [4.0, 4.0]


def test_bad_schedule_options():
    with pytest.raises(DTRLabError, match="schedule"):
        GaussianDiffusion(1000, "quadratic")
    with pytest.raises(DTRLabError, match="num_timesteps"):
        GaussianDiffusion(1)


def test_respaced_timesteps():
    assert respaced_timesteps(10, 10) == list(range(10))
    assert respaced_timesteps(1000, 4) == [0, 333, 666, 999]
    assert respaced_timesteps(1000, 1) == [0]  # DiT's stride 1 for a single step: t = 0
    with pytest.raises(DTRLabError, match="steps"):
        respaced_timesteps(10, 11)


def test_even_respacing_is_dit_float_stride_for_every_step_count():
    """DiT diffusion/respace.py space_timesteps(1000, "N"): the stride (T−1)/(N−1) in floats, added up
    from 0.0, each partial sum rounded by Python's round. A rounded linspace differs for 282 of the N."""

    def float_stride(T: int, N: int) -> list[int]:
        stride = (T - 1) / (N - 1) if N > 1 else 1
        out, cur = [], 0.0
        for _ in range(N):
            out.append(round(cur))
            cur += stride
        return sorted(set(out))

    linspace_differs = 0
    for steps in range(1, 1001):
        expected = float_stride(1000, steps)
        assert respaced_timesteps(1000, steps) == expected, steps
        linspace = sorted(set(torch.linspace(0, 999, steps, dtype=torch.float64).round().long().tolist()))
        linspace_differs += linspace != expected
    assert linspace_differs > 0  # the rule matters: the old rounded linspace is off for some N
    # a case worked by hand: N = 7 of T = 1000, stride 166.5; the partial sums 166.5, 499.5 and 832.5 are
    # exact halves and round to even: 166, 500, 832
    assert respaced_timesteps(1000, 7) == [0, 166, 333, 500, 666, 832, 999]


def oracle_eps(d: GaussianDiffusion, point: torch.Tensor, seen: list):
    """The exact ε-predictor when the data is the single point `point`."""

    def eps(x, t):
        seen.append(t[0].item())
        ab = d.alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - ab.sqrt() * point) / (1 - ab).sqrt()

    return eps


@pytest.mark.parametrize("steps", [None, 7])
def test_samplers_recover_a_single_data_point(steps):
    d = GaussianDiffusion(50, "linear")
    point = torch.tensor([0.5, -0.25]).view(1, 2, 1, 1)
    noise = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    for fn in (ddpm, ddim):
        seen = []
        out = fn(
            oracle_eps(d, point, seen), d, noise, steps=steps, generator=torch.Generator().manual_seed(1)
        )
        torch.testing.assert_close(out, point.expand_as(out), atol=1e-5, rtol=0)
        # respaced samplers call the model at the original timesteps, from T-1 down to 0
        assert seen == list(reversed(respaced_timesteps(50, steps or 50)))


def test_ddim_with_eta_one_is_ddpm_with_the_small_variance():
    d = GaussianDiffusion(20, "cosine")
    net = lambda x, t: torch.tanh(x) * (t.float().view(-1, 1, 1, 1) / 20)  # noqa: E731
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = ddpm(net, d, noise, generator=torch.Generator().manual_seed(3), fixed_variance="small")
    b = ddim(net, d, noise, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    # the DDIM update (its own formula) tends to the DDPM posterior step as eta -> 1
    near = ddim(net, d, noise, eta=1 - 1e-9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(near, a, atol=1e-4, rtol=0)
    # the default DDPM variance is the larger β_t, so the same noise gives another chain
    assert not torch.allclose(ddpm(net, d, noise, generator=torch.Generator().manual_seed(3)), a, atol=1e-3)
    c = ddim(net, d, noise)
    assert torch.equal(c, ddim(net, d, noise))  # eta=0 is deterministic


def test_ddim_respacing_is_the_dit_stride_schedule():
    # DiT/ADM space_timesteps(1000, "ddim25"): stride 1000/25 = 40 from 0
    expected = [0, 40, 80, 120, 160, 200, 240, 280, 320, 360, 400, 440, 480,
                520, 560, 600, 640, 680, 720, 760, 800, 840, 880, 920, 960]  # fmt: skip
    assert respaced_timesteps(1000, 25, "ddim") == expected
    assert respaced_timesteps(1000, 250, "ddim") == list(range(0, 1000, 4))
    # 30 steps: stride 34 is the smallest with ⌈1000/s⌉ = 30 (0, 34, …, 986)
    assert respaced_timesteps(1000, 30, "ddim")[-2:] == [952, 986]
    # the evenly spread default (DiT's "25") ends at T−1
    assert respaced_timesteps(1000, 25)[:3] == [0, 42, 83] and respaced_timesteps(1000, 25)[-1] == 999
    assert respaced_timesteps(1000, 25, "even") == respaced_timesteps(1000, 25)
    with pytest.raises(DTRLabError, match="cannot make exactly 999 steps"):
        respaced_timesteps(1000, 999, "ddim")  # strides 1 and 2 give 1000 and 500
    with pytest.raises(DTRLabError, match="respacing='ddim25' is unknown"):
        respaced_timesteps(1000, 25, "ddim25")


def two_step_noise_variance(d: GaussianDiffusion, fixed_variance: str) -> float:
    """σ² of the noisy step of the 2-step chain [0, T−1], read off a sample with x_T = 0 and ε̂ = 0.

    Step T−1: x̂_0 = 0, so x = σ z; step 0 (ᾱ_prev = 1, no noise): x_0 = x / √ᾱ_0.
    """
    shape = (1, 1, 8, 8)
    out = sample(lambda x, t: torch.zeros_like(x), d, torch.zeros(shape), steps=2, eta=1.0, clip_x0=False,
                 generator=torch.Generator().manual_seed(7), fixed_variance=fixed_variance)  # fmt: skip
    z = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sigma = out.double() * d.alpha_bar[0].sqrt() / z
    assert torch.allclose(sigma, sigma.flatten()[0].expand_as(sigma), rtol=1e-5)
    return float(sigma.flatten()[0]) ** 2


def test_fixed_variance_large_is_the_respaced_chains_beta_and_small_is_beta_tilde():
    T = 100
    d = GaussianDiffusion(T, "linear")
    # the chain [0, 99] by hand: ᾱ_t = Π_{s<=t} (1 − β_s), β_s = 1e-3 + s (0.2 − 1e-3) / 99
    alpha_bar = math.prod(1 - (1e-3 + s * (0.2 - 1e-3) / 99) for s in range(T))
    alpha_bar_0 = 1 - 1e-3
    beta_chain = 1 - alpha_bar / alpha_bar_0  # the chain's β at its second step
    beta_tilde = beta_chain * (1 - alpha_bar_0) / (1 - alpha_bar)
    assert two_step_noise_variance(d, "large") == pytest.approx(beta_chain, rel=1e-5)
    assert two_step_noise_variance(d, "small") == pytest.approx(beta_tilde, rel=1e-5)
    assert beta_chain / beta_tilde > 100  # the two conventions are far apart on this chain


def test_fixed_variance_tables_on_a_respaced_chain():
    d = GaussianDiffusion(1000, "linear")
    ts = respaced_timesteps(1000, 25, "ddim")
    ab = [d.alpha_bar[t].item() for t in ts]
    betas = [1 - ab[0]] + [1 - ab[i] / ab[i - 1] for i in range(1, len(ts))]
    tilde = [0.0] + [betas[i] * (1 - ab[i - 1]) / (1 - ab[i]) for i in range(1, len(ts))]
    posterior = Posterior(d, ts)
    torch.testing.assert_close(posterior.fixed_variance("small"), torch.tensor(tilde, dtype=torch.float64))
    # ADM's FIXED_LARGE: β̃ of the second step at the first, then the chain's own β
    large = torch.tensor([tilde[1], *betas[1:]], dtype=torch.float64)
    torch.testing.assert_close(posterior.fixed_variance("large"), large)


def test_unknown_fixed_variance_is_one_line():
    d = GaussianDiffusion(10)
    with pytest.raises(DTRLabError, match="fixed_variance='medium' is unknown; choose large") as err:
        ddpm(lambda x, t: x, d, torch.zeros(1, 1, 1, 1), fixed_variance="medium")
    assert "\n" not in str(err.value)


def test_one_minus_alpha_bar_is_formed_in_float64():
    # at t = 0 of the linear schedule 1 − ᾱ_0 = β_0 = 1e-4; float32 ᾱ_0 keeps it to ~4 digits only
    d = GaussianDiffusion(1000, "linear")
    x0, noise = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    t = torch.tensor([0])
    coefficient = d.q_sample(x0, t, noise).item()  # √(1 − ᾱ_0), computed by the module in float32
    reference = math.sqrt(1e-4)  # float64: 1 − ᾱ_0 = β_0 exactly
    cast_first = math.sqrt(1 - torch.tensor(1 - 1e-4, dtype=torch.float32).item())
    assert abs(coefficient / reference - 1) < 1e-6
    assert abs(cast_first / reference - 1) > 5e-5  # what casting first would have given
    # and x̂_0 inverts q_sample at t = 0 to float32 precision
    x0 = torch.tensor([[[[0.3]]]])
    x_t = d.q_sample(x0, t, noise)
    # (ᾱ_0 gathered in float64: 1 − ᾱ_0 formed in float32 keeps ~4 digits)
    assert predict_x0(x_t, noise, at(d.alpha_bar, t, x_t.double())).item() == pytest.approx(0.3, rel=1e-6)


def test_single_step_ddim_by_hand():
    # one respaced step at t=0 with ε̂ = 0: x̂0 = x / √ᾱ_0 (β_0 = 1e-4 · 1000/T), returned as is
    d = GaussianDiffusion(10, "linear")
    x = torch.full((1, 1, 1, 1), 0.1)
    out = ddim(lambda x, t: torch.zeros_like(x), d, x, steps=1)
    assert out.item() == pytest.approx(0.1 / math.sqrt(1 - 1e-4 * 100), rel=1e-6)


def test_guidance_combines_conditional_and_unconditional():
    def model(x, t, y):
        return torch.where((y == 10).view(-1, 1, 1, 1), torch.zeros_like(x), torch.ones_like(x))

    eps = guided(model, torch.tensor([3, 4]), scale=1.5, null_label=10)
    out = eps(torch.zeros(2, 1, 2, 2), torch.tensor([5, 5]))
    assert torch.allclose(out, torch.full_like(out, 1.5))  # 0 + 1.5 (1 - 0)
