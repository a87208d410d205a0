"""Figures of sample quality (records/quality.csv): FID vs iteration, the convergence curve the DTR
paper reads its "routing accelerates convergence" claim from, and the α/β ablation of DTR.
No training code is imported."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from dtr_lab.plots import palette, style

METRIC_NAMES = {
    "fid": "digits-FID (lower is better)",
    "accuracy": "class accuracy of samples",
    "kid_mean": "KID",
    "is_mean": "Inception Score",
    "precision": "precision",
    "recall": "recall",
}


def quality_curves(
    quality: pd.DataFrame,
    metric: str = "fid",
    hue: str = "routing",
    line_style: str | None = None,
    col: str | None = None,
) -> Figure:
    """`metric` against training step: mean over seeds with a ±1 sd band, one line per (hue, line_style),
    one panel per value of `col`. `quality` has columns step, metric, value, seed and the grouping columns."""
    rows = quality[quality["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no {metric!r} rows in the quality records; is SampleQuality among the callbacks?")
    order = list(dict.fromkeys(rows[hue]))
    with style():
        grid = sns.relplot(
            data=rows, x="step", y="value", hue=hue, hue_order=order, palette=palette(order),
            style=line_style, col=col, kind="line", errorbar="sd", marker="o", markersize=4,
            height=3.2, aspect=1.25, facet_kws={"sharey": True},
        )
        grid.set_axis_labels("training step", METRIC_NAMES.get(metric, metric))
        if col is not None:
            grid.set_titles("{col_name}")
        for ax in grid.axes.flat:
            ax.grid(True, alpha=0.3)
    return grid.figure


def ablation(
    final: pd.DataFrame, params: dict[str, str], metrics: Sequence[str] = ("fid", "accuracy")
) -> Figure:
    """Final metrics against each swept parameter, one panel per (metric, parameter).

    `final` has a `param` column (which parameter the row sweeps), a `param_value` column, and one
    column per metric; `params` maps parameter names to axis labels, e.g. {"alpha": "α"}.
    """
    with style():
        fig, axes = plt.subplots(len(metrics), len(params), figsize=(3.4 * len(params), 2.8 * len(metrics)),
                                 squeeze=False)
        for c, (param, label) in enumerate(params.items()):
            rows = final[final["param"] == param].sort_values("param_value")
            for r, metric in enumerate(metrics):
                ax = axes[r, c]
                ax.plot(rows["param_value"], rows[metric], marker="o", color=palette(["dtr"])["dtr"])
                ax.set_xlabel(label)
                ax.set_ylabel(METRIC_NAMES.get(metric, metric))
                ax.set_xticks(rows["param_value"].tolist())
    return fig
