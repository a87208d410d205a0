"""TimestepLoss: the denoising loss as a function of the task t.

Two views: (a) the training loss binned by t, from the per-sample losses the training step already
computed (no extra forward pass), averaged over the last N steps; (b) a probe, the loss of the raw
and EMA networks on a fixed batch with fixed noise at a fixed grid of t: a low-variance curve that
shows which timesteps a routed model improves.
"""

from __future__ import annotations

import lightning as L
import torch
from matplotlib.figure import Figure

from dtr_lab.callbacks.logging import log_dir, log_figure
from dtr_lab.callbacks.prepared import PreparedCallback
from dtr_lab.callbacks.probe import isolated
from dtr_lab.callbacks.record_writer import RecordWriter, write_intervals
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals, TaskIntervals

PROBE_CHUNK = 512  # probe samples per forward pass: bounds its memory to a few training batches


def probe_grid(timesteps: int | list[int], num_timesteps: int) -> torch.Tensor:
    """The probe's timesteps: `timesteps` evenly spaced over 0 … T−1 (ends included), or the given list."""
    if isinstance(timesteps, int):
        if not 1 <= timesteps <= num_timesteps:
            raise DTRLabError(
                f"TimestepLoss.probe_timesteps={timesteps} must be between 1 and T={num_timesteps}"
            )
        return torch.linspace(0, num_timesteps - 1, timesteps, dtype=torch.float64).round().long().unique()
    grid = torch.as_tensor(sorted(set(timesteps)), dtype=torch.long)
    if grid.numel() == 0 or grid[0] < 0 or grid[-1] >= num_timesteps:
        raise DTRLabError(
            f"TimestepLoss.probe_timesteps={timesteps} must be a non-empty list of timesteps in "
            f"[0, {num_timesteps - 1}]"
        )
    return grid


