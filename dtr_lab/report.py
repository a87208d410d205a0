"""Every figure of a set of runs, and an index.md of what each shows and its numbers (the library of
``analysis/make_figures.py`` and ``analysis/compare.py``)."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dtr_lab import plots
from dtr_lab.errors import STORAGE_FIXES, storage_error
from dtr_lab.runs import (
    RunError,
    Runs,
    at_step,
    distance_table,
    final_scalars,
    load_runs,
    loss_by_t_table,
    metric_rows,
    routing_affinity_correlation,
)
from dtr_lab.runs.markdown import markdown_table


@dataclass
class FigureSpec:
    """A figure of the index: file name, what it shows (one sentence), how to draw it, its numbers."""

    name: str
    sentence: str
    draw: Callable[[Runs], plt.Figure]
    numbers: Callable[[Runs], pd.DataFrame]


def group_summary(frame: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Mean, sd and count of ``value`` per group."""
    out = frame.groupby(by, dropna=False)[value].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"count": "runs"})


def training_numbers(runs: Runs, by: str) -> pd.DataFrame:
    final = final_scalars(runs.scalars, ["train/loss", "val/loss", "val/loss_ema"])
    table = group_summary(final, ["tag", by])
    steps = final.groupby(["tag", by])["step"].max().rename("at step").reset_index()
    table = table.merge(steps, on=["tag", by])
    return table.rename(columns={"tag": "last logged value of", "mean": "mean over runs"})


def loss_by_t_numbers(runs: Runs, metric: str, by: str, baseline: str) -> pd.DataFrame:
    table = loss_by_t_table(runs.loss_by_t, metric, by=by, baseline=baseline)
    wide = table.pivot(index="t", columns=by, values="mean")
    ratios = table[table[by] != baseline].pivot(index="t", columns=by, values="ratio")
    wide = wide.join(ratios.add_suffix(f" / {baseline}"))
    return wide.reset_index()


def matrix_numbers(runs: Runs, source: str, metric: str) -> pd.DataFrame:
    """Per run and measured step: mean of the off-diagonal entries (and of the diagonal)."""
    rows = metric_rows(runs.record(source), metric, source)
    off = rows["i"] != rows["j"]
    table = (
        rows.assign(part=np.where(off, "off-diagonal mean", "diagonal mean"))
        .groupby(["run", "routing", "step", "part"])["value"]
        .mean()
        .unstack("part")
        .reset_index()
    )
    steps = plots.pick_steps(rows["step"].to_numpy(), 4)
    return table[table["step"].isin(steps)]


def distance_numbers(runs: Runs) -> pd.DataFrame:
    table = distance_table(runs.conflict, runs.intervals)
    return table.pivot_table(index=["distance", "distance_t"], columns="run", values="cos").reset_index()


def share_numbers(runs: Runs, by: str) -> pd.DataFrame:
    rows = metric_rows(runs.conflict, "neg_share", "conflict")
    first = rows[rows["step"] == rows.groupby("run")["step"].transform("min")].assign(when="first")
    last = at_step(rows).assign(when="last")
    table = group_summary(pd.concat([first, last]), [by, "when"])
    steps = pd.concat([first, last]).groupby([by, "when"])["step"].agg(["min", "max"]).reset_index()
    return table.merge(steps, on=[by, "when"]).rename(columns={"min": "first step", "max": "last step"})


def block_share_numbers(runs: Runs) -> pd.DataFrame:
    rows = runs.conflict[runs.conflict["metric"].str.startswith("neg_share/", na=False)]
    return at_step(rows).pivot_table(index="metric", columns="run", values="value").reset_index()


def correlation_numbers(runs: Runs) -> pd.DataFrame:
    table = routing_affinity_correlation(runs)
    return table[["run", "routing", "rho", "pairs", "note"]]


def sample_numbers(runs: Runs) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"run": r.name, "routing": r.labels["routing"], "grid": r.samples[-1].name}
            for r in runs
            if r.samples
        ]
    )


