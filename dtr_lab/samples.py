"""Labelled EMA samples as images, the one way every consumer draws them (predict, SampleQuality,
SampleGrid): labels cycling over the classes, x_T and the sampler's noise from one seeded generator
per batch, latents decoded by the data module; and the module's sampling (`Sampling`: sample, predict).

What they read of the module is declared here, as `Sampled` and its `SamplingOptions`, and nothing else:
DiffusionModule provides it (tests/test_samples.py checks that it does)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dtr_lab.diffusion import GaussianDiffusion, guided, sample
from dtr_lab.diffusion.samplers import check_sample_steps
from dtr_lab.metrics.features import to_uint8
from dtr_lab.models import Denoiser
from dtr_lab.optim.ema import EMA
from dtr_lab.seeds import derive_seed


class SamplingOptions(Protocol):
    """The module's options that sampling reads (DiffusionModule's hparams, as its config names them)."""

    sampler: str  # "ddpm" (ancestral) or "ddim" (deterministic)
    sample_steps: int
    respacing: str
    fixed_variance: str
    guidance_scale: float
    clip_x0: bool
    num_classes: int  # 0: unconditional
    in_channels: int
    image_size: int
    num_samples: int  # drawn by predict
    seed: int


class Sampled(Protocol):
    """What sampling reads of its module, and all it reads: its networks, forward process and options, and
    Lightning's device and trainer (the data module's batch size and decoder)."""

    hparams: SamplingOptions
    net: Denoiser  # the trained network
    ema: EMA  # its EMA copy (ema.module), which samples by default
    diffusion: GaussianDiffusion
    device: torch.device
    trainer: L.Trainer
    _trainer: L.Trainer | None  # Lightning's: None while no trainer is attached
    predict_done: frozenset[int]  # first indices of the predict batches already on disk (Sampling's)
    guidance_channels: str  # the guidance rule in force: the checkpoint's, else the config's (first3 | all)

    def predict_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    def sample(self, noise: torch.Tensor, y: torch.Tensor | None = None, **options) -> torch.Tensor: ...


def balanced_labels(n: int, num_classes: int) -> torch.Tensor | None:
    """Labels cycling over the classes, so every class gets n/num_classes samples; None if unconditional."""
    return torch.arange(n) % num_classes if num_classes > 0 else None


@torch.no_grad()
def generate(
    pl_module: Sampled,
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


class DealtBatches(DistributedSampler):
    """Items rank, rank + world, … of a dataset, none repeated. Lightning leaves a DistributedSampler in
    place; its own for predict (UnrepeatedDistributedSampler) refuses a rank left without items, as a
    resumed run with fewer batches to draw than ranks has."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class Sampling:
    """A DiffusionModule's sampling: `sample` from given x_T, and `predict` (num_samples labelled EMA
    samples as uint8 images). The module it is mixed into is `Sampled`."""

    @torch.no_grad()
    def sample(
        self: Sampled,
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

    # first sample indices of `predict` batches already on disk, set by a writer that stores per batch
    # (SamplesWriter) so a resumed predict draws only the rest
    predict_done: frozenset[int] = frozenset()

    def predict_batches(self: Sampled) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`predict`'s batches of (index, label): runs of `batch_size` consecutive sample indices out of
        `num_samples`, labels cycling over the classes."""
        index = torch.arange(self.hparams.num_samples)
        labels = index % max(self.hparams.num_classes, 1)
        batch_size = getattr(self.trainer.datamodule, "batch_size", 256) if self._trainer else 256
        return list(zip(index.split(batch_size), labels.split(batch_size), strict=True))

    def predict_dataloader(self: Sampled) -> DataLoader:
        """The batches not yet on disk, whole (one item each), dealt to the ranks in turn: a batch holds the
        same samples (seeded by its first index) for any number of processes."""
        todo = [b for b in self.predict_batches() if int(b[0][0]) not in self.predict_done]
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        return DataLoader(todo, batch_size=None, sampler=DealtBatches(todo, num_replicas=world, rank=rank))

    def predict_step(self: Sampled, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict:
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
