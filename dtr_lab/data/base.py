"""What every image DataModule shares: tensors in [-1, 1], NCHW, seeded per-epoch shuffling."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from dtr_lab.errors import DTRLabError


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


class ImageDataModule(L.LightningDataModule):
    """Base for class-conditional image data; subclasses fill train_set and val_set in setup."""

    image_size: int
    in_channels: int
    num_classes: int

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise DTRLabError(f"data.batch_size={batch_size} must be a positive integer")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def check_batch_size(self) -> None:
        if len(self.train_set) < self.batch_size:
            raise DTRLabError(
                f"data.batch_size={self.batch_size} exceeds the {len(self.train_set)} training images; "
                "lower data.batch_size"
            )

    def train_dataloader(self) -> DataLoader:
        self.check_batch_size()
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(self.train_set), self.seed),
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """What to sample is the model's choice (model.num_samples labels cycling over the classes)."""
        return self.trainer.lightning_module.predict_dataloader()

    def probe_batch(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed, seeded set of `size` training images and labels for analyses."""
        if self.train_set is None:
            self.setup("fit")
        if size > len(self.train_set):
            raise DTRLabError(
                f"probe_size={size} is larger than the {len(self.train_set)} training images; "
                "lower probe_size"
            )
        idx = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(seed))[:size]
        xs, ys = zip(*(self.train_set[i] for i in idx.tolist()), strict=True)
        return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


def tensor_dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
    return TensorDataset(images.float().contiguous(), labels.long())
