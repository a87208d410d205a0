"""A small CNN trained on the digits training split: its penultimate layer gives "digits-FID"
features and its predictions the class accuracy of class-conditional samples.

It trains in a few seconds on a CPU, deterministically from a seed, and is cached on disk so
every run (and every DDP rank) scores samples with the same network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dtr_lab.digits import digits_split, load_digits_tensors
from dtr_lab.errors import DTRLabError

IMAGE_SIZE = 8
NUM_CLASSES = 10
CACHE_FILE = "digits_classifier-v1.pt"  # bump the version when the architecture or recipe changes


class DigitsClassifier(nn.Module):
    """Three 3×3 convolutions and a 64-wide penultimate layer over 8×8 single-channel digits."""

    num_features = 64
    val_accuracy = float("nan")  # on the held-out split; set by training, kept in the cache

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.num_features), nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations of 1-channel images in [-1, 1] of any size: (N, 1, H, W) -> (N, 64)."""
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.adaptive_avg_pool2d(x, IMAGE_SIZE)  # area averaging, (N, 1, 8, 8)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, 10) logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class of each image: (N, 1, H, W) -> (N,)."""
        return self(x).argmax(dim=1)


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of images whose predicted class is y."""
    return (model.predict(x) == y).float().mean().item()


def train_digits_classifier(seed: int = 0, epochs: int = 15, batch_size: int = 64) -> DigitsClassifier:
    """Train on the digits' training split, digits_split(seed) as DigitsDataModule(seed=seed) splits them,
    with Adam; the global RNG is untouched."""
    # One thread: the summation order, hence the weights, then do not depend on the machine's
    # core count; the network is small enough that this costs about two seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(seed, epochs, batch_size)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, epochs: int, batch_size: int) -> DigitsClassifier:
    images, labels = load_digits_tensors()
    train_idx, val_idx = digits_split(seed)  # the split the diffusion models train on (DigitsDataModule)
    x, y = images[train_idx].contiguous(), labels[train_idx]
    x_val, y_val = images[val_idx].contiguous(), labels[val_idx]
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for batch in order.split(batch_size):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    model.eval().requires_grad_(False)
    model.val_accuracy = accuracy(model, x_val, y_val)
    return model


def cache_path() -> Path:
    """$DTR_LAB_CACHE/digits_classifier-v1.pt, else ~/.cache/dtr_lab/digits_classifier-v1.pt."""
    root = os.environ.get("DTR_LAB_CACHE") or Path.home() / ".cache" / "dtr_lab"
    return Path(root) / CACHE_FILE


def load_digits_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The cached classifier (eval mode, frozen); trained and cached first when the file is
    missing or unreadable."""
    path = Path(path) if path is not None else cache_path()
    model = DigitsClassifier()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state_dict"])
        model.val_accuracy = float(saved["val_accuracy"])
    except Exception:  # missing, truncated, or written by another version: retrain
        model = train_digits_classifier()
        _save(model, path)
    return model.eval().requires_grad_(False)


def _save(model: DigitsClassifier, path: Path) -> None:
    # Write then rename, so a concurrent reader (another DDP rank, a parallel test) never
    # sees half a file.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save({"state_dict": model.state_dict(), "val_accuracy": model.val_accuracy}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise DTRLabError(
            f"cannot write the digits classifier cache {path} ({err.strerror}); "
            "set DTR_LAB_CACHE to a writable folder"
        ) from None
