"""A folder of images, one subfolder per class (or flat: unconditional), resized ADM-style."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import Dataset, Subset

from dtr_lab.data.base import ImageDataModule
from dtr_lab.errors import DTRLabError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then the centre square, as ADM prepares ImageNet (Dhariwal & Nichol 2021)."""
    # halve with a box filter first: a single bicubic step over a large factor aliases
    while min(img.size) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), resample=Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


# full-scale value of PIL's single-channel modes that convert("RGB") would clip at 255 (or at 0 for floats)
FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL returns; ValueError for pixels with no meaning as an image.

    16-bit and 32-bit integer grayscale (I;16*, I: PNG and TIFF) is scaled by 255/65535 and float
    grayscale (F: TIFF) by 255 from [0, 1]; PIL's own convert("RGB") clips them instead (most 16-bit
    pixels white, every [0, 1) float black). NaN, infinity or levels outside that range are refused.
    Transparent pixels (an alpha band, or a palette or grayscale transparency entry) are laid on white,
    not left at whatever colour they hide.
    """
    if img.mode in FULL_SCALE:
        full = FULL_SCALE[img.mode]
        levels = np.asarray(img, dtype=np.float64)  # (H, W)
        if not np.isfinite(levels).all():
            raise ValueError(f"{int((~np.isfinite(levels)).sum())} pixels are NaN or infinite")
        if levels.min() < 0 or levels.max() > full:
            raise ValueError(
                f"{img.mode} levels span {levels.min():g}…{levels.max():g}, outside 0…{full:g}; "
                f"save them scaled to 0…{full:g}, or as 8-bit"
            )
        img = Image.fromarray(np.round(levels * (255 / full)).astype(np.uint8), "L")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, WHITE), img.convert("RGBA"))
    return img.convert("RGB")


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image file as a (3, size, size) uint8 RGB tensor; a DTRLabError naming it if it won't decode."""
    try:
        with Image.open(path) as img:
            img = center_crop_resize(to_rgb(img), size)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for damaged files
        raise DTRLabError(f"{path}: cannot decode this image ({err}); remove or re-save the file") from err
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (3, S, S)


def is_readable(path: Path) -> bool:
    """Cheap header check (no pixel decoding), fast enough to run over a whole dataset at setup."""
    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # any failure means the file is unusable; which one does not matter here
        return False


def find_classes(root: Path) -> list[str]:
    """Sorted names of the class subfolders; [] when the images lie directly in root (unconditional)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclass
class FolderIndex:
    """Readable image files with their class labels, and the files skipped as unreadable."""

    files: list[Path]
    labels: list[int]
    skipped: list[Path]


def check_folder(root: str | Path, option: str = "data.root") -> list[str]:
    """Fail fast on a missing or empty folder; returns the class names (cheap: stops at the first image)."""
    root = Path(root)
    if not root.is_dir():
        raise DTRLabError(
            f"{option}={root} is not a folder; point it at a folder of images (one subfolder per class)"
        )
    classes = find_classes(root)
    folders = [root / c for c in classes] or [root]
    for folder in folders:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
            raise DTRLabError(
                f"{option}={root}: no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
                "add images or remove the folder"
            )
    return classes


def index_folder(
    root: str | Path, classes: list[str], on_bad_file: str, skip_fix: str = "set data.on_bad_file=skip"
) -> FolderIndex:
    """All images under root labelled by class subfolder; unreadable ones skipped or fatal per on_bad_file."""
    root = Path(root)
    index = FolderIndex([], [], [])
    for label, folder in enumerate([root / c for c in classes] or [root]):
        for path in image_files(folder):
            if is_readable(path):
                index.files.append(path)
                index.labels.append(label)
            elif on_bad_file == "stop":
                raise DTRLabError(f"{path}: unreadable image; remove it, or {skip_fix}")
            else:
                index.skipped.append(path)
    if not index.files:
        raise DTRLabError(f"{root}: none of the images is readable; check the files")
    return index


class ImageFiles(Dataset):
    """Images decoded on access into [-1, 1] floats, with their labels."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int) -> None:
        self.files, self.labels, self.image_size = files, labels, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = load_image(self.files[i], self.image_size)
        return x.float() / 127.5 - 1, self.labels[i]


class Mirrored(Dataset):
    """A dataset followed by its horizontal mirror images (EDM's x-flip doubling of the dataset).

    Item i < n is item i; item n + i is item i flipped. Every epoch therefore sees both
    orientations, and the seeded sampler alone decides the order: reproducible on resume
    and independent of the number of workers, unlike a per-item coin flip.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 2 * len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.dataset)
        x, y = self.dataset[i % n]
        return (x.flip(-1) if i >= n else x), y


def check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise DTRLabError(f"data.val_fraction={val_fraction} must be in [0, 1)")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, val) index lists; at least one of each when val_fraction > 0."""
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_val < 1:
        raise DTRLabError(
            f"{n} samples leave none for training after the validation split; lower data.val_fraction"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[n_val:], perm[:n_val]


class ImageFolderDataModule(ImageDataModule):
    """RGB images from class subfolders (a flat folder is one unconditional class), square-cropped."""

    in_channels = 3

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.05,
        on_bad_file: Literal["skip", "stop"] = "skip",
        random_flip: bool = True,
    ) -> None:
        """
        Args:
            root: folder with one subfolder of images per class, or images directly (num_classes 0).
            image_size: side length after resizing the shorter side and centre-cropping.
            batch_size: training batch size per device.
            num_workers: DataLoader workers decoding images.
            seed: seeds the train/val split and the per-epoch shuffling.
            val_fraction: share of the images held out for validation.
            on_bad_file: "skip" unreadable files (their count is logged) or "stop" with an error naming one.
            random_flip: train on every image and its horizontal mirror image.
        """
        super().__init__(batch_size, num_workers, seed)
        if on_bad_file not in ("skip", "stop"):
            raise DTRLabError(f"data.on_bad_file={on_bad_file!r} must be 'skip' or 'stop'")
        if image_size < 1:
            raise DTRLabError(f"data.image_size={image_size} must be a positive integer")
        check_val_fraction(val_fraction)
        self.classes = check_folder(root)
        self.root = Path(root)
        self.image_size = image_size
        self.num_classes = len(self.classes)
        self.val_fraction = val_fraction
        self.on_bad_file = on_bad_file
        self.random_flip = random_flip
        self.skipped: list[Path] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        index = index_folder(self.root, self.classes, self.on_bad_file)
        self.skipped = index.skipped
        if index.skipped:
            first = index.skipped[0]
            rank_zero_warn(
                f"data.root={self.root}: skipped {len(index.skipped)} unreadable images, e.g. {first}"
            )
        images = ImageFiles(index.files, index.labels, self.image_size)
        train_idx, val_idx = split_indices(len(images), self.val_fraction, self.seed)
        train = Subset(images, train_idx)
        self.train_set = Mirrored(train) if self.random_flip else train
        self.val_set = Subset(images, val_idx)
