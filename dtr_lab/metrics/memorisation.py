"""Memorisation: the share of generated images that lie closer to a training image than training
images lie to one another.

A sample x counts as a copy when d(x) = min_i ‖x − x_i‖₂ over the training images x_i is below τ, the
q-quantile (q = 0.05 by default) of the training set's own leave-one-out nearest-neighbour distances
d_i = min_{j≠i} ‖x_i − x_j‖₂. This is the authenticity test of Alaa et al., "How Faithful is your
Synthetic Data?" (ICML 2022), which compares d(x) with its nearest training image's own d_i, here with
one global threshold so that it is calibrated: a fresh draw from the data distribution scores about q,
an exact copy scores 1, so a low FID that comes from copying training images shows as a share near 1.

Distances are measured in pixel space, not in digits-classifier features: a copy is a copy of the
pixels, and classifier features are trained to be invariant within a class, so distinct writings of a
digit would sit close and count as copies (Carlini et al. 2023, "Extracting Training Data from Diffusion
Models", likewise find CIFAR-10 copies by ℓ2 distance in pixel space). Images larger than 32×32 are
area-resized to 32×32 first: 10,000 ImageNet-256 images would otherwise take 8 GB, and a copy stays a
copy after pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dtr_lab.errors import DTRLabError
from dtr_lab.metrics.features import to_unit_range

MAX_SIDE = 32


def pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Images (N, C, H, W), uint8 or float in [-1, 1] -> flat float pixels (N, C·h·w) at size (h, w),
    area-resized where the sizes differ."""
    x = to_unit_range(images)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="area")
    return x.flatten(1).double()


def compared_size(images: torch.Tensor) -> tuple[int, int]:
    """The training images' side lengths, capped at MAX_SIDE."""
    return min(images.shape[-2], MAX_SIDE), min(images.shape[-1], MAX_SIDE)


def nearest_distances(
    queries: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False
) -> torch.Tensor:
    """min_i ‖q − r_i‖₂ for each query row, (N,); with exclude_self the queries are the reference and
    each row's own entry is skipped (leave-one-out)."""
    out = []
    for start in range(0, len(queries), 1024):  # 1024 × N distances at a time
        d = torch.cdist(queries[start : start + 1024], reference)  # (n, N)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = float("inf")
        out.append(d.min(dim=1).values)
    return torch.cat(out)


class Memorisation:
    """Share of samples closer to their nearest training image than the q-quantile of the training
    images' distances to their nearest other training image."""

    def __init__(self, train_images: torch.Tensor, quantile: float = 0.05) -> None:
        """
        Args:
            train_images: (N, C, H, W) training images, uint8 or float in [-1, 1]; N ≥ 2.
            quantile: q, the share of fresh draws from the data distribution that score as copies.
        """
        if not 0.0 < quantile < 1.0:
            raise DTRLabError(f"memorisation quantile={quantile} must be in (0, 1); 0.05 is the default")
        if len(train_images) < 2:
            raise DTRLabError(f"memorisation needs at least 2 training images, got {len(train_images)}")
        self.size = compared_size(train_images)
        self.train = pixels(train_images, self.size)  # (N, D)
        own = nearest_distances(self.train, self.train, exclude_self=True)  # (N,)
        self.threshold = torch.quantile(own, quantile).item()

    def distances(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's distance to its nearest training image, (N,); images of another size are
        area-resized to the training images' (as the feature extractors resize them)."""
        return nearest_distances(pixels(images, self.size), self.train)

    def __call__(self, images: torch.Tensor) -> float:
        """The share of `images` (N, C, H, W) that are copies: nearest-training distance ≤ τ (≤, so that exact
        copies count even when duplicates in the training set make τ = 0)."""
        return (self.distances(images) <= self.threshold).double().mean().item()
