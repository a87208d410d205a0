"""Heatmaps of K×K interval matrices (gradient cosine, task affinity, mask IoU) for TensorBoard."""

from __future__ import annotations

import math

import lightning as L
import torch
from matplotlib.figure import Figure

ANNOTATE_MAX = 8  # beyond 8×8 cells the numbers no longer fit


def heatmap_figure(
    matrices: dict[str, torch.Tensor],
    labels: list[str],
    vmin: float = -1.0,
    vmax: float = 1.0,
    xlabel: str = "interval j",
    ylabel: str = "interval i",
) -> Figure:
    """One heatmap per (title, K×K matrix), side by side, on a shared diverging colour scale."""
    import seaborn as sns  # imported here: only needed when a figure is drawn

    n = len(matrices)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    k = len(labels)
    side = 1.2 + 0.45 * k
    fig = Figure(figsize=(side * cols, side * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, (title, matrix) in zip(axes, matrices.items(), strict=False):
        sns.heatmap(
            matrix.detach().float().cpu().numpy(),
            ax=ax,
            vmin=vmin,
            vmax=vmax,
            center=0.0 if vmin < 0 < vmax else None,
            cmap="RdBu_r" if vmin < 0 < vmax else "viridis",
            annot=k <= ANNOTATE_MAX,
            fmt=".2f",
            annot_kws={"fontsize": 7},
            square=True,
            xticklabels=labels,
            yticklabels=labels,
            cbar=ax is axes[n - 1],
        )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def log_figure(trainer: L.Trainer, tag: str, figure: Figure, step: int) -> None:
    """Send a figure to every logger that takes figures (TensorBoard's add_figure)."""
    for logger in trainer.loggers:
        if hasattr(logger.experiment, "add_figure"):
            logger.experiment.add_figure(tag, figure, step)
