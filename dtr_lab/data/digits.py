"""scikit-learn's 8×8 handwritten digits: the embedded, offline default dataset."""

from __future__ import annotations

from dtr_lab.data.base import ImageDataModule, tensor_dataset
from dtr_lab.digits import NUM_DIGITS, digits_split, load_digits_tensors
from dtr_lab.errors import DTRLabError

__all__ = ["NUM_DIGITS", "DigitsDataModule", "digits_split", "load_digits_tensors"]


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
