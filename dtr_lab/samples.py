"""Labelled EMA samples as images, the one way every consumer draws them (predict, SampleQuality,
SampleGrid): labels cycling over the classes, x_T and the sampler's noise from one seeded generator
per batch, latents decoded by the data module; and the module's sampling (`Sampling`: sample, predict)."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from dtr_lab.diffusion import guided, sample
from dtr_lab.diffusion.samplers import check_sample_steps
from dtr_lab.metrics.features import to_uint8
from dtr_lab.seeds import derive_seed


def balanced_labels(n: int, num_classes: int) -> torch.Tensor | None:
    """Labels cycling over the classes, so every class gets n/num_classes samples; None if unconditional."""
    return torch.arange(n) % num_classes if num_classes > 0 else None


@torch.no_grad()
def generate(
    pl_module: L.LightningModule,
    labels: torch.Tensor | None,
    num_samples: int,
    seed: int,
    batch_size: int,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    **sample_kwargs,
) -> torch.Tensor:
    """`num_samples` EMA samples in [-1, 1], decoded to images by ``decode`` (the data module's), (N, C, H, W)
    on the CPU.

    Batch b draws x_T and then the sampler's noise from one generator seeded seed + b, so a set of
    samples depends only on the seed and the batch size, never on the training RNG.
    """
    hp = pl_module.hparams
    device = pl_module.device
    out = []
    for b, start in enumerate(range(0, num_samples, batch_size)):
        n = min(batch_size, num_samples - start)
        gen = torch.Generator(device=device).manual_seed(seed + b)
        noise = torch.randn(n, hp.in_channels, hp.image_size, hp.image_size, generator=gen, device=device)
        y = None if labels is None else labels[start : start + n].to(device)
        x = pl_module.sample(noise, y, generator=gen, **sample_kwargs)  # (n, C, H, W)
        out.append((x if decode is None else decode(x)).cpu())
    return torch.cat(out)


class Sampling:
    """A DiffusionModule's sampling: `sample` from given x_T, and `predict` (num_samples labelled EMA
    samples as uint8 images). Reads the module's hparams, diffusion, net and ema."""

    @torch.no_grad()
    def sample(
        self,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        use_ema: bool = True,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Samples from x_T = noise (N, C, H, W), in [-1, 1] when clip_x0; options default to the module's."""
        net = self.ema.module if use_ema else self.net
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        eps_fn = guided(net, y, scale, self.hparams.num_classes, self.guidance_channels)
        eta = 1.0 if (sampler or self.hparams.sampler) == "ddpm" else 0.0
        steps = self.hparams.sample_steps if steps is None else steps
        check_sample_steps(steps, self.diffusion.num_timesteps, "steps")
        x = sample(
            eps_fn, self.diffusion, noise, steps, eta, clip_x0=self.hparams.clip_x0, generator=generator,
            fixed_variance=self.hparams.fixed_variance, respacing=self.hparams.respacing,
        )
        return x.clamp(-1, 1) if self.hparams.clip_x0 else x

    def predict_dataloader(self) -> DataLoader:
        """`num_samples` (index, label) pairs for `predict`, labels cycling over the classes."""
        index = torch.arange(self.hparams.num_samples)
        labels = index % max(self.hparams.num_classes, 1)
        batch_size = getattr(self.trainer.datamodule, "batch_size", 256) if self._trainer else 256
        return DataLoader(TensorDataset(index, labels), batch_size=batch_size)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict:
        """EMA samples for a batch of (index, label): uint8 images (N, H, W, C) and their labels (N,)."""
        index, y = batch
        hp = self.hparams
        datamodule = self.trainer.datamodule if self._trainer else None
        # seeded by the batch's first sample index, which differs across DDP ranks (batch_idx does not)
        images = generate(
            self, y if hp.num_classes > 0 else None, len(y), derive_seed(hp.seed, int(index[0])), len(y),
            None if datamodule is None else datamodule.decode,
        )  # (N, C, H, W)
        return {"images": to_uint8(images).permute(0, 2, 3, 1), "labels": y.cpu()}
