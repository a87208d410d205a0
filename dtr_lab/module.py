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

from dtr_lab.diffusion import GaussianDiffusion, per_sample_mse
from dtr_lab.diffusion.learned_variance import split_output, vb_term
from dtr_lab.diffusion.weighting import LossWeighting, Uniform
from dtr_lab.model_checks import check_checkpoint, check_options, identity
from dtr_lab.models.denoiser import check_denoiser
from dtr_lab.models.factory import NetFactory
from dtr_lab.mtl.gradients import flat_grad, write_grad
from dtr_lab.mtl.intervals import DEFAULT_INTERVALS, Intervals
from dtr_lab.mtl.method import MTLMethod, TaskBatch
from dtr_lab.mtl.tasks import Tasks
from dtr_lab.optim.ema import EMA
from dtr_lab.optim.lr_schedule import LRScheduleFactory, hold_unscheduled
from dtr_lab.routing import NoRouting, Routing
from dtr_lab.samples import Sampling
from dtr_lab.seeds import derive_seed

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]

class DiffusionModule(Sampling, L.LightningModule):
    """ε-prediction diffusion training of a routed or unrouted network, with EMA weights."""

    def __init__(
        self,
        net: NetFactory,
        routing: Routing | None = None,
        num_timesteps: int = 1000,
        schedule: str = "linear",
        weighting: LossWeighting | None = None,
        intervals: Intervals | None = None,
        mtl: MTLMethod | None = None,
        optimizer: OptimizerFactory | None = None,
        lr_schedule: LRScheduleFactory | None = None,
        gradient_clip_val: float | None = None,
        compile: bool = False,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        class_dropout_prob: float = 0.1,
        sampler: str = "ddpm",
        sample_steps: int = 250,
        respacing: str = "even",
        fixed_variance: str = "large",
        guidance_scale: float = 1.0,
        guidance_channels: str | None = None,
        clip_x0: bool = True,
        num_samples: int = 1000,
        seed: int = 0,
        image_size: int = 8,
        in_channels: int = 1,
        num_classes: int = 10,
        allow_checkpoint_mismatch: list[str] | None = None,
    ) -> None:
        """
        Args:
            net: the denoiser's class and options (e.g. dtr_lab.models.DiT with size: DiT-S/2);
                image size, channels, classes, T and routing are filled in by the module.
            routing: NoRouting (default), RandomRouting, DTRRouting, AffinityRouting or SwitchRouting
                (learned: its own weighted loss term, e.g. Switch's diffusion prior, joins the objective).
            num_timesteps: T, the number of denoising tasks.
            schedule: β-schedule, 'linear' or 'cosine'.
            weighting: per-sample loss weight from SNR(t): Uniform (default), MinSNR or P2.
            intervals: the K timestep intervals, the tasks of the MTL method and of the analysis
                callbacks (default 5, uniform in t); may instead be stated as the MTL method's intervals.
            mtl: a method over the K intervals (stratified batches): UncertaintyWeighting (ANT-UW), or a
                gradient method such as PCGrad or NashMTL (manual optimisation).
            optimizer: optimizer class and options; default AdamW(lr=1e-4, weight_decay=0) as in DTR.
            lr_schedule: optimizer -> scheduler, stepped every optimizer step: any torch.optim.lr_scheduler
                class or dtr_lab.optim.lr_schedule.WarmupCosine; none: constant, as in DiT
                and DTR.
            gradient_clip_val: max gradient norm for the gradient methods (which optimise manually;
                otherwise use Lightning's trainer.gradient_clip_val).
            compile: torch.compile the network in place (GPU speed; state_dict keys unchanged).
            ema_decay: EMA decay of the sampling weights (0.9999 in the papers).
            ema_warmup: decay min(ema_decay, (1 + n)/(10 + n)) at update n, after a copy at the first (for
                short runs); false: DiT's and DTR's train.py, a copy at step 0 then plain ema_decay (the
                paper-scale configs'). dtr_lab.optim.ema.
            class_dropout_prob: share of training labels replaced by the null label (for guidance).
            sampler: 'ddpm' (ancestral) or 'ddim' (deterministic) for samples made by the module.
            sample_steps: sampling steps (respaced from T; 250 in DiT/DTR).
            respacing: 'even' (steps spread over [0, T−1], DiT's "250") or 'ddim' (stride T/N from 0,
                DiT/ADM's "ddimN": 25 steps of T = 1000 are 0, 40, …, 960).
            fixed_variance: DDPM step variance of a model without learned σ: 'large' (σ² = β_t, the
                DiT/ADM default) or 'small' (σ² = β̃_t, the posterior variance).
            guidance_scale: classifier-free guidance scale (1 = none; DTR reports 1.5).
            guidance_channels: which output channels guidance mixes: 'all' (every ε channel, as DTR and
                Switch-DiT) or 'first3' (DiT's forward_with_cfg: the first 3); null: a loaded checkpoint's
                rule (an imported DiT file's is first3), else all. Part of the checkpoint's identity.
            clip_x0: clip predicted x̂_0 and samples to [-1, 1] (images); false for VAE latents.
            num_samples: images drawn by `predict` (and scored by `test` with SampleQuality).
            seed: seeds the module's own timestep/noise/label-dropout generator.
            image_size: set from data.image_size.
            in_channels: set from data.in_channels.
            num_classes: set from data.num_classes (0 for unconditional).
            allow_checkpoint_mismatch: identity fields (dtr_lab.model_checks.IDENTITY_FIELDS) in which a
                loaded checkpoint may differ from this config, to fine-tune across them deliberately (e.g.
                [routing]; [pos_embed]: a row-first checkpoint into the column-first embedding, transposed).
        """
        super().__init__()
        check_options(locals())
        stated = getattr(mtl, "intervals", None)
        self.save_hyperparameters(
            ignore=["net", "routing", "optimizer", "lr_schedule", "weighting", "mtl", "intervals"]
        )
        self.routing = routing or NoRouting()
        self.weighting = weighting or Uniform()
        self.diffusion = GaussianDiffusion(num_timesteps, schedule)
        # the run's timestep tasks, read by the MTL method and the analysis callbacks alike
        self.tasks = Tasks(
            self.diffusion.snr(torch.arange(num_timesteps)),
            intervals or stated or DEFAULT_INTERVALS,
            stratified=mtl is not None,
        )
        self.mtl = mtl
        if mtl is not None:
            mtl.bind(self.tasks)
        # the gradient methods combine K per-interval gradients themselves
        self.automatic_optimization = not (mtl is not None and mtl.gradient_method)
        self.net = net(image_size, in_channels, num_classes, num_timesteps, self.routing)
        check_denoiser(self.net, "model.net")
        self.net.bind(self.tasks)
        if self.net.stratified:  # a network split over the run's intervals (IntervalExperts): B/K each
            self.tasks.stratified = True
        if compile:
            self.net.compile()
        if not compile:  # one image through forward: the summary's FLOPs (a compiled net would compile twice)
            x, t = torch.zeros(1, in_channels, image_size, image_size), torch.zeros(1, dtype=torch.long)
            self.example_input_array = (x, t, t if num_classes else None)
        self.ema = EMA(self.net, ema_decay, ema_warmup)
        self.ema.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_schedule
        self.rng: torch.Generator | None = None
        self._rng_state: torch.Tensor | None = None
        self.checkpoint_step = 0  # the loaded checkpoint's step: where analyses of a loaded model record
        # the guidance rule samples use; a loaded checkpoint's when the config states none (model_checks)
        self.guidance_channels = guidance_channels or "all"

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's output at noisy images x_t (N, C, H, W) and timesteps t (N,)."""
        return self.net(x_t, t, y)

    # ----------------------------------------------------------------- losses
    def generator(self) -> torch.Generator:
        """The module's own RNG stream (per rank), created on the training device."""
        if self.rng is None or self.rng.device != self.device:
            self.rng = torch.Generator(device=self.device).manual_seed(self.hparams.seed + self.global_rank)
            if self._rng_state is not None:
                self.rng.set_state(self._rng_state)
                self._rng_state = None
        return self.rng

    def loss_terms(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None, net: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample ε-MSE (N,) and, for a learned-σ network, the L_vb term (N,) with the mean stopped."""
        x_t = self.diffusion.q_sample(x0, t, noise)
        eps, v = split_output(net(x_t, t, y), x0.shape[1])
        mse = per_sample_mse(eps, noise)
        return mse, None if v is None else vb_term(self.diffusion, x0, x_t, t, eps, v)

    def per_sample_loss(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """Unweighted ‖ε − ε_θ(x_t, t, y)‖² per sample, (N,); net defaults to the trained network."""
        return self.loss_terms(x0, t, noise, y, self.net if net is None else net)[0]

    def training_loss(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective per sample, w(SNR_t)·MSE (+ L_vb), and the raw MSE for the analyses; (N,) each."""
        mse, vb = self.loss_terms(x0, t, noise, y, self.net)
        loss = self.weighting(self.diffusion.snr(t)) * mse
        return (loss if vb is None else loss + vb), mse

    def draw(
        self, x0: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Timesteps, noise and label dropout for one training batch, from the module's generator."""
        gen = self.generator()
        t = self.tasks.training_timesteps(x0.shape[0], gen, self.device)  # stratified: grouped by interval
        noise = torch.randn(x0.shape, generator=gen, device=self.device, dtype=x0.dtype)
        if y is not None and self.hparams.num_classes > 0 and self.hparams.class_dropout_prob > 0:
            drop = torch.rand(y.shape, generator=gen, device=self.device) < self.hparams.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.hparams.num_classes), y)
        return t, noise, y

    # --------------------------------------------------------------- training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        # the hot path: nothing here reads a device tensor on the host (tests/test_compile.py counts)
        x0, y = batch
        t, noise, y = self.draw(x0, y)
        self.tasks.release()  # the analyses' gradients of this step are used up: free them before ours
        prior = self.routing_prior(t)
        if self.mtl is None:
            losses, mse = self.training_loss(x0, t, noise, y)  # (N,) each
            loss = losses.mean() if prior is None else losses.mean() + prior
        else:
            loss, mse = self.mtl_step(x0, t, noise, y, prior, batch_idx)
        self.log("train/loss", mse.mean(), prog_bar=True)
        # callbacks (TimestepLoss) bin these by t without another forward pass
        return {"loss": loss, "t": t, "per_sample_loss": mse.detach()}

    def mtl_step(
        self,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None,
        prior: torch.Tensor | None,
        batch_idx: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The MTL method's step over the K intervals: (the loss to back-propagate, the per-sample MSE (N,)).
        A gradient method's combined gradient (plus the prior's own) is applied here, by manual optimisation,
        and its loss is the mean MSE, detached (the value Lightning reports)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        tasks = TaskBatch(
            self.tasks, self.training_loss, (x0, t, noise, y), params, self.global_step, self.hparams.seed
        )
        update = self.mtl(tasks)
        self.tasks.release()
        self.log_dict(update.metrics)
        if update.grad is None:
            return (update.loss if prior is None else update.loss + prior), tasks.reported
        grad = update.grad if prior is None else update.grad + flat_grad(prior, params)
        self.apply_update(grad, batch_idx)
        return tasks.reported.mean().detach(), tasks.reported

    def routing_prior(self, t: torch.Tensor) -> torch.Tensor | None:
        """A learned routing's own weighted loss term for this batch's timesteps (Switch's diffusion prior:
        w_JSD × JSD), its value logged as train/<name>; None for fixed routing. Its random tie-breaking is
        seeded by (seed, step): resumable, and the module's generator (the paired runs' timesteps and
        noise) is untouched."""
        generator = torch.Generator().manual_seed(derive_seed(self.hparams.seed, self.global_step))
        term = self.net.routing_loss(t, generator)
        if term is None:
            return None
        self.log(f"train/{term.name}", term.value.detach())
        return term.weight * term.value

    def apply_update(self, grad: torch.Tensor, batch_idx: int) -> None:
        """A gradient method's flat update -> one optimizer step (manual optimisation)."""
        opt = self.optimizers()
        params = [p for p in self.net.parameters() if p.requires_grad]
        if self.trainer.world_size > 1:  # autograd.grad bypasses DDP's gradient all-reduce
            grad = self.trainer.strategy.reduce(grad, reduce_op="mean")
        write_grad(grad, params)
        if self.hparams.gradient_clip_val:
            self.clip_gradients(
                opt, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm"
            )
        self.optimizer_step(self.current_epoch, batch_idx, opt)  # the step and the EMA update, as automatic
        opt.zero_grad(set_to_none=True)
        if self.lr_schedule is not None:
            self.lr_scheduler_step(self.lr_schedulers(), None)

    def on_train_end(self) -> None:
        self.tasks.release()  # the analyses' gradients of the last step

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.ema.update_parameters(self.net)  # once per optimizer step, also under accumulation

    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.net.parameters() if p.requires_grad]}]
        if self.mtl is not None:
            groups += self.mtl.param_groups()  # e.g. ANT-UW's s_k, with their own learning rate
        if self.optimizer_factory is None:
            return torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.0)
        return self.optimizer_factory(groups)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = self.build_optimizer()
        if self.lr_schedule is None:
            return optimizer
        scheduler = self.lr_schedule(optimizer)
        hold_unscheduled(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: torch.optim.lr_scheduler.LRScheduler, metric: Any) -> None:
        scheduler.step()
        hold_unscheduled(scheduler.optimizer)

    def check_batch_size(self, batch_size: int) -> None:
        """Stratified sampling needs B divisible by K; checked before anything is written."""
        self.tasks.check_batch_size(batch_size)

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
        self.log(
            "val/loss_ema", self.per_sample_loss(x0, t, noise, y, net=self.ema.module).mean(), sync_dist=True
        )

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x0, y = batch
        t, noise = self.fixed_draw(x0, batch_idx)
        self.log(
            "test/loss_ema", self.per_sample_loss(x0, t, noise, y, net=self.ema.module).mean(), sync_dist=True
        )

    # ------------------------------------------------------------ checkpoints
    def identity(self) -> dict[str, Any]:
        """What this model is trained as (dtr_lab.model_checks.identity)."""
        return identity(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dtr_lab_identity"] = self.identity()
        if self.rng is not None:
            checkpoint["dtr_lab_rng_state"] = self.rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # also where the CLI checked --ckpt_path before the trainer started: checking twice costs a
        # comparison of names and shapes, and no state says whether a check was done
        check_checkpoint(self, checkpoint)
        self._rng_state = checkpoint.get("dtr_lab_rng_state")
        self.rng = None
        self.checkpoint_step = checkpoint.get("global_step", 0)
