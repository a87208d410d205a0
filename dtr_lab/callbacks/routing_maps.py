"""RoutingMaps: the T×C mask table of every routed width, as an image, and the channel overlap
(IoU) between task intervals, at fit start: the routing's designed affinity, to set beside the
measured one. Where blocks of one width have tables of their own (R-TR), the image is the first
block's table, a second image the share of those blocks with each channel active, and the IoU the
mean over the blocks.

Learned routing (Switch) is drawn the same way from the gates: rows t, columns the depth × E expert
slots (block-major), white = one of the block's k chosen experts at t, and the IoU of those chosen
slots between intervals; logged at fit start, every ``every_n_steps`` and at fit end, as it changes.
What to draw is the routing's answer (``net.routing_drawing()``, a dtr_lab.routing.Drawing)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from dtr_lab.callbacks.heatmap import heatmap_figure
from dtr_lab.callbacks.logging import log_dir, log_figure, log_image, save_png
from dtr_lab.callbacks.prepared import PreparedCallback
from dtr_lab.callbacks.records import RecordWriter, write_intervals
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals, TaskIntervals
from dtr_lab.routing import Drawing


def interval_iou(table: torch.Tensor, intervals: TaskIntervals) -> torch.Tensor:
    """Mean channel IoU |m_t ∧ m_s| / |m_t ∨ m_s| over all pairs t ∈ interval i, s ∈ interval j, (K, K)."""
    m = table.float()  # (T, C)
    inter = m @ m.T  # (T, T)
    active = m.sum(dim=1)  # (T,)
    iou = inter / (active[:, None] + active[None, :] - inter).clamp(min=1)  # (T, T)
    member = F.one_hot(intervals.index(torch.arange(m.shape[0])), intervals.num_intervals).float()  # (T, K)
    size = member.sum(dim=0)  # (K,)
    return (member.T @ iou @ member) / (size[:, None] * size[None, :])  # (K, K)


def drawing(net: torch.nn.Module) -> Drawing:
    """What the network's routing draws; nothing for a network that routes by none of its own."""
    draw = getattr(net, "routing_drawing", None)
    return draw() if draw is not None else Drawing()


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
        self.learned = False  # the routing changes in training: drawn again every every_n_steps
        self._drawn_at: int | None = None  # the step a learned routing was last drawn at

    def build(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None = None) -> None:
        """Check the intervals against T."""
        try:
            self.task_intervals = pl_module.tasks.split(self.intervals)
        except DTRLabError as err:
            raise DTRLabError(f"RoutingMaps.{err}") from None

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """A trained model's maps: fixed tables as at fit start, a learned routing's gates at `step`."""
        self.draw(trainer, pl_module, step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.draw(trainer, pl_module, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and self.learned and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module, step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.learned:
            self.draw(trainer, pl_module, trainer.global_step)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """The routing's tables (the first of each, the mean of several) and images, and the IoU of its
        tables between intervals, recorded at `step` (a fixed routing's at step 0)."""
        shown = drawing(pl_module.net)
        self.learned = shown.learned
        if not shown.learned:
            step = 0
        elif step == self._drawn_at:  # fit end right after a scheduled drawing
            return
        first, self._drawn_at = self._drawn_at is None, step
        images = {}
        for name, tables in shown.tables.items():
            images[f"masks_{name}"] = tables[0]  # the first block's
            if len(tables) > 1:  # per-block tables: how many of the blocks route each channel at t
                images[f"mean_masks_{name}"] = torch.stack(tables).float().mean(dim=0)
        out = log_dir(trainer)
        for name, table in {**images, **shown.images}.items():
            image = table.float().repeat_interleave(shown.pixels, dim=1)[None]  # (1, T, columns·pixels)
            log_image(trainer, f"routing/{name}", image, step)
            if out is not None:
                save_png(image, Path(out) / "routing" / f"{name}.png", scale=1)
        if not shown.tables:
            return
        ious = {
            name: torch.stack([interval_iou(t, self.task_intervals) for t in tables]).mean(dim=0)
            for name, tables in shown.tables.items()
        }  # per table name (a width), the mean over its blocks' tables
        labels = self.task_intervals.labels()
        log_figure(trainer, "routing/iou", heatmap_figure(ious, labels, 0.0, 1.0), step)
        if out is not None:
            if first or not shown.learned:  # a resumed run writes a new directory
                write_intervals(out, "routing", self.task_intervals.edges)
            writer = RecordWriter(out, "routing")
            # one table (DiT): its IoU; several (U-Net's widths): their mean, and each as iou/<table>
            writer.matrix(step, "iou", torch.stack(list(ious.values())).mean(dim=0))
            if len(ious) > 1:
                for name, iou in ious.items():
                    writer.matrix(step, f"iou/{name}", iou)
