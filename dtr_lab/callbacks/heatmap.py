"""Heatmaps of K×K interval matrices (gradient cosine, task affinity, mask IoU) for TensorBoard.

Two renderings, in the palettes of :mod:`dtr_lab.plots` (the figure with its drawer): a colour-mapped
image tensor (a few milliseconds, logged at every measurement, so TensorBoard's step slider shows the
matrix change over training) and a labelled, annotated matplotlib figure (about a training step to draw
on a CPU, so logged once per run).
"""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure


def heatmap_figure(
    matrices: dict[str, torch.Tensor],
    labels: list[str],
    metric: str = "cos",
    xlabel: str = "interval j",
    ylabel: str = "interval i",
) -> Figure:
    """One heatmap per (title, K×K matrix), side by side, on the metric's fixed colour scale
    (dtr_lab.plots.colour_scale: cos, iou or tag), named on the colour bar."""
    from dtr_lab.plots import ANNOTATE_MAX, heatmap  # imported here: only needed when a figure is drawn

    n = len(matrices)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    k = len(labels)
    side = 2.2 + 0.45 * k  # inches: the interval labels and the titles need about 2 whatever K
    fig = Figure(figsize=(side * cols + 1.4, side * rows), layout="constrained")  # 1.4: the colour bar
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax, (title, matrix) in zip(axes, matrices.items(), strict=False):
        heatmap(
            ax,
            matrix.detach().float().cpu().numpy(),
            labels,
            metric,
            annot=k <= ANNOTATE_MAX,
            cbar=ax is axes[n - 1],
        )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def heatmap_image(matrices: dict[str, torch.Tensor], metric: str = "cos", cell: int = 12) -> torch.Tensor:
    """The matrices side by side as one (3, H, W) image in [0, 1]: cell×cell pixels per entry, row i
    top to bottom, column j left to right, on the metric's fixed colour scale and in the palettes of
    dtr_lab.plots (diverging, blue < 0 < red, or sequential for [0, 1]), so images of different steps
    and runs compare; undefined (NaN) entries grey."""
    from matplotlib import colormaps

    from dtr_lab.plots import DIVERGING, SEQUENTIAL, colour_scale  # imports seaborn: registers its palettes

    norm, _ = colour_scale(metric)
    cmap = colormaps[DIVERGING if norm.vmin < 0 < norm.vmax else SEQUENTIAL]
    gap = torch.ones(3, next(iter(matrices.values())).shape[0] * cell, cell // 2)
    panels = []
    for matrix in matrices.values():
        m = matrix.detach().float().cpu()
        scaled = torch.from_numpy(norm(m.nan_to_num(0.0).numpy()).filled(0.5)).clamp(0, 1)
        rgb = torch.from_numpy(cmap(scaled.numpy())[..., :3]).float()  # (K, K, 3)
        rgb[m.isnan()] = 0.6
        panels += [rgb.permute(2, 0, 1).repeat_interleave(cell, 1).repeat_interleave(cell, 2), gap]
    return torch.cat(panels[:-1], dim=2)

