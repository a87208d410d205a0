"""Labelled EMA samples as images, the one way every consumer draws them (predict, SampleQuality,
SampleGrid): labels cycling over the classes, x_T and the sampler's noise from one seeded generator
per batch, latents decoded by the data module."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch


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
