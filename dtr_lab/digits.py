"""scikit-learn's 8×8 handwritten digits as tensors, and their seeded train/val split: the one copy that
the data module (``dtr_lab.data.DigitsDataModule``) and the metrics' classifier both read, so that data
and metrics need not import each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F

NUM_DIGITS = 1797  # images in sklearn.datasets.load_digits


def digits_split(seed: int = 0, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train_idx, val_idx) over the 1797 digits; the metrics' classifier uses the same split."""
    perm = torch.randperm(NUM_DIGITS, generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * NUM_DIGITS)
    return perm[n_val:], perm[:n_val]


def load_digits_tensors(image_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N, 1, S, S) floats in [-1, 1] and (N,) labels; S a multiple of 8 (bilinear)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16.0 * 2 - 1  # pixel values are 0..16
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x, torch.from_numpy(digits.target).long()
