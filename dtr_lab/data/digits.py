"""scikit-learn's 8×8 handwritten digits: the embedded, offline default dataset."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dtr_lab.data.base import ImageDataModule, tensor_dataset
from dtr_lab.errors import DTRLabError

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


class DigitsDataModule(ImageDataModule):
    """1797 grey 8×8 digits in 10 classes (1617 train / 180 val), optionally upsampled."""

    in_channels = 1
    num_classes = 10

    def __init__(
        self, image_size: int = 8, batch_size: int = 128, num_workers: int = 0, seed: int = 0
    ) -> None:
        """
        Args:
            image_size: side length; 8 (native) or a multiple of 8 (bilinear upsampling).
            batch_size: training batch size per device.
            num_workers: DataLoader workers (0 is fastest for this in-memory set).
            seed: seeds the train/val split and the per-epoch shuffling.
        """
        super().__init__(batch_size, num_workers, seed)
        if image_size < 8 or image_size % 8:
            raise DTRLabError(f"data.image_size={image_size} must be 8 or a multiple of 8 for the 8×8 digits")
        self.image_size = image_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = load_digits_tensors(self.image_size)
        train_idx, val_idx = digits_split(self.seed)
        self.train_set = tensor_dataset(x[train_idx], y[train_idx])
        self.val_set = tensor_dataset(x[val_idx], y[val_idx])
