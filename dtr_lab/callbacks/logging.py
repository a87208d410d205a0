"""Where callbacks write: the run directory, PNG files and matplotlib figures for TensorBoard."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch


def log_dir(trainer: L.Trainer) -> str | None:
    """The run directory (the logger's versioned folder), or None without a logger."""
    if trainer.logger is None:
        return None
    return trainer.logger.log_dir or trainer.default_root_dir


def save_png(image: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Save a (C, H, W) image in [0, 1] as a PNG, nearest-upscaled so 8×8 digits are visible."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)
