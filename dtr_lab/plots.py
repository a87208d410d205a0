"""Figures of runs read by dtr_lab.runs: training curves, loss by timestep, conflict and affinity
heatmaps, routing maps. Each function takes a Run or Runs and returns a matplotlib Figure.

One style throughout: seaborn "ticks", a fixed colour per group by its label (storage.labels: a hash of
the label into 48 colours, never running out), a diverging blue–red map centred on 0 for cosines and
affinities, and axes labelled in timesteps, never interval indices. No training code is imported.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize, SymLogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from dtr_lab.runs import (
    Run,
    RunError,
    Runs,
    as_runs,
    at_step,
    distance_table,
    interval_edges,
    interval_labels,
    loss_by_t_table,
    matrix,
    metric_rows,
    routing_affinity_correlation,
)
from dtr_lab.storage.labels import PALETTE, slot

# the palettes of every K×K heatmap (figures and TensorBoard alike): a diverging one centred on 0 for
# cosines and affinities, a sequential one for overlaps in [0, 1]
DIVERGING = "vlag"  # blue–white–red, readable with red–green colour blindness
SEQUENTIAL = "mako"
ANNOTATE_MAX = 8  # beyond 8×8 cells the numbers no longer fit
TITLES = {
    "train/loss": "training loss",
    "val/loss": "validation loss (raw weights)",
    "val/loss_ema": "validation loss (EMA weights)",
    "probe_ema": "probe loss, EMA weights",
    "probe_raw": "probe loss, raw weights",
    "train": "training loss, binned by t",
    "cos": "gradient cosine",
    "tag": "lookahead affinity Z",
    "iou": "mask overlap (IoU)",
}
# the tags training_curves smooths: logged per batch, so noisy; validation losses are drawn as logged
SMOOTHED = ("train/loss",)
MATRIX_AXES = {
    "conflict": ("gradient of interval (t)", "gradient of interval (t)"),
    "affinity": ("update from interval (t)", "loss on interval (t)"),
    "routing": ("interval (t)", "interval (t)"),
}


@contextmanager
def style():
    """The shared look: seaborn ticks, paper-sized fonts, colour-blind palette, constrained layout."""
    rc = {
        **sns.axes_style("ticks"),
        **sns.plotting_context("notebook", font_scale=0.85),
        "axes.prop_cycle": plt.cycler(color=sns.color_palette("colorblind")),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "figure.dpi": 110,
        "figure.constrained_layout.use": True,
        "legend.frameon": False,
    }
    # restores only these keys: rc_context would also restore `interactive`, which a notebook's inline
    # backend switches on while the first figure is drawn, and no later figure would show
    saved = {key: plt.rcParams[key] for key in rc}
    plt.rcParams.update(rc)
    try:
        yield
    finally:
        plt.rcParams.update(saved)


def log_y(ax) -> None:
    """Log-scaled y with plain-number tick labels (0.94, not 9.4×10⁻¹), at 1, 2 and 5 of every decade
    (only the powers of 10 would leave a curve spanning 20 … 500 with the one label "100")."""
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(plain)

    def minor(v: float, pos) -> str:
        # within one decade there are too few major ticks to read values from; beyond it, too many minor ones
        lo, hi = ax.get_ylim()
        return plain(v, pos) if hi < 10 * lo else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def palette(values: Sequence, colours: dict[str, str] | None = None) -> dict:
    """A fixed colour per group by its label: the colour its runs recorded (``colours``, Runs.colours),
    else storage.labels.colour, so a group keeps its colour across figures and colours never run out. Of
    two groups with one colour, the later in label order takes the palette's next free colour."""
    colours = colours or {}
    out, taken = {}, set()
    for value in sorted(set(values), key=str):
        colour = colours.get(str(value))
        if colour is None or colour in taken:
            k = slot(str(value))
            free = [PALETTE[(k + n) % len(PALETTE)] for n in range(len(PALETTE))]
            colour = next((c for c in free if c not in taken), free[0])  # all taken: the hash's own
        out[value] = colour
        taken.add(colour)
    return out


