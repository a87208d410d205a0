"""SampleGrid: a grid of EMA samples from fixed noise and labels, every N steps."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from dtr_lab.callbacks.logging import log_dir, log_image, save_png
from dtr_lab.errors import DTRLabError
from dtr_lab.samples import balanced_labels, generate


def image_grid(images: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one (C, rows·(H+pad)+pad, nrow·(W+pad)+pad) image in [0, 1]."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    canvas = torch.ones(c, rows * (h + pad) + pad, nrow * (w + pad) + pad)
    for k, img in enumerate(images.float().cpu()):
        r, col = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = (img + 1) / 2
    return canvas.clamp(0, 1)


class SampleGrid(L.Callback):
    """Logs `num_samples` EMA samples (labels cycling over the classes) as an image grid."""

    def __init__(
        self, every_n_steps: int = 500, num_samples: int = 40, nrow: int = 10, seed: int = 1234
    ) -> None:
        """
        Args:
            every_n_steps: sampling cadence in optimizer steps (and once at the end of fit).
            num_samples: images in the grid; with classes, row r holds one sample of each class.
            nrow: images per row.
            seed: seeds the fixed noise, so grids over training are comparable.
        """
        if every_n_steps < 0:
            raise DTRLabError(
                f"SampleGrid.every_n_steps={every_n_steps} must be ≥ 0 (0: only at the end of fit)"
            )
        for name, value in (("num_samples", num_samples), ("nrow", nrow)):
            if value < 1:
                raise DTRLabError(f"SampleGrid.{name}={value} must be at least 1")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.nrow = nrow
        self.seed = seed
        self._last_step = -1
        self._warned = False

    @rank_zero_only
    def log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        labels = balanced_labels(self.num_samples, pl_module.hparams.num_classes)
        decode = partial(self.to_images, trainer)
        images = generate(pl_module, labels, self.num_samples, self.seed, self.num_samples, decode)
        grid = image_grid(images, self.nrow)
        log_image(trainer, "samples/ema", grid, trainer.global_step)
        out = log_dir(trainer)
        if out is not None:
            save_png(grid, Path(out) / "samples" / f"step{trainer.global_step:07d}.png")

    def to_images(self, trainer: L.Trainer, samples: torch.Tensor) -> torch.Tensor:
        """Samples decoded by the datamodule; latents without their VAE: the first 3 channels."""
        try:
            return trainer.datamodule.decode(samples)
        except DTRLabError as err:  # a grid is a view: training goes on without the VAE
            if not self._warned:
                rank_zero_warn(f"SampleGrid shows raw latent channels: {err}")
                self._warned = True
            return samples[:, :3].clamp(-1, 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            self.every_n_steps > 0
            and trainer.global_step % self.every_n_steps == 0
            and trainer.global_step > 0
        ):
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.log_grid(trainer, pl_module)
