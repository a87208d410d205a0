"""L_vb at t = 0 with dtr_lab's exact normal CDF against ADM's tanh approximation, as DiT's code computes it
(facebookresearch/DiT ed81ce2 ``diffusion/diffusion_utils.py``: ``approx_standard_normal_cdf`` in
``discretized_gaussian_log_likelihood``). A measurement for docs/paper-scale.md, never imported by the suite:

    PYTHONPATH=. python tests/data/official/lvb_cdf.py DIT_REPO          # 256 levels, uniform
    PYTHONPATH=. python tests/data/official/lvb_cdf.py DIT_REPO edges    # 70 % of the pixels at −1

DIT_REPO: a plain checkout (its diffusion/ needs only torch and numpy). 64 images 3×32×32 in [−1, 1] on
256 levels, x_1 = q_sample(x_0, 0), the decoder's mean from ε̂ = ε + error·N(0, 1), v ∈ {−1, 0, 1} (the
variance at β̃_1, between, β_0), T = 1000 linear, float64: the mean −log p(x_0 | x_1) in nats by each CDF.
"""

import sys

import torch

sys.path.insert(0, sys.argv[1])
from diffusion.diffusion_utils import discretized_gaussian_log_likelihood as tanh_likelihood  # noqa: E402

from dtr_lab.diffusion import GaussianDiffusion  # noqa: E402
from dtr_lab.diffusion.learned_variance import Posterior, discretized_gaussian_log_likelihood  # noqa: E402

gen = torch.Generator().manual_seed(0)
diffusion = GaussianDiffusion(1000, "linear")
x0 = torch.randint(0, 256, (64, 3, 32, 32), generator=gen).double() / 127.5 - 1
if sys.argv[2:] == ["edges"]:  # digits-like: most pixels in the edge bin, where Φ's tail decides
    x0 = torch.where(torch.rand(x0.shape, generator=gen, dtype=torch.float64) < 0.7, -1.0, x0)
eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
t = torch.zeros(len(x0), dtype=torch.long)
ab = diffusion.alpha_bar[0].double()
x1 = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
posterior = Posterior.of(diffusion)
for error in (0.0, 0.1, 0.5):
    eps_hat = eps + error * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    for v in (-1.0, 0.0, 1.0):
        mean, log_var = posterior.p_mean_log_variance(x1, t, eps_hat, torch.full_like(x0, v))
        exact = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        approx = -tanh_likelihood(x0, means=mean, log_scales=0.5 * log_var)
        worst = ((exact - approx).abs() / approx.abs()).max()
        print(
            f"ε error {error}, v {v:+}: exact {exact.mean():.6f} nats, tanh {approx.mean():.6f}, relative "
            f"{(exact.mean() - approx.mean()).abs() / approx.mean():.2e} (one pixel at most {worst:.2e})"
        )