def run_titles(runs: Runs) -> dict[str, str]:
    """A short title per run from the labels that differ between the runs ("dtr · seed 1")."""
    labels = runs.labels.set_index("run").drop(columns="path")
    varying = [c for c in labels.columns if labels[c].nunique() > 1] or ["routing"]
    titles = {
        run: " · ".join(f"seed {v}" if c == "seed" else str(v) for c, v in row[varying].items())
        for run, row in labels.iterrows()
    }
    if len(set(titles.values())) < len(titles):
        return {run: f"{t} ({run})" for run, t in titles.items()}
    return titles


def _hue_order(values: Sequence) -> list:
    """Groups in label order, the unrouted baseline ("vanilla") first where present."""
    return sorted(set(values), key=lambda v: (v != "vanilla", str(v)))


def _legend_counts(ax, frame: pd.DataFrame, hue: str) -> None:
    """Legend entries with the number of runs behind each line, e.g. "dtr (3 runs)"."""
    counts = {str(k): v for k, v in frame.groupby(hue)["run"].nunique().items()}
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, [f"{n} ({_runs(counts[n])})" if n in counts else n for n in names], title=hue)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def training_curves(
    runs: Run | Runs,
    tags: Sequence[str] = ("train/loss", "val/loss_ema"),
    hue: str = "routing",
    smooth: int = 5,
) -> Figure:
    """Loss curves, one panel per tag; lines are group means over runs (seeds), bands ± 1 sd. The
    per-batch training loss is drawn as logged (faint) under its moving average over ``smooth`` logs,
    and says so; validation losses are drawn as logged."""
    scalars = as_runs(runs).scalars
    present = [t for t in tags if (scalars["tag"] == t).any()]
    if not present:
        raise RunError(f"no run logged any of the scalars {', '.join(tags)}; check the run's events file")
    rows = scalars[scalars["tag"].isin(present)].sort_values("step").copy()
    order = _hue_order(rows[hue].unique())
    with style():
        fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 3.4), squeeze=False)
        for ax, tag in zip(axes[0], present, strict=True):
            data = rows[rows["tag"] == tag]
            title = TITLES.get(tag, tag)
            colours = palette(order, as_runs(runs).colours)
            common = {"x": "step", "y": "value", "hue": hue, "hue_order": order, "palette": colours}
            if tag in SMOOTHED and smooth > 1:
                sns.lineplot(data=data, **common, errorbar=None, alpha=0.3, lw=0.8, legend=False, ax=ax)
                # a moving average per run steadies the per-batch loss before averaging over seeds
                per_run = data.groupby("run")["value"]
                data = data.assign(value=per_run.transform(lambda v: v.rolling(smooth, min_periods=1).mean()))
                title = f"{title}\nmoving average of {smooth} logs (faint: as logged)"
            sns.lineplot(data=data, **common, errorbar="sd", ax=ax)
            ax.set(title=title, xlabel="training step", ylabel="loss")
            log_y(ax)
            _legend_counts(ax, data, hue)
    return fig


def _t_centres(intervals: pd.DataFrame, metric: str) -> dict | None:
    """For the binned training loss (rows keyed by bin start) the centre timestep of each bin."""
    edges = interval_edges(intervals, "loss_by_t") if metric == "train" else None
    if edges is None:
        return None
    return {a: (a + b - 1) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)}


