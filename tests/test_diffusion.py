"""Schedules, q_sample and the samplers on cases worked out by hand."""

import math

import pytest
import torch

from dtr_lab.diffusion import GaussianDiffusion, ddim, ddpm, guided, per_sample_mse, respaced_timesteps
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
    with pytest.raises(DTRLabError, match="steps"):
        respaced_timesteps(10, 11)


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


def test_ddim_with_eta_one_is_ddpm():
    d = GaussianDiffusion(20, "cosine")
    net = lambda x, t: torch.tanh(x) * (t.float().view(-1, 1, 1, 1) / 20)  # noqa: E731
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = ddpm(net, d, noise, generator=torch.Generator().manual_seed(3))
    b = ddim(net, d, noise, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    c = ddim(net, d, noise)
    assert torch.equal(c, ddim(net, d, noise))  # eta=0 is deterministic


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
