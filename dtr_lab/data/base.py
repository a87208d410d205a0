"""What every image DataModule shares: tensors in [-1, 1], NCHW, seeded per-epoch shuffling that
resumes mid-epoch."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from dtr_lab.errors import DTRLabError


class EpochShuffleSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self.start = 0  # indices of this epoch already seen before a resume; skipped once

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        start, self.start = self.start, 0
        return iter(torch.randperm(self.size, generator=gen)[start:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableDataLoader(DataLoader):
    """A DataLoader whose place in the epoch goes into checkpoints, so a resume from any step continues
    with the next batch of the same epoch.

    Lightning saves `state_dict()` of a training loader that has one and hands it back through
    `load_state_dict` before iterating again. The position counts batches handed to the training loop:
    Lightning fetches a sized loader without prefetching, so fetched means consumed.
    """

    position = 0  # batches of the current epoch handed out
    _resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": getattr(self.sampler, "epoch", 0), "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = state

    def __iter__(self):
        # a generator: runs at the first fetch, after Lightning's set_epoch for the resumed epoch
        resume, self._resume = self._resume, None
        skip = resume["position"] if resume and resume["epoch"] == getattr(self.sampler, "epoch", 0) else 0
        cheap = isinstance(self.sampler, EpochShuffleSampler)
        if cheap:  # skip indices, not loaded batches
            self.sampler.start = skip * self.batch_size
        batches = super().__iter__()
        for _ in range(0 if cheap else skip):  # another sampler (e.g. DDP's wrapper): load and drop
            next(batches)
        self.position = skip
        for batch in batches:
            self.position += 1
            yield batch


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
        return ResumableDataLoader(
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

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in the data space -> images in [-1, 1]: the identity for pixel data."""
        return x

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


def real_images(datamodule: L.LightningDataModule, max_images: int, seed: int) -> torch.Tensor:
    """Up to `max_images` training images (a seeded subset), decoded when the data are latents."""
    if datamodule is None or not hasattr(datamodule, "train_set"):
        raise DTRLabError("SampleQuality needs a datamodule with a training set to compare samples against")
    if datamodule.train_set is None:
        datamodule.setup("fit")
    dataset = datamodule.train_set
    n = min(max_images, len(dataset))
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    tensors = getattr(dataset, "tensors", None)
    x = tensors[0][idx] if tensors is not None else torch.stack([dataset[i][0] for i in idx.tolist()])
    return torch.cat([datamodule.decode(chunk) for chunk in x.split(256)])