def loss_by_t(
    runs: Run | Runs, metric: str = "probe_ema", hue: str = "routing", baseline: str = "vanilla"
) -> Figure:
    """Loss vs timestep per group (mean ± sd over runs, each at its last step) and, below, each
    group's ratio to the baseline group: below 1 is where that group denoises better."""
    runs = as_runs(runs)
    table = loss_by_t_table(runs.loss_by_t, metric, by=hue, baseline=baseline)
    centres = _t_centres(runs.intervals, metric)
    if centres:
        table["t"] = table["t"].map(lambda t: centres.get(int(t), t))
    order = _hue_order(table[hue].unique())
    colours = palette(order, runs.colours)
    # each run at its own last step: a title names the step only when the runs share it
    steps = sorted(at_step(metric_rows(runs.loss_by_t, metric, "loss_by_t"))["step"].unique())
    listed = ", ".join(str(int(s)) for s in steps)
    at = f"at step {listed}" if len(steps) == 1 else f"at each run's last step ({listed})"
    with style():
        fig, (top, bottom) = plt.subplots(
            2, 1, figsize=(5.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
        )
        for group in order:
            g = table[table[hue] == group].sort_values("t")
            n = int(g["runs"].max())
            top.plot(g["t"], g["mean"], marker="o", ms=3, color=colours[group], label=f"{group} ({_runs(n)})")
            if n > 1:
                top.fill_between(
                    g["t"], g["mean"] - g["std"], g["mean"] + g["std"], color=colours[group], alpha=0.2
                )
            if group != baseline and g["ratio"].notna().any():
                bottom.plot(
                    g["t"], g["ratio"], marker="o", ms=3, color=colours[group], label=f"{group} / {baseline}"
                )
        top.set(ylabel="loss  ‖ε − ε_θ‖²", title=textwrap.fill(f"{TITLES.get(metric, metric)} {at}", 60))
        log_y(top)
        top.legend(title=hue)
        bottom.axhline(1.0, color="0.3", lw=1, ls="--")
        bottom.ticklabel_format(axis="y", useOffset=False)
        bottom.set(xlabel="timestep t" + (" (bin centre)" if centres else ""), ylabel=f"ratio to {baseline}")
        if baseline not in order:
            bottom.text(
                0.5,
                0.5,
                f"no {hue}={baseline!r} run to compare with",
                ha="center",
                va="center",
                transform=bottom.transAxes,
            )
        elif len(order) > 1:
            bottom.legend()
    return fig


AFFINITY_LINEAR = 1e-3  # |Z| below this is drawn on a linear scale, above it on a log one
SYMLOG_TICKS = [-1, -0.1, -0.01, -0.001, 0, 0.001, 0.01, 0.1, 1]


def colour_scale(metric: str) -> tuple[Normalize, str]:
    """The colour scale of a K×K quantity and the colour bar's label saying it. Fixed per quantity, so an
    image compares across steps and runs and no single cell sets the scale for the others: cosines on
    [−1, 1] and overlaps on [0, 1] (their whole range); the lookahead affinity Z ≤ 1 spans decades (Z ≈
    lr·|g|², ≪ 1 at small learning rates; a step that doubles a loss gives Z = −1 and worse), so it is
    drawn on a symmetric log scale over [−1, 1], linear within ±AFFINITY_LINEAR, cells beyond −1 clipped
    (their annotation still gives the value)."""
    if metric.startswith("cos"):
        return Normalize(-1.0, 1.0), "cosine (fixed scale −1 … 1)"
    if metric.startswith("iou"):
        return Normalize(0.0, 1.0), "IoU (0 … 1)"
    if metric == "tag":
        norm = SymLogNorm(AFFINITY_LINEAR, vmin=-1.0, vmax=1.0, base=10)
        return norm, f"Z on a symmetric log scale (linear within ±{AFFINITY_LINEAR:g}, below −1 clipped)"
    raise KeyError(f"no colour scale for the matrix metric {metric!r}; expected cos…, iou… or tag")


def heatmap(
    ax,
    matrix: np.ndarray,
    labels: Sequence[str],
    metric: str,
    annot: bool = False,
    annot_size: float = 7,
    cbar: bool = True,
    **kwargs,
) -> None:
    """A K×K matrix between timestep intervals on ``ax`` (row i, column j) on its quantity's colour scale
    (``colour_scale(metric)``): the diverging palette centred on 0 (blue < 0 < red) when the scale spans
    0, else the sequential one; NaN cells blank; with ``annot`` each cell shows its value; the colour
    bar (``cbar``) labelled with the scale. ``kwargs`` go to seaborn's heatmap."""
    norm, label = colour_scale(metric)
    diverging = norm.vmin < 0 < norm.vmax
    cbar_kws = {"label": textwrap.fill(label, 32), **kwargs.pop("cbar_kws", {})}
    if isinstance(norm, SymLogNorm):
        cbar_kws["ticks"] = SYMLOG_TICKS
        cbar_kws["format"] = FuncFormatter(lambda v, _: f"{v:g}")
    sns.heatmap(
        matrix,
        ax=ax,
        cmap=DIVERGING if diverging else SEQUENTIAL,
        norm=norm,
        vmin=norm.vmin,  # with a norm, seaborn reads these only for its palette (else from the data)
        vmax=norm.vmax,
        square=True,
        annot=annot,
        fmt=".2f",
        annot_kws={"size": annot_size},
        xticklabels=labels,
        yticklabels=labels,
        cbar=cbar,
        cbar_kws=cbar_kws if cbar else None,
        **kwargs,
    )
    # interval labels ("200–399") run into each other side by side: rotated, each has its own column
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)


