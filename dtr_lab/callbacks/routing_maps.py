"""RoutingMaps: the T×C mask table of every routed width, as an image, and the channel overlap
(IoU) between task intervals, at fit start: the routing's designed affinity, to set beside the
measured one. Where blocks of one width have tables of their own (R-TR), the image is the first
block's table, a second image the share of those blocks with each channel active, and the IoU the
mean over the blocks.

Learned routing (Switch) is drawn the same way from the gates: rows t, columns the depth × E expert
slots (block-major), active = one of the block's k chosen experts at t, and the IoU of those chosen
slots between intervals; logged at fit start, every ``every_n_steps`` and at fit end, as it changes.
What to draw is the routing's answer (``net.routing_drawing()``, a dtr_lab.routing.Drawing).

Each table goes to the loggers as a labelled figure (t down the side, channels or experts along the
bottom, a colour bar; dtr_lab.plots.mask_table), whole at TensorBoard's card size, and to
``routing/<name>.png`` as the raw table, one pixel per t and channel, for the readers."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from dtr_lab.callbacks.heatmap import heatmap_figure
from dtr_lab.callbacks.logging import log_dir, log_figure, save_png
from dtr_lab.callbacks.prepared import PreparedCallback
from dtr_lab.callbacks.record_writer import RecordWriter, write_intervals
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals, TaskIntervals


def interval_iou(table: torch.Tensor, intervals: TaskIntervals) -> torch.Tensor:
    """Mean channel IoU |m_t ∧ m_s| / |m_t ∨ m_s| over all pairs t ∈ interval i, s ∈ interval j, (K, K)."""
    m = table.float()  # (T, C)
    inter = m @ m.T  # (T, T)
    active = m.sum(dim=1)  # (T,)
    iou = inter / (active[:, None] + active[None, :] - inter).clamp(min=1)  # (T, T)
    member = F.one_hot(intervals.index(torch.arange(m.shape[0])), intervals.num_intervals).float()  # (T, K)
    size = member.sum(dim=0)  # (K,)
    return (member.T @ iou @ member) / (size[:, None] * size[None, :])  # (K, K)


def table_figure(table: torch.Tensor, title: str, columns: str, group: int, label: str | None) -> Figure:
    """A routing table (T, columns) as a labelled figure of TensorBoard's card size (dtr_lab.plots'
    drawer). Drawn and rendered in 0.39 s (median of 5, a 1000 × 128 table, on this 2-core machine under
    load): once at fit start, or for a learned routing two figures every every_n_steps (200: 0.8 s in
    about 30 s of digits training)."""
    from dtr_lab.plots import mask_table  # imported here: seaborn is only needed when a figure is drawn

    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = figure.subplots()
    mask_table(ax, table.detach().float().cpu().numpy(), columns, group, label)
    ax.set_title(title, fontsize=10)
    return figure


class RoutingMaps(PreparedCallback):
    """Logs each mask table (rows: timesteps t, columns: channels; dark = active) and the K×K IoU."""

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
        shown = pl_module.net.routing_drawing()
        self.learned = shown.learned
        if not shown.learned:
            step = 0
        elif step == self._drawn_at:  # fit end right after a scheduled drawing
            return
        first, self._drawn_at = self._drawn_at is None, step
        images, meaning = {}, dict(shown.labels)  # what a real-valued image's colours mean
        for name, tables in shown.tables.items():
            images[f"masks_{name}"] = tables[0]  # the first block's
            if len(tables) > 1:  # per-block tables: how many of the blocks route each channel at t
                images[f"mean_masks_{name}"] = torch.stack(tables).float().mean(dim=0)
                meaning[f"mean_masks_{name}"] = f"share of the {len(tables)} blocks routing the channel"
        out = log_dir(trainer)
        routing = getattr(getattr(pl_module, "routing", None), "label", "")
        for name, table in {**images, **shown.images}.items():
            title = f"{routing}: {name}, step {step}" if routing else f"{name}, step {step}"
            figure = table_figure(table, title, shown.columns, shown.group, meaning.get(name))
            log_figure(trainer, f"routing/{name}", figure, step)
            if out is not None:
                image = table.float().repeat_interleave(shown.pixels, dim=1)[None]  # (1, T, columns·pixels)
                save_png(image, Path(out) / "routing" / f"{name}.png", scale=1)
        if not shown.tables:
            return
        ious = {
            name: torch.stack([interval_iou(t, self.task_intervals) for t in tables]).mean(dim=0)
            for name, tables in shown.tables.items()
        }  # per table name (a width), the mean over its blocks' tables
        labels = self.task_intervals.labels()
        log_figure(trainer, "routing/iou", heatmap_figure(ious, labels, "iou"), step)
        if out is not None:
            if first or not shown.learned:  # a resumed run writes a new directory
                write_intervals(out, "routing", self.task_intervals.edges)
            writer = RecordWriter(out, "routing")
            # one table (DiT): its IoU; several (U-Net's widths): their mean, and each as iou/<table>
            writer.matrix(step, "iou", torch.stack(list(ious.values())).mean(dim=0))
            if len(ious) > 1:
                for name, iou in ious.items():
                    writer.matrix(step, f"iou/{name}", iou)
