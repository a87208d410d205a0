"""Pre-extracted VAE latents (sharded .npy + meta.json) as training data, decodable back to images.

Layout written by `python -m dtr_lab.encode`:
    meta.json              {"vae", "scaling_factor", "shift_factor", "image_size", "latent_shape",
                            "num_classes", "num_samples", "flip", ...}
    latents_00000.npy      (N, C, h, w) float16/float32, already scaled: z = (mean − shift) · scaling_factor
    labels_00000.npy       (N,) integer class labels
    latents_flip_00000.npy (N, C, h, w) latents of the horizontally flipped images (optional)
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from dtr_lab.data.base import ImageDataModule
from dtr_lab.data.image_folder import check_val_fraction, split_indices
from dtr_lab.errors import DTRLabError

META_FILE = "meta.json"
REQUIRED_META = ("vae", "scaling_factor", "latent_shape", "num_classes")


def shard_name(kind: str, k: int) -> str:
    """File name of shard k: kind is "latents", "labels" or "latents_flip"."""
    return f"{kind}_{k:05d}.npy"


def load_vae(name: str, option: str):
    """A frozen diffusers AutoencoderKL from a Hub id or a local `save_pretrained` folder."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise DTRLabError(
            f"{option}: the VAE needs the optional 'vae' extra (diffusers); pip install 'dtr_lab[vae]'"
        ) from err
    try:
        vae = AutoencoderKL.from_pretrained(name, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise DTRLabError(
            f"{option}={name}: cannot load an AutoencoderKL (no such local folder with config.json, and the "
            "Hugging Face Hub is unreachable or has no such model); pass a folder saved with save_pretrained"
        ) from err
    return vae.eval().requires_grad_(False)


def read_meta(root: Path) -> dict:
    path = root / META_FILE
    if not root.is_dir():
        raise DTRLabError(
            f"data.root={root} is not a folder; run `python -m dtr_lab.encode` to write latents there"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DTRLabError(
            f"{path}: missing or not valid JSON ({err}); re-run `python -m dtr_lab.encode`"
        ) from err
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise DTRLabError(f"{path} lacks {', '.join(missing)}; re-run `python -m dtr_lab.encode`")
    shape = meta["latent_shape"]
    if len(shape) != 3 or shape[1] != shape[2]:
        raise DTRLabError(f"{path}: latent_shape={shape} must be [C, h, h] (square latents)")
    return meta


def open_array(path: Path) -> np.ndarray:
    """A memory-mapped .npy, so a dataset larger than RAM costs only the pages it touches."""
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DTRLabError(
            f"{path}: not a readable .npy file ({err}); re-run `python -m dtr_lab.encode`"
        ) from err


class LatentShards(Dataset):
    """Latents and labels across shards; with twins, items n.. are the flipped images' latents."""

    def __init__(
        self,
        shards: list[Path],
        twins: list[Path] | None,
        sizes: list[int],
        labels: np.ndarray,
        index: list[int],
    ) -> None:
        self.shards, self.twins, self.labels, self.index = shards, twins, labels, index
        self.starts = np.cumsum([0] + sizes[:-1]).tolist()
        self._arrays: dict[Path, np.ndarray] = {}

    def __getstate__(self) -> dict:
        # workers reopen the memory maps; pickling an open np.memmap would copy the whole shard
        return {**self.__dict__, "_arrays": {}}

    def array(self, path: Path) -> np.ndarray:
        if path not in self._arrays:
            self._arrays[path] = open_array(path)
        return self._arrays[path]

    def __len__(self) -> int:
        return len(self.index) * (2 if self.twins else 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.index)
        k = self.index[i % n]
        s = bisect.bisect_right(self.starts, k) - 1
        path = (self.twins if i >= n else self.shards)[s]
        z = np.asarray(self.array(path)[k - self.starts[s]], dtype=np.float32)  # (C, h, w)
        return torch.from_numpy(z), int(self.labels[k])


class LatentDataModule(ImageDataModule):
    """Scaled VAE latents of an image dataset (e.g. ImageNet-256 -> 4×32×32), as DiT trains on them."""

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.01,
        flip_pairs: bool = True,
        vae: str | None = None,
        decode_batch_size: int = 32,
    ) -> None:
        """
        Args:
            root: folder written by `python -m dtr_lab.encode` (meta.json and latents/labels shards).
            batch_size: training batch size per device.
            num_workers: DataLoader workers (shards are memory-mapped).
            seed: seeds the train/val split and the per-epoch shuffling.
            val_fraction: share of the samples held out for validation.
            flip_pairs: also train on the latents of the flipped images, when the folder has them.
            vae: VAE for `decode` (Hub id or local folder); default the one named in meta.json.
            decode_batch_size: latents decoded per VAE call, bounding decoder memory.
        """
        super().__init__(batch_size, num_workers, seed)
        check_val_fraction(val_fraction)
        self.root = Path(root)
        self.meta = read_meta(self.root)
        self.in_channels, self.image_size = self.meta["latent_shape"][0], self.meta["latent_shape"][1]
        self.num_classes = self.meta["num_classes"]
        self.val_fraction = val_fraction
        self.flip_pairs = flip_pairs
        self.vae_name = vae or self.meta["vae"]
        self.decode_batch_size = decode_batch_size
        self._vae = None

    def check_shards(self) -> tuple[list[Path], list[Path] | None, list[int], np.ndarray]:
        """Shard paths (and twins), their sizes and all labels, each shard checked against meta.json."""
        paths = sorted(self.root.glob("latents_[0-9]*.npy"))
        if not paths:
            raise DTRLabError(
                f"data.root={self.root} has no latents_*.npy shards; re-run `python -m dtr_lab.encode`"
            )
        use_twins = self.flip_pairs and bool(self.meta.get("flip", False))
        if self.flip_pairs and not use_twins:
            rank_zero_info(f"data.root={self.root} has no flipped twins; training on unflipped latents only")
        shape = tuple(self.meta["latent_shape"])
        twins, sizes, labels = [], [], []
        for path in paths:
            suffix = path.name.removeprefix("latents_")
            z = open_array(path)
            if z.ndim != 4 or z.shape[1:] != shape:
                raise DTRLabError(
                    f"{path}: shape {z.shape} does not match latent_shape {list(shape)} in meta.json"
                )
            label_path = self.root / f"labels_{suffix}"
            y = np.asarray(open_array(label_path))
            if y.shape != (len(z),) or not np.issubdtype(y.dtype, np.integer):
                raise DTRLabError(
                    f"{label_path}: {y.dtype} labels of shape {y.shape} for {len(z)} latents in {path.name}"
                )
            if len(y) and self.num_classes and (y.min() < 0 or y.max() >= self.num_classes):
                raise DTRLabError(
                    f"{label_path}: labels outside 0..{self.num_classes - 1} (num_classes in meta.json)"
                )
            if use_twins:
                twin = self.root / f"latents_flip_{suffix}"
                if open_array(twin).shape != z.shape:
                    raise DTRLabError(
                        f"{twin}: shape {open_array(twin).shape} differs from {path.name}'s {z.shape}"
                    )
                twins.append(twin)
            sizes.append(len(z))
            labels.append(y)
        labels = np.concatenate(labels).astype(np.int64)
        if "num_samples" in self.meta and len(labels) != self.meta["num_samples"]:
            raise DTRLabError(
                f"data.root={self.root}: shards hold {len(labels)} samples, "
                f"meta.json says {self.meta['num_samples']}; "
                "a shard is missing or extra, re-run `python -m dtr_lab.encode`"
            )
        return paths, (twins if use_twins else None), sizes, labels

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        shards, twins, sizes, labels = self.check_shards()
        train_idx, val_idx = split_indices(len(labels), self.val_fraction, self.seed)
        self.train_set = LatentShards(shards, twins, sizes, labels, train_idx)
        self.val_set = LatentShards(shards, None, sizes, labels, val_idx)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, C, h, w) -> images (N, 3, H, W) in [-1, 1]: undo the scaling, run the VAE decoder."""
        if self._vae is None:
            self._vae = load_vae(self.vae_name, "data.vae")
        vae = self._vae.to(z.device)
        scale, shift = self.meta["scaling_factor"], self.meta.get("shift_factor") or 0.0
        dtype = next(vae.parameters()).dtype
        images = [
            vae.decode(chunk.to(dtype) / scale + shift).sample for chunk in z.split(self.decode_batch_size)
        ]
        return torch.cat(images).float().clamp(-1, 1)  # (N, 3, H, W)
