"""DiffusionModule: trains a (routed or unrouted) denoiser; the analyses read what it exposes.

The module orchestrates only: the network is a plain nn.Module built from the config, the
forward process lives in dtr_lab.diffusion. Its randomness (timesteps, noise, label dropout)
comes from its own generator, saved in checkpoints, so a resumed run continues the same
loss curve and analysis callbacks never disturb it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from dtr_lab.diffusion import GaussianDiffusion, guided, per_sample_mse, sample
from dtr_lab.errors import DTRLabError
from dtr_lab.routing import NoRouting, RoutingStrategy

# (input_size, in_channels, num_classes, num_timesteps, routing) -> network
NetFactory = Callable[[int, int, int, int, RoutingStrategy], nn.Module]
OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
SAMPLERS = ("ddpm", "ddim")


def ema_multi_avg_fn(decay: float) -> Callable:
    """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)), so early averages aren't stale."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


class DiffusionModule(L.LightningModule):
    """ε-prediction diffusion training of a routed or unrouted network, with EMA weights."""

    def __init__(
        self,
        net: NetFactory,
        routing: RoutingStrategy | None = None,
        num_timesteps: int = 1000,
        schedule: str = "linear",
        optimizer: OptimizerFactory | None = None,
        ema_decay: float = 0.9999,
        class_dropout_prob: float = 0.1,
        sampler: str = "ddpm",
        sample_steps: int = 250,
        guidance_scale: float = 1.0,
        seed: int = 0,
        image_size: int = 8,
        in_channels: int = 1,
        num_classes: int = 10,
    ) -> None:
        """
        Args:
            net: the denoiser's class and options (e.g. dtr_lab.models.DiT with size: DiT-S/2);
                image size, channels, classes, T and routing are filled in by the module.
            routing: NoRouting (default), RandomRouting or DTRRouting.
            num_timesteps: T, the number of denoising tasks.
            schedule: β-schedule, 'linear' or 'cosine'.
            optimizer: optimizer class and options; default AdamW(lr=1e-4, weight_decay=0) as in DTR.
            ema_decay: EMA decay of the sampling weights (0.9999 in the papers), with warm-up.
            class_dropout_prob: share of training labels replaced by the null label (for guidance).
            sampler: 'ddpm' (ancestral) or 'ddim' (deterministic) for samples made by the module.
            sample_steps: sampling steps (respaced from T; 250 in DiT/DTR).
            guidance_scale: classifier-free guidance scale (1 = none; DTR reports 1.5).
            seed: seeds the module's own timestep/noise/label-dropout generator.
            image_size: set from data.image_size.
            in_channels: set from data.in_channels.
            num_classes: set from data.num_classes (0 for unconditional).
        """
        super().__init__()
        if sampler not in SAMPLERS:
            raise DTRLabError(f"model.sampler={sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
        if not 0.0 <= ema_decay < 1.0:
            raise DTRLabError(f"model.ema_decay={ema_decay} must be in [0, 1); the papers use 0.9999")
        if not 0.0 <= class_dropout_prob < 1.0:
            raise DTRLabError(f"model.class_dropout_prob={class_dropout_prob} must be in [0, 1)")
        self.save_hyperparameters(ignore=["net", "routing", "optimizer"])
        self.routing = routing or NoRouting()
        self.diffusion = GaussianDiffusion(num_timesteps, schedule)
        self.net = net(image_size, in_channels, num_classes, num_timesteps, self.routing)
        self.ema = AveragedModel(self.net, multi_avg_fn=ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.rng: torch.Generator | None = None
        self._rng_state: torch.Tensor | None = None

    # ----------------------------------------------------------------- losses
    def generator(self) -> torch.Generator:
        """The module's own RNG stream (per rank), created on the training device."""
        if self.rng is None or self.rng.device != self.device:
            self.rng = torch.Generator(device=self.device).manual_seed(self.hparams.seed + self.global_rank)
            if self._rng_state is not None:
                self.rng.set_state(self._rng_state)
                self._rng_state = None
        return self.rng

    def per_sample_loss(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """Unweighted ‖ε − ε_θ(x_t, t, y)‖² per sample, (N,); net defaults to the trained network."""
        net = self.net if net is None else net
        x_t = self.diffusion.q_sample(x0, t, noise)
        return per_sample_mse(net(x_t, t, y), noise)

    def draw(self, x0: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Timesteps, noise and label dropout for one training batch, from the module's generator."""
        gen = self.generator()
        t = self.diffusion.sample_timesteps(x0.shape[0], gen, self.device)
        noise = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
        if y is not None and self.hparams.num_classes > 0 and self.hparams.class_dropout_prob > 0:
            drop = torch.rand(y.shape, generator=gen, device=self.device) < self.hparams.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.hparams.num_classes), y)
        return t, noise, y

    # --------------------------------------------------------------- training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        x0, y = batch
        t, noise, y = self.draw(x0, y)
        losses = self.per_sample_loss(x0, t, noise, y)  # (N,)
        loss = losses.mean()
        self.log("train/loss", loss, prog_bar=True)
        # callbacks (TimestepLoss) bin these by t without another forward pass
        return {"loss": loss, "t": t, "per_sample_loss": losses.detach()}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.net)  # once per optimizer step, also under accumulation

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        return self.optimizer_factory(params)

    # ------------------------------------------------------------- validation
    def fixed_draw(self, x0: torch.Tensor, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps and noise that depend only on (seed, batch index): comparable across evaluations."""
        gen = torch.Generator().manual_seed(10_000 + self.hparams.seed * 1_000 + batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
        return t.to(self.device), noise.to(self.device)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x0, y = batch
        t, noise = self.fixed_draw(x0, batch_idx)
        self.log("val/loss", self.per_sample_loss(x0, t, noise, y).mean(), sync_dist=True)
        self.log("val/loss_ema", self.per_sample_loss(x0, t, noise, y, net=self.ema.module).mean(), sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x0, y = batch
        t, noise = self.fixed_draw(x0, batch_idx)
        self.log("test/loss_ema", self.per_sample_loss(x0, t, noise, y, net=self.ema.module).mean(), sync_dist=True)

    # --------------------------------------------------------------- sampling
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
        """Images in [-1, 1] from x_T = noise (N, C, H, W); options default to the module's."""
        net = self.ema.module if use_ema else self.net
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        eps_fn = guided(net, y, scale, self.hparams.num_classes)
        eta = 1.0 if (sampler or self.hparams.sampler) == "ddpm" else 0.0
        steps = steps or self.hparams.sample_steps
        x = sample(eps_fn, self.diffusion, noise, min(steps, self.diffusion.num_timesteps), eta, generator=generator)
        return x.clamp(-1, 1)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.rng is not None:
            checkpoint["dtr_lab_rng_state"] = self.rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_shapes(checkpoint.get("state_dict", {}))
        self._rng_state = checkpoint.get("dtr_lab_rng_state")
        self.rng = None

    def check_checkpoint_shapes(self, state: dict[str, torch.Tensor]) -> None:
        """Fail with one line when a checkpoint was saved from a differently shaped model."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
        if mismatched:
            k = mismatched[0]
            raise DTRLabError(
                f"checkpoint does not match the configured model: {k} has shape {tuple(state[k].shape)} "
                f"in the checkpoint but {tuple(own[k].shape)} here ({len(mismatched)} tensors differ); "
                "use the config the checkpoint was trained with (its run directory's config.yaml)"
            )
        if missing:
            raise DTRLabError(
                f"checkpoint does not match the configured model: it lacks {missing[0]} "
                f"({len(missing)} tensors missing); use the config the checkpoint was trained with"
            )
