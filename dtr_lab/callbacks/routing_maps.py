"""RoutingMaps: the T×C mask table of every routed width, as an image, and the channel overlap
(IoU) between task intervals, at fit start: the routing's designed affinity, to set beside the
measured one. Where blocks of one width have tables of their own (R-TR), the image is the first
block's table, a second image the share of those blocks with each channel active, and the IoU the
mean over the blocks.

Learned routing (Switch) is drawn the same way from the gates: rows t, columns the depth × E expert
slots (block-major), white = one of the block's k chosen experts at t, and the IoU of those chosen
slots between intervals; logged at fit start, every ``every_n_steps`` and at fit end, as it changes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from dtr_lab.callbacks.heatmap import heatmap_figure, log_figure
from dtr_lab.callbacks.logging import log_dir, save_png
from dtr_lab.callbacks.prepared import PreparedCallback
from dtr_lab.callbacks.records import RecordWriter, write_intervals
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals, TaskIntervals
from dtr_lab.routing import Router
from dtr_lab.routing_switch import SwitchRouter

SLOT_PIXELS = 8  # an expert slot's width in the saved image (a mask table's channel is one pixel)


def interval_iou(table: torch.Tensor, intervals: TaskIntervals) -> torch.Tensor:
    """Mean channel IoU |m_t ∧ m_s| / |m_t ∨ m_s| over all pairs t ∈ interval i, s ∈ interval j, (K, K)."""
    m = table.float()  # (T, C)
    inter = m @ m.T  # (T, T)
    active = m.sum(dim=1)  # (T,)
    iou = inter / (active[:, None] + active[None, :] - inter).clamp(min=1)  # (T, T)
    member = F.one_hot(intervals.index(torch.arange(m.shape[0])), intervals.num_intervals).float()  # (T, K)
    size = member.sum(dim=0)  # (K,)
    return (member.T @ iou @ member) / (size[:, None] * size[None, :])  # (K, K)


def learned(net: torch.nn.Module) -> bool:
    """Whether the network routes by a learned router of its own (Switch); a network without one (e.g.
    IntervalExperts) draws the fixed tables of the routers inside it."""
    return isinstance(getattr(net, "router", None), SwitchRouter)


class RoutingMaps(PreparedCallback):
    """Logs each mask table (rows: timesteps t, columns: channels; white = active) and the K×K IoU."""

    def __init__(self, intervals: Intervals | None = None, every_n_steps: int = 200) -> None:
        """
        Args:
            intervals: the K task intervals for the IoU matrix; default the module's (model.intervals).
            every_n_steps: how often a learned routing's maps are drawn again (fixed tables: once).
        """
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise DTRLabError(f"RoutingMaps.every_n_steps={every_n_steps!r} must be a positive integer")
        self.intervals = intervals
        self.every_n_steps = every_n_steps
        self.task_intervals: TaskIntervals | None = None
        self._drawn_at: int | None = None  # the step a learned routing was last drawn at

    def build(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None = None) -> None:
        """Check the intervals against T."""
        try:
            self.task_intervals = pl_module.tasks.split(self.intervals)
        except DTRLabError as err:
            raise DTRLabError(f"RoutingMaps.{err}") from None

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """A trained model's maps: fixed tables as at fit start, a learned routing's gates at `step`."""
        if learned(pl_module.net):
            self.log_learned(trainer, pl_module, step)
        else:
            self.on_fit_start(trainer, pl_module)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if learned(pl_module.net):
            self.log_learned(trainer, pl_module, trainer.global_step)
            return
        by_width: dict[int, list[torch.Tensor]] = {}
        for router in pl_module.net.modules():
            if isinstance(router, Router):
                for width, tables in router.tables().items():
                    by_width.setdefault(width, []).extend(t.detach().cpu() for t in tables)
        out = log_dir(trainer)
        for width, tables in by_width.items():
            images = {f"masks_table_{width}": tables[0].float()[None]}  # (1, T, C): the first block's
            if len(tables) > 1:  # per-block tables: how many of the blocks route each channel at t
                images[f"mean_masks_table_{width}"] = torch.stack(tables).float().mean(dim=0)[None]
            for name, image in images.items():
                for logger in trainer.loggers:
                    if hasattr(logger.experiment, "add_image"):
                        logger.experiment.add_image(f"routing/{name}", image, 0)
                if out is not None:
                    save_png(image, Path(out) / "routing" / f"{name}.png", scale=1)
        if not by_width:
            return
        ious = {
            f"table_{width}": torch.stack([interval_iou(t, self.task_intervals) for t in tables]).mean(dim=0)
            for width, tables in by_width.items()
        }  # per width, the mean over its blocks' tables
        labels = self.task_intervals.labels()
        log_figure(trainer, "routing/iou", heatmap_figure(ious, labels, 0.0, 1.0), 0)
        if out is not None:
            writer = RecordWriter(out, "routing")
            write_intervals(out, "routing", self.task_intervals.edges)
            # one width (DiT): its IoU; several (U-Net): their mean, and each as iou/<table>
            writer.matrix(0, "iou", torch.stack(list(ious.values())).mean(dim=0))
            if len(ious) > 1:
                for name, iou in ious.items():
                    writer.matrix(0, f"iou/{name}", iou)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and learned(pl_module.net) and step % self.every_n_steps == 0:
            self.log_learned(trainer, pl_module, step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and learned(pl_module.net):
            self.log_learned(trainer, pl_module, trainer.global_step)

    def log_learned(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """The gates' choices (T, depth·E) and probabilities as images, and the IoU of the chosen slots,
        recorded at `step`."""
        if step == self._drawn_at:  # fit end right after a scheduled drawing
            return
        first, self._drawn_at = self._drawn_at is None, step
        probs, chosen = pl_module.net.router.choices(pl_module.net.t_embedder)  # (T, depth, E) each
        images = {"masks_experts": chosen.flatten(1).cpu(), "expert_probs": probs.flatten(1).cpu()}
        out = log_dir(trainer)
        for name, table in images.items():
            image = table.repeat_interleave(SLOT_PIXELS, dim=1)[None]  # (1, T, depth·E·pixels)
            for logger in trainer.loggers:
                if hasattr(logger.experiment, "add_image"):
                    logger.experiment.add_image(f"routing/{name}", image, step)
            if out is not None:
                save_png(image, Path(out) / "routing" / f"{name}.png", scale=1)
        iou = interval_iou(images["masks_experts"], self.task_intervals)
        labels = self.task_intervals.labels()
        log_figure(trainer, "routing/iou", heatmap_figure({"experts": iou}, labels, 0.0, 1.0), step)
        if out is not None:
            if first:  # this run directory's first drawing (a resumed run writes a new directory)
                write_intervals(out, "routing", self.task_intervals.edges)
            RecordWriter(out, "routing").matrix(step, "iou", iou)
