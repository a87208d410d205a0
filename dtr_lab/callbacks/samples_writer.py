"""SamplesWriter: `predict`'s samples as an .npz (uint8 NHWC under arr_0, the layout FID evaluators
such as ADM's evaluator.py read) plus their labels, and a PNG grid."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from dtr_lab.callbacks.logging import log_dir, save_png
from dtr_lab.callbacks.sample_grid import image_grid


class SamplesWriter(BasePredictionWriter):
    """Writes OUT/samples.npz (arr_0: (N, H, W, C) uint8, labels: (N,)) and OUT/samples.png in `predict`."""

    def __init__(self, output_dir: str | None = None, grid_size: int = 100, nrow: int = 10) -> None:
        """
        Args:
            output_dir: where to write; default the run directory of this `predict` call.
            grid_size: samples shown in the PNG grid (the first ones).
            nrow: images per grid row.
        """
        super().__init__(write_interval="epoch")
        self.output_dir, self.grid_size, self.nrow = output_dir, grid_size, nrow
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        out = Path(self.output_dir or log_dir(trainer) or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        images = torch.cat([p["images"] for p in predictions]).numpy()  # (N, H, W, C) uint8
        labels = torch.cat([p["labels"] for p in predictions]).numpy()
        # under DDP every rank holds its own share of the samples
        stem = "samples" if trainer.world_size == 1 else f"samples_rank{trainer.global_rank}"
        self.path = out / f"{stem}.npz"
        np.savez(self.path, arr_0=images, labels=labels)
        grid = torch.from_numpy(images[: self.grid_size]).permute(0, 3, 1, 2)  # (n, C, H, W) uint8
        grid = grid.float() / 127.5 - 1
        save_png(image_grid(grid, self.nrow), out / f"{stem}.png")
        print(f"dtr_lab: wrote {len(images)} samples to {self.path}")
