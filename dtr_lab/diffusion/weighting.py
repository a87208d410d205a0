"""Per-sample loss weights w(SNR) that multiply the ε-prediction MSE; pure functions of SNR."""

from __future__ import annotations

import torch

from dtr_lab.errors import DTRLabError


class LossWeighting:
    """A weight per sample from its SNR(t): ``weighting(snr)`` has the shape of snr."""

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _check_gamma(gamma: float, fix: str) -> float:
    if not gamma > 0:
        raise DTRLabError(f"weighting.gamma={gamma} must be > 0; {fix}")
    return float(gamma)


class Uniform(LossWeighting):
    """w = 1: the plain ε-prediction loss of Ho et al. (2020)."""

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(snr)


class MinSNR(LossWeighting):
    """Min-SNR-γ for ε-prediction, w = min(SNR, γ) / SNR (Hang et al., ICCV 2023, arXiv 2303.09556)."""

    def __init__(self, gamma: float = 5.0) -> None:
        self.gamma = _check_gamma(gamma, "the paper's default is 5.0")

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        return snr.clamp(max=self.gamma) / snr


class P2(LossWeighting):
    """Perception-prioritised weight w = 1 / (k + SNR)^γ (Choi et al., CVPR 2022, arXiv 2204.00227)."""

    def __init__(self, k: float = 1.0, gamma: float = 1.0) -> None:
        if not k >= 0:
            raise DTRLabError(f"weighting.k={k} must be >= 0 (it keeps 1/(k+SNR) finite); the paper uses 1.0")
        self.k = float(k)
        self.gamma = _check_gamma(gamma, "the paper uses 0.5 or 1.0")

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        return (self.k + snr).pow(-self.gamma)