def pick_steps(steps: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` measured steps spread evenly over training, first and last included."""
    steps = np.unique(steps)
    if len(steps) <= count:
        return [int(s) for s in steps]
    return [int(steps[round(k)]) for k in np.linspace(0, len(steps) - 1, count)]


def matrix_grid(
    runs: Run | Runs, source: str = "conflict", metric: str = "cos", steps: int | Sequence[int] = 4
) -> Figure:
    """K×K heatmaps as small multiples: one row per run, one column per step of training."""
    runs = as_runs(runs)
    rows = metric_rows(runs.record(source), metric, source)
    chosen = pick_steps(rows["step"].to_numpy(), steps) if isinstance(steps, int) else list(steps)
    names = list(rows["run"].unique())
    titles = run_titles(runs)
    ylabel, xlabel = MATRIX_AXES.get(source, ("i", "j"))
    with style():
        fig, axes = plt.subplots(
            len(names), len(chosen), figsize=(2.3 * len(chosen) + 1.2, 2.2 * len(names) + 0.6), squeeze=False
        )
        for r, name in enumerate(names):
            run_rows = rows[rows["run"] == name]
            edges = interval_edges(runs.intervals, source, name)
            shown = set()
            for c, step in enumerate(chosen):
                ax = axes[r, c]
                at = at_step(run_rows, step)
                # a run that ended (or began measuring) elsewhere than the column's step has no matrix of
                # its own there: the cell says so rather than repeat another column's
                measured = int(at["step"].iloc[0]) if len(at) else None
                if measured is None or measured in shown:
                    last = int(run_rows["step"].max())
                    ax.text(
                        0.5, 0.5, f"no step {step}\n(last measured: {last})" if measured is not None
                        else f"not measured\nby step {step}", ha="center", va="center", fontsize=7,
                        transform=ax.transAxes,
                    )  # fmt: skip
                    ax.set(xticks=[], yticks=[])
                    ax.grid(False)
                    continue
                shown.add(measured)
                mat = matrix(at)
                labels = interval_labels(edges, len(mat))
                heatmap(ax, mat, labels, metric, annot=len(mat) <= ANNOTATE_MAX, annot_size=5, cbar=False)
                ax.tick_params(labelsize=7)
                # every cell says its own step: a run still training may lag the column's step
                ax.set_title(f"step {measured}", fontsize=9)
                bottom, left = r == len(names) - 1, c == 0
                ax.set_xlabel(xlabel if bottom else "")
                ax.set_ylabel(f"{titles[name]}\n{ylabel}" if left else "")
                if not bottom:
                    ax.set_xticklabels([])
                if not left:
                    ax.set_yticklabels([])
        norm, label = colour_scale(metric)
        fig.colorbar(
            ScalarMappable(norm, DIVERGING if norm.vmin < 0 else SEQUENTIAL), ax=axes, shrink=0.6,
            label=textwrap.fill(f"{TITLES.get(metric, metric)}: {label}", 40),
            **({"ticks": SYMLOG_TICKS, "format": "{x:g}"} if isinstance(norm, SymLogNorm) else {}),
        )  # fmt: skip
        fig.suptitle(f"{TITLES.get(metric, metric)} between timestep intervals over training", fontsize=10)
    return fig


def cos_vs_distance(runs: Run | Runs, hue: str = "routing") -> Figure:
    """Mean gradient cosine between intervals d apart, one line per run coloured by group: the last
    measurement solid, the first dashed, so the change over training shows."""
    runs = as_runs(runs)
    last = distance_table(runs.conflict, runs.intervals)
    rows = metric_rows(runs.conflict, "cos_by_distance", "conflict")
    first = distance_table(rows[rows["step"] == rows.groupby("run")["step"].transform("min")], runs.intervals)
    in_t = last["distance_t"].notna().all()
    x = "distance_t" if in_t else "distance"
    order = _hue_order(last[hue].unique())
    colours = palette(order, runs.colours)
    with style():
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        for (run, group), g in last.groupby(["run", hue], sort=False):
            f = first[first["run"] == run].sort_values("distance")
            g = g.sort_values("distance")
            ax.plot(
                g[x],
                g["cos"],
                marker="o",
                ms=4,
                color=colours[group],
                label=f"{group}, step {g['step'].iloc[0]}",
            )
            if len(f) and f["step"].iloc[0] != g["step"].iloc[0]:
                ax.plot(
                    f[x],
                    f["cos"],
                    ls="--",
                    color=colours[group],
                    alpha=0.6,
                    label=f"{group}, step {f['step'].iloc[0]}",
                )
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))  # one entry per group and step, not per seed
        ax.legend(unique.values(), unique.keys(), title=f"{hue} ({last['run'].nunique()} runs)", fontsize=7)
        ax.axhline(0, color="0.3", lw=1)
        ax.set(
            xlabel="distance between intervals (timesteps)" if in_t else "distance (intervals)",
            ylabel="mean gradient cosine",
            title="gradient agreement vs timestep distance",
        )
    return fig


def conflict_share(runs: Run | Runs, hue: str = "routing", blocks: bool = False) -> Figure:
    """Share of interval pairs whose gradients conflict (cos < 0) over training, mean ± sd over runs;
    with ``blocks`` one panel per block."""
    conflict = as_runs(runs).conflict
    if blocks:
        metrics = sorted(m for m in conflict["metric"].dropna().unique() if m.startswith("neg_share/"))
        if not metrics:
            raise RunError("no run has per-block 'neg_share/<block>' in records/conflict.csv; record blocks")
    else:
        metrics = ["neg_share"]
        metric_rows(conflict, "neg_share", "conflict")
    order = _hue_order(conflict[hue].unique())
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    with style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(3.6 * ncols + 0.8, 2.9 * nrows), squeeze=False, sharey=True
        )
        for ax, metric in zip(axes.flat, metrics, strict=False):
            data = conflict[conflict["metric"] == metric]
            sns.lineplot(
                data=data,
                x="step",
                y="value",
                hue=hue,
                hue_order=order,
                palette=palette(order, as_runs(runs).colours),
                errorbar="sd",
                marker="o",
                ax=ax,
            )
            ax.set(
                title=metric.removeprefix("neg_share/") if blocks else "conflicting interval pairs",
                xlabel="training step",
                ylabel="share with cos < 0",
                ylim=(-0.02, 1.02),
            )
            if ax is axes.flat[0]:
                _legend_counts(ax, data, hue)
            elif ax.get_legend() is not None:
                ax.get_legend().remove()
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
    return fig


def routing_vs_affinity(runs: Run | Runs, source: str = "affinity", metric: str = "tag") -> Figure:
    """Per run: the mask table (t × channel), the masks' overlap between intervals, and the measured
    affinity between the same intervals, with their Spearman rank correlation ρ. Every run's matrices on
    the quantity's fixed colour scale (``colour_scale``), so rows compare by eye and one run's extreme
    cell leaves the others' colours alone; the cells carry their values."""
    runs = as_runs(runs)
    corr = routing_affinity_correlation(runs, source, metric).set_index("run")
    titles = run_titles(runs)
    if corr["pairs"].sum() == 0 and all(r.routing.empty for r in runs):
        raise RunError(f"no run has routing 'iou' in records/routing.csv ({'; '.join(corr['note'])})")
    with style():
        fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.8 * len(runs)), squeeze=False)
        fig.get_layout_engine().set(wspace=0.08)  # room between a colour bar's label and the next y label
        for (a_mask, a_iou, a_aff), run in zip(axes, runs, strict=True):
            _mask_panel(a_mask, run)
            for ax, frame, src, m in (
                (a_iou, run.routing, "routing", "iou"),
                (a_aff, run.record(source), source, metric),
            ):
                rows = frame[frame["metric"] == m]
                if rows.empty:
                    ax.text(0.5, 0.5, f"no {m!r} recorded", ha="center", va="center", transform=ax.transAxes)
                    ax.set_axis_off()
                    continue
                at = at_step(rows)
                mat = matrix(at)
                labels = interval_labels(interval_edges(run.intervals, src), len(mat))
                heatmap(
                    ax, mat, labels, m, annot=m != "iou" and len(mat) <= ANNOTATE_MAX, annot_size=6,
                    cbar_kws={"shrink": 0.8},
                )  # fmt: skip
                ax.tick_params(labelsize=7)
                ax.collections[0].colorbar.ax.tick_params(labelsize=7)
                ylabel, xlabel = MATRIX_AXES.get(src, ("i", "j"))
                title = TITLES.get(m, m) + (f", step {int(at['step'].iloc[0])}" if m != "iou" else "")
                ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
            c = corr.loc[run.name]
            rho = (
                f"Spearman ρ(IoU, Z) = {c['rho']:.2f}, {c['pairs']} pairs"
                if np.isfinite(c["rho"])
                else c["note"]
            )
            a_mask.set_title(f"{titles[run.name]}: routing masks", fontsize=10)
            a_aff.set_xlabel(f"{a_aff.get_xlabel()}\n{textwrap.fill(rho, 40)}")
    return fig


def mask_table(ax, table: np.ndarray, columns: str = "channel", group: int = 1, label: str | None = None):
    """A routing table (T, columns) on ``ax``: rows the timesteps t (0 at the top), columns the channels
    (or the expert slots, ``group`` per block, with the block boundaries drawn); dark is active. A 0/1
    table gets two colours and a colour bar "masked / active" (or "not <label> / <label>"), so an
    all-active (unrouted) table is a filled block, not white on white; a real-valued one (gate
    probabilities, the share of blocks routing a channel) the sequential palette over [0, 1] and a
    colour bar labelled ``label``."""
    table = np.asarray(table, dtype=float)
    binary = bool(np.isin(table, (0.0, 1.0)).all())
    palette_r = sns.color_palette(f"{SEQUENTIAL}_r", as_cmap=True)
    cmap = ListedColormap([palette_r(0.15), palette_r(0.85)]) if binary else palette_r
    image = ax.imshow(table, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set(ylabel="timestep t", xlabel=f"{columns} (of {table.shape[1]})")
    if group > 1:
        blocks = table.shape[1] // group
        for b in range(1, blocks):
            ax.axvline(b * group - 0.5, color="white", lw=1.5)
        ax.set_xticks([b * group + (group - 1) / 2 for b in range(blocks)], [str(b) for b in range(blocks)])
        ax.set_xlabel(f"{columns}: {group} per block, blocks 0–{blocks - 1}")
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
    if binary:
        bar.set_ticks([0.25, 0.75], labels=[f"not {label}", label] if label else ["masked", "active"])
    else:
        bar.set_label(label or "")
    ax.grid(False)
    return image


def _mask_panel(ax, run: Run) -> None:
    """The widest mask table of a run as an image (for learned routing, the experts the gates chose)."""
    if not run.masks:
        ax.text(
            0.5,
            0.5,
            "no mask table\n(unrouted: every channel\nactive at every t)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set(xticks=[], yticks=[])
        return
    image = plt.imread(run.masks[-1])
    image = image[..., 0] if image.ndim == 3 else image
    if run.masks[-1].stem == "masks_experts":  # learned routing: the gates' chosen experts, latest drawing
        mask_table(ax, image)
        ax.set(xticks=[], xlabel="expert slot (blocks side by side)")  # the PNG widens each slot
    else:
        mask_table(ax, image)


def sample_grids(runs: Run | Runs) -> Figure:
    """Each run's latest EMA sample grid side by side."""
    runs = as_runs(runs)
    with_samples = [r for r in runs if r.samples]
    titles = run_titles(runs)
    if not with_samples:
        raise RunError("no run has samples/*.png; turn on the SampleGrid callback")
    with style():
        fig, axes = plt.subplots(1, len(with_samples), figsize=(3.8 * len(with_samples), 2.3), squeeze=False)
        for ax, run in zip(axes[0], with_samples, strict=True):
            ax.imshow(plt.imread(run.samples[-1]), cmap="gray", interpolation="nearest")
            step = run.samples[-1].stem.removeprefix("step").lstrip("0") or "0"
            ax.set_title(f"{titles[run.name]}, step {step}", fontsize=9)
            ax.set_axis_off()
    return fig


METRIC_NAMES = {
    "fid": "digits-FID (lower is better)",
    "accuracy": "class accuracy of samples",
    "probe_0": "EMA probe loss, t < 200",
    "probe_4": "EMA probe loss, t ≥ 800",
    "kid_mean": "KID",
    "is_mean": "Inception Score",
    "precision": "precision",
    "recall": "recall",
    "memorised": "share of samples copying a training image",
}


def paired_gains(table: pd.DataFrame, metrics: dict[str, str]) -> Figure:
    """Paired differences with their confidence intervals against a study axis: one column per value of
    `axis` (e.g. model width, training steps), one row per metric; a dashed line marks no difference.

    `table` has columns axis, x, metric, diff, ci_low, ci_high (as analysis/study.py's paired_table).
    """
    axes_names = list(dict.fromkeys(table["axis"]))
    colour = palette(["dtr"])["dtr"]
    with style():
        fig, axes = plt.subplots(len(metrics), len(axes_names), squeeze=False,
                                 figsize=(3.6 * len(axes_names), 2.6 * len(metrics)))
        for c, name in enumerate(axes_names):
            for r, (metric, label) in enumerate(metrics.items()):
                ax = axes[r, c]
                rows = table[(table["axis"] == name) & (table["metric"] == metric)].sort_values("x")
                low, high = rows["diff"] - rows["ci_low"], rows["ci_high"] - rows["diff"]
                ax.errorbar(rows["x"], rows["diff"], yerr=[low.fillna(0), high.fillna(0)], marker="o",
                            color=colour, capsize=4)
                ax.axhline(0, color="grey", linestyle="--", linewidth=1)
                ax.set_xticks(rows["x"].tolist())
                ax.set_xlabel(name)
                ax.set_ylabel(label)
        fig.suptitle("paired difference, mean and 95 % t interval over seeds", fontsize=9)
    return fig


WEIGHTING_LINES = {"uniform": "-", "min_snr": "--", "uw": ":"}


def convergence_curves(
    scores: pd.DataFrame, paired: pd.DataFrame, metric: str = "fid", target: float | None = None
) -> Figure:
    """A paired study along training. Top: `metric` against step per arm, mean over seeds with a ±1 sd band
    (colour: routing, line: weighting; log y), `target` dotted; beside it the plateau, the later half of
    the scoring points on a linear y, where the values the claims rest on can be read. Below, one small
    panel per comparison: its paired difference b − a at every scoring point, the mean with its 95 % t
    interval as a band (symmetric-log y: early differences are hundreds of FID points, late ones a few);
    dashed: no difference.

    `scores` has columns arm, routing, weighting, seed, step, metric, value; `paired` the columns of
    analysis/study.py's paired_table (comparison, step, metric, pairs, diff, ci_low, ci_high)."""
    rows = scores[(scores["metric"] == metric) & (scores["step"] > 0)]
    if paired.empty:  # one arm: no comparison, the curves alone
        paired = pd.DataFrame(columns=["comparison", "step", "metric", "diff", "ci_low", "ci_high"])
    diffs = paired[(paired["metric"] == metric) & (paired["step"] > 0)]
    if rows.empty:
        raise ValueError(f"no {metric!r} scores; is SampleQuality among the callbacks?")
    arms = rows[["arm", "routing", "weighting"]].drop_duplicates("arm")
    colours = palette(list(arms["routing"]))
    comparisons = list(dict.fromkeys(diffs["comparison"]))
    columns = min(4, max(2, len(comparisons)))  # at least 2: the top row's last column holds the plateau
    below = -(-len(comparisons) // columns)
    steps = np.unique(rows["step"])
    plateau = rows[rows["step"] >= steps[len(steps) // 2]]  # the later half of the scoring points

    def draw_arms(ax, rows: pd.DataFrame) -> None:
        """Each arm's mean ± 1 sd over seeds."""
        for arm in arms.itertuples():
            by_step = rows[rows["arm"] == arm.arm].groupby("step")["value"]
            mean, sd = by_step.mean(), by_step.std().fillna(0)
            seeds = rows[rows["arm"] == arm.arm]["seed"].nunique()
            colour, line = colours[arm.routing], WEIGHTING_LINES.get(arm.weighting, "-.")
            ax.plot(mean.index, mean.values, marker="o", markersize=3, color=colour, linestyle=line,
                    label=f"{arm.arm} ({seeds} seeds)")
            ax.fill_between(mean.index, mean - sd, mean + sd, color=colour, alpha=0.12, linewidth=0)

    with style():
        fig = plt.figure(figsize=(2.6 * columns + 2.6, 3.6 + 2.2 * below))
        grid = fig.add_gridspec(1 + below, columns, height_ratios=[1.7] + [1] * below)
        top = fig.add_subplot(grid[0, : columns - 1])
        draw_arms(top, rows)
        if target is not None:
            top.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:g}")
        log_y(top)
        top.set(xlabel="training step", ylabel=METRIC_NAMES.get(metric, metric))
        title = ("per arm: mean ± 1 sd over seeds; below, per comparison: the paired difference b − a, "
                 "mean and 95 % t interval over seeds")
        top.set_title(textwrap.fill(title, 9 * columns + 30), fontsize=9)
        zoom = fig.add_subplot(grid[0, columns - 1])
        draw_arms(zoom, plateau)
        # y spans the bands at the last scoring point: an arm still falling leaves the panel at the top
        last = rows[rows["step"] == steps[-1]].groupby("arm")["value"]
        mean, sd = last.mean(), last.std().fillna(0)
        low, high = float((mean - sd).min()), float((mean + sd).max())
        margin = 0.15 * (high - low) or 1.0
        zoom.set_ylim(low - margin, high + margin)
        zoom.set_title(f"plateau, steps ≥ {int(plateau['step'].min())} (linear y)", fontsize=8)
        zoom.tick_params(labelsize=7)
        zoom.set_xticks(np.unique(plateau["step"]))
        zoom.legend(*top.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
        for k, name in enumerate(comparisons):
            ax = fig.add_subplot(grid[1 + k // columns, k % columns], sharex=top)
            d = diffs[diffs["comparison"] == name].sort_values("step")
            ax.plot(d["step"], d["diff"], marker="o", markersize=3, color="black")
            ax.fill_between(d["step"], d["ci_low"], d["ci_high"], color="grey", alpha=0.3, linewidth=0)
            ax.axhline(0, color="grey", linestyle="--", linewidth=1)
            ax.set_yscale("symlog", linthresh=10)
            ax.set_title(f"{name} ({int(d['pairs'].max())} pairs)", fontsize=8)
            ax.tick_params(labelsize=7)
            if k % columns == 0:
                ax.set_ylabel(f"Δ {metric}, 95 % t", fontsize=8)
    return fig