def loss_curve_figure(grid: torch.Tensor, curves: dict[str, torch.Tensor], step: int) -> Figure:
    """Probe loss against t, one line per network, log-scaled (low-t losses are orders smaller)."""
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    for name, loss in curves.items():
        ax.plot(grid.tolist(), loss.tolist(), marker="o", markersize=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("ε-MSE on the probe")
    ax.set_title(f"step {step}", fontsize=9)
    ax.legend(fontsize=8)
    return fig


class TimestepLoss(PreparedCallback):
    """Training loss binned by t every N steps, and a fixed-probe loss-vs-t curve every M steps."""

    def __init__(
        self,
        every_n_steps: int = 25,
        num_bins: int = 20,
        probe_every_n_steps: int = 250,
        probe_timesteps: int | list[int] = 20,
        probe_size: int = 16,
        ema: bool = True,
        seed: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: log the binned training loss, averaged over the last N optimizer steps.
            num_bins: equal-width bins of t for the training loss.
            probe_every_n_steps: probe cadence in optimizer steps (step 0 and a final multiple included).
            probe_timesteps: a number of evenly spaced timesteps (ends included), or a list of them.
            probe_size: probe images; each is noised with its own fixed noise at every grid timestep.
            ema: also probe the EMA network (the one that samples).
            seed: seeds the probe images and noise.
        """
        for option, value in (
            ("every_n_steps", every_n_steps),
            ("probe_every_n_steps", probe_every_n_steps),
            ("probe_size", probe_size),
        ):
            if value < 1:
                raise DTRLabError(f"TimestepLoss.{option}={value} must be at least 1")
        if num_bins < 2:
            raise DTRLabError(f"TimestepLoss.num_bins={num_bins} must be at least 2")
        self.every_n_steps = every_n_steps
        self.num_bins = num_bins
        self.probe_every_n_steps = probe_every_n_steps
        self.probe_timesteps = probe_timesteps
        self.probe_size = probe_size
        self.ema = ema
        self.seed = seed
        self.bins: TaskIntervals | None = None
        self.grid: torch.Tensor | None = None
        self.probe: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None
        self.writer: RecordWriter | None = None
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._last_logged = -1
        self._last_probed = -1

    def build(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """Check the options against T and the data and build the probe."""
        T = pl_module.diffusion.num_timesteps
        if self.num_bins > T:
            raise DTRLabError(f"TimestepLoss.num_bins={self.num_bins} is larger than T={T}; use at most {T}")
        # a finer split than the module's K tasks, asked for explicitly: bins of the loss curve
        self.bins = pl_module.tasks.split(Intervals(num_intervals=self.num_bins))
        self.grid = probe_grid(self.probe_timesteps, T)
        try:
            x0, y = datamodule.probe_batch(self.probe_size, self.seed)  # (n, C, H, W), (n,)
        except DTRLabError as err:
            raise DTRLabError(f"TimestepLoss.{err}") from None
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(self.seed), dtype=x0.dtype)
        self.probe = (x0, y if pl_module.hparams.num_classes > 0 else None, noise)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = log_dir(trainer)
        if trainer.is_global_zero and run_dir is not None:
            self.writer = RecordWriter(run_dir, "loss_by_t")
            write_intervals(run_dir, "loss_by_t", self.bins.edges)

    # ------------------------------------------------------------ training loss
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        t, losses = outputs["t"], outputs["per_sample_loss"].detach().float()  # (N,), (N,)
        if self._sums is None:
            self._sums = torch.zeros(self.num_bins, device=losses.device, dtype=torch.float64)
            self._counts = torch.zeros_like(self._sums)
        k = self.bins.index(t)
        # accumulated on the device; read back only when logged, so no per-step host sync
        self._sums.index_add_(0, k, losses.double())
        self._counts.index_add_(0, k, torch.ones_like(losses, dtype=torch.float64))
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_logged:
            self._last_logged = step
            self.log_binned(trainer, step)

    def log_binned(self, trainer: L.Trainer, step: int) -> None:
        sums, counts = self._sums.to("cpu", copy=True), self._counts.to("cpu", copy=True)
        self._sums.zero_()
        self._counts.zero_()
        seen = counts > 0
        starts = self.bins.edges[:-1][seen]
        means = (sums[seen] / counts[seen]).float()
        metrics = {f"loss_by_t/t{s:04d}": m for s, m in zip(starts.tolist(), means.tolist(), strict=True)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step)
        if self.writer is not None:
            self.writer.vector(step, "train", means, index=starts.tolist())

    # -------------------------------------------------------------------- probe
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self.maybe_probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.maybe_probe(trainer, pl_module)

    def maybe_probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step % self.probe_every_n_steps or step == self._last_probed or not trainer.is_global_zero:
            return
        self.probe_at(trainer, pl_module, step)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """A trained model: the probe curve only (the binned training loss needs training)."""
        self.on_fit_start(trainer, pl_module)
        self.probe_at(trainer, pl_module, step)

    def probe_at(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """The probe's loss at every grid timestep, raw network and EMA, recorded at `step`."""
        self._last_probed = step
        nets = {"probe_raw": pl_module.net}
        if self.ema:
            nets["probe_ema"] = pl_module.ema.module
        with isolated(trainer, pl_module.device, self.seed), torch.no_grad():
            curves = {name: self.probe_losses(pl_module, net) for name, net in nets.items()}
        metrics = {
            f"loss_by_t/{name}/t{t:04d}": v
            for name, loss in curves.items()
            for t, v in zip(self.grid.tolist(), loss.tolist(), strict=True)
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step)
        log_figure(trainer, "loss_by_t/probe", loss_curve_figure(self.grid, curves, step), step)
        if self.writer is not None:
            for name, loss in curves.items():
                self.writer.vector(step, name, loss, index=self.grid.tolist())

    def probe_losses(self, pl_module: L.LightningModule, net: torch.nn.Module) -> torch.Tensor:
        """Mean probe loss at each grid timestep, (G,), on the CPU."""
        x0, y, noise = (None if v is None else v.to(pl_module.device) for v in self.probe)
        n, g = x0.shape[0], self.grid.numel()
        t = self.grid.to(pl_module.device).repeat_interleave(n)  # (G·n,): grid point-major
        losses = []
        for start in range(0, g * n, PROBE_CHUNK):
            rows = torch.arange(start, min(start + PROBE_CHUNK, g * n), device=pl_module.device)
            image = rows % n  # every grid timestep sees the same images with the same noise
            yy = None if y is None else y[image]
            losses.append(pl_module.per_sample_loss(x0[image], t[rows], noise[image], yy, net=net))
        return torch.cat(losses).view(g, n).mean(dim=1).cpu()  # (G,)