def catalogue(by: str, baseline: str) -> list[FigureSpec]:
    """The figures, in index order."""
    return [
        FigureSpec(
            "training_curves",
            "Training loss and EMA validation loss over training; lines are the mean over the runs of "
            f"each {by}, bands ±1 sd over them (seeds). The training loss is drawn as logged (faint) and "
            "as a moving average of 5 logs (solid); the table gives the last logged values.",
            lambda r: plots.training_curves(r, hue=by),
            lambda r: training_numbers(r, by),
        ),
        FigureSpec(
            "loss_by_t_probe",
            "Probe loss of the EMA weights at each timestep t (fixed batch and noise, last measurement), "
            "and each "
            f"{by}'s ratio to {baseline}: below 1 is where it denoises better.",
            lambda r: plots.loss_by_t(r, "probe_ema", hue=by, baseline=baseline),
            lambda r: loss_by_t_numbers(r, "probe_ema", by, baseline),
        ),
        FigureSpec(
            "loss_by_t_train",
            f"Running training loss binned by timestep (no extra pass), and its ratio to {baseline}.",
            lambda r: plots.loss_by_t(r, "train", hue=by, baseline=baseline),
            lambda r: loss_by_t_numbers(r, "train", by, baseline),
        ),
        FigureSpec(
            "conflict_heatmaps",
            "Cosine between per-interval gradients on the fixed probe at four points of training "
            "(blue: the intervals' gradients conflict).",
            lambda r: plots.matrix_grid(r, "conflict", "cos"),
            lambda r: matrix_numbers(r, "conflict", "cos"),
        ),
        FigureSpec(
            "affinity_heatmaps",
            "Lookahead task affinity Z(i→j) = 1 − L_j(θ − η u_i)/L_j(θ) at four points of training "
            "(red: a step on interval i helps interval j).",
            lambda r: plots.matrix_grid(r, "affinity", "tag"),
            lambda r: matrix_numbers(r, "affinity", "tag"),
        ),
        FigureSpec(
            "cos_vs_distance",
            "Mean gradient cosine between intervals as a function of their distance in timesteps, per run "
            "(solid: last measurement, dashed: first).",
            plots.cos_vs_distance,
            distance_numbers,
        ),
        FigureSpec(
            "conflict_share",
            f"Share of interval pairs whose gradients conflict (cos < 0) over training, mean ± sd per {by}.",
            lambda r: plots.conflict_share(r, hue=by),
            lambda r: share_numbers(r, by),
        ),
        FigureSpec(
            "conflict_share_blocks",
            "The same share of conflicting pairs, per transformer block.",
            lambda r: plots.conflict_share(r, hue=by, blocks=True),
            block_share_numbers,
        ),
        FigureSpec(
            "routing_vs_affinity",
            "Routing mask table (rows: timesteps, dark: active channels), the masks' channel overlap (IoU) "
            "between intervals, and the measured affinity between them, with their rank correlation.",
            plots.routing_vs_affinity,
            correlation_numbers,
        ),
        FigureSpec(
            "samples",
            "Each run's latest EMA sample grid (one class per column).",
            plots.sample_grids,
            sample_numbers,
        ),
    ]


def write_figures(
    runs: Runs, out: Path, figures: list[FigureSpec], title: str = "Figures"
) -> tuple[int, list[str]]:
    """Draw each figure to out/NAME.{png,pdf} and write out/index.md; returns (drawn, skip reasons). A full
    or read-only device is one DTRLabError line naming the file (write_out)."""
    write_out(out, lambda path: path.mkdir(parents=True, exist_ok=True))
    table = runs.labels.assign(kind=[r.kind.kind for r in runs], steps=[r.steps for r in runs])
    lines = [f"# {title}", "", f"{len(runs)} runs:", "", markdown_table(table), ""]
    skipped, drawn = [], 0
    for fig_spec in figures:
        try:
            fig = fig_spec.draw(runs)
            numbers = fig_spec.numbers(runs)
        except RunError as err:
            skipped.append(f"{fig_spec.name}: {err}")
            continue
        for suffix in ("png", "pdf"):
            write_out(out / f"{fig_spec.name}.{suffix}", functools.partial(fig.savefig, dpi=150))
        plt.close(fig)
        drawn += 1
        lines += [
            f"## {fig_spec.name}",
            "",
            f"![{fig_spec.name}]({fig_spec.name}.png) ([PDF]({fig_spec.name}.pdf))",
            "",
            fig_spec.sentence,
            "",
            markdown_table(numbers) if len(numbers) else "(no numbers)",
            "",
        ]
    if skipped:
        lines += ["## Not drawn", "", *[f"- {s}" for s in skipped], ""]
    if runs.problems:
        lines += ["## Notes on the inputs", "", *[f"- {p}" for p in runs.problems], ""]
    write_out(out / "index.md", lambda path: path.write_text("\n".join(lines)))
    return drawn, skipped


def write_out(path: Path, write: Callable[[Path], object]) -> None:
    """write(path) for a figures script: a storage fault (full disk, read-only or forbidden folder) is one
    DTRLabError line naming path and --out, and the half-written file it leaves is removed."""
    try:
        write(path)
    except OSError as err:
        if err.errno not in STORAGE_FIXES:
            raise
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
        raise storage_error(err, path, "the figures", then=" (--out)") from err


def out_problem(out: Path) -> str | None:
    """Why --out cannot become the figures folder (it, or a folder above it, is a file), or None."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        return f"--out {out}: {existing} is a file, not a folder; pass a folder (made if absent)"
    return None


def load(paths: list[str], prog: str, by: str) -> tuple[Runs | None, int]:
    """The readable runs (None if there are none, or `by` is not a run label) and how many paths
    were bad, reporting each."""
    bad = []

    def report(err: RunError) -> None:
        bad.append(err)
        print(f"{prog}: error: {err}", file=sys.stderr)

    try:
        runs = load_runs(paths, on_error=report)
    except RunError as err:
        if not bad:
            print(f"{prog}: error: {err}", file=sys.stderr)
        return None, max(len(bad), 1)
    for problem in runs.problems:
        print(f"{prog}: note: {problem}", file=sys.stderr)
    if by not in runs.labels.columns:
        print(
            f"{prog}: error: --by {by!r} is not a run label; use one of {', '.join(runs.labels.columns)}",
            file=sys.stderr,
        )
        return None, len(bad)
    return runs, len(bad)
