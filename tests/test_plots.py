"""dtr_lab.plots on real tiny runs and hand-made ones: axes, labels in timesteps, series, values drawn."""

from __future__ import annotations

import csv

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import write_fake_run  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from dtr_lab import plots
from dtr_lab.runs import RunError, load_runs  # noqa: E402
from dtr_lab.storage import labels  # noqa: E402

INTERVALS_K3 = ["0–332", "333–665", "666–999"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def real(tiny_runs):
    return load_runs([tiny_runs["vanilla"], tiny_runs["dtr"]])


def _records(path, metric):
    with (path / "records" / "loss_by_t.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == metric]
    last = max(int(r["step"]) for r in rows)
    return {int(r["i"]): float(r["value"]) for r in rows if int(r["step"]) == last}


def test_training_curves(real):
    fig = plots.training_curves(real)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == [
        "training loss\nmoving average of 5 logs (faint: as logged)",
        "validation loss (EMA weights)",
    ]
    for ax in axes:
        assert ax.get_xlabel() == "training step" and ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vanilla (1 run)", "dtr (1 run)"]
        assert len(ax.get_lines()) >= 2


def test_training_curves_band_over_seeds(tmp_path):
    runs = load_runs([write_fake_run(tmp_path, "dtr", s, 1.0 + s) for s in (0, 1)])
    ax = plots.training_curves(runs, tags=["train/loss"], smooth=1).axes[0]
    line = ax.get_lines()[0]
    # seeds have losses (step+1)·1 and (step+1)·2: the line is their mean, the band ±1 sd
    assert np.allclose(line.get_ydata(), 1.5 * (np.arange(10) + 1))
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1
    sd = np.std([1.0, 2.0], ddof=1) * 10
    assert band[0].get_paths()[0].vertices[:, 1].max() == pytest.approx(15 + sd)


def test_training_curves_smooth_the_training_loss_only_and_say_so(tmp_path):
    run = write_fake_run(tmp_path, "dtr", 0, 1.0)  # train/loss = step + 1 at steps 0…9
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run)) as writer:  # a validation series of six points, as the issue's
        for k, value in enumerate((0.3, 0.2, 0.15, 0.12, 0.1, 0.0763)):
            writer.add_scalar("val/loss", value, 10 * k)
    train, val = plots.training_curves(load_runs(run), tags=["train/loss", "val/loss"]).axes[:2]
    faint, solid = train.get_lines()[:2]
    assert np.allclose(faint.get_ydata(), np.arange(10) + 1) and faint.get_alpha() == pytest.approx(0.3)
    # the moving average of 5 logs: (1+…+k)/k for the first four, then the mean of the last five
    expected = [np.mean(np.arange(max(0, k - 4), k + 1) + 1) for k in range(10)]
    assert np.allclose(solid.get_ydata(), expected) and solid.get_ydata()[-1] == pytest.approx(8)
    assert "moving average of 5 logs" in train.get_title()
    # the validation loss is drawn as logged: it ends at its last logged value, not at a mean
    assert np.allclose(val.get_lines()[0].get_ydata(), [0.3, 0.2, 0.15, 0.12, 0.1, 0.0763])
    assert val.get_title() == "validation loss (raw weights)"


def test_loss_by_t_probe_and_ratio(real, tiny_runs):
    fig = plots.loss_by_t(real, "probe_ema")
    top, bottom = fig.axes
    assert top.get_title().startswith("probe loss, EMA weights at step")
    assert bottom.get_xlabel() == "timestep t" and bottom.get_ylabel() == "ratio to vanilla"
    van, dtr = _records(tiny_runs["vanilla"], "probe_ema"), _records(tiny_runs["dtr"], "probe_ema")
    lines = top.get_lines()
    assert len(lines) == 2 and list(lines[0].get_xdata()) == [0, 250, 500, 749, 999]
    assert np.allclose(lines[1].get_ydata(), [dtr[t] for t in sorted(dtr)])
    ratio = [ln for ln in bottom.get_lines() if ln.get_label() == "dtr / vanilla"][0]
    assert np.allclose(ratio.get_ydata(), [dtr[t] / van[t] for t in sorted(dtr)])


def test_loss_by_t_training_bins_at_centres(real):
    top = plots.loss_by_t(real, "train").axes[0]
    # 5 bins of 200 timesteps: centres (start + end − 1)/2
    assert list(top.get_lines()[0].get_xdata()) == [99.5, 299.5, 499.5, 699.5, 899.5]


def test_loss_by_t_without_baseline_says_so(tmp_path):
    runs = load_runs([write_fake_run(tmp_path, "dtr", 0)])
    bottom = plots.loss_by_t(runs).axes[1]
    assert "no routing='vanilla' run" in bottom.texts[0].get_text()
    with pytest.raises(RunError, match="'probe_other'"):
        plots.loss_by_t(runs, "probe_other")


def test_loss_by_t_title_names_each_runs_step_when_they_differ(tmp_path):
    """A run stopped at step 0 beside one at step 100: the title no longer calls both "step 100"."""
    short = write_fake_run(tmp_path, "vanilla", 0)
    path = short / "records" / "loss_by_t.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(ln for ln in lines if not ln.startswith("100,")))
    both = load_runs([short, write_fake_run(tmp_path, "dtr", 0)])
    title = plots.loss_by_t(both).axes[0].get_title()
    assert title == "probe loss, EMA weights at each run's last step (0, 100)"
    alone = load_runs([tmp_path / "dtr_s0" / "version_0"])
    assert plots.loss_by_t(alone).axes[0].get_title() == "probe loss, EMA weights at step 100"


@pytest.mark.parametrize(
    "source, metric, ylabel",
    [("conflict", "cos", "gradient of interval (t)"), ("affinity", "tag", "update from interval (t)")],
)
def test_matrix_grid(real, source, metric, ylabel):
    fig = plots.matrix_grid(real, source, metric)
    grid = [ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]
    assert len(grid) == 2 * 3  # two runs × measurements at steps 0, 2, 4
    assert [ax.get_title() for ax in grid[:3]] == ["step 0", "step 2", "step 4"]
    assert [t.get_text() for t in grid[0].get_yticklabels()] == INTERVALS_K3
    assert [t.get_text() for t in grid[3].get_xticklabels()] == INTERVALS_K3
    assert ylabel in grid[0].get_ylabel()
    # the drawn cells are the recorded matrix of the first run at step 0
    rows = getattr(real, source)
    rows = rows[(rows["metric"] == metric) & (rows["step"] == 0) & (rows["run"] == real[0].name)]
    expected = np.zeros((3, 3))
    expected[rows["i"].astype(int), rows["j"].astype(int)] = rows["value"]
    assert np.allclose(np.asarray(grid[0].collections[0].get_array()).reshape(3, 3), expected)


def test_cos_vs_distance(real):
    ax = plots.cos_vs_distance(real).axes[0]
    assert ax.get_xlabel() == "distance between intervals (timesteps)"
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and ln.get_marker() == "o"]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(solid) == 2 and len(dashed) == 2  # per run: last (step 4) and first (step 0) measurement
    assert np.allclose(solid[0].get_xdata(), [1000 / 3, 2000 / 3])


def test_conflict_share(real):
    ax = plots.conflict_share(real).axes[0]
    assert ax.get_ylabel() == "share with cos < 0" and ax.get_ylim() == (-0.02, 1.02)
    assert len(ax.get_legend().get_texts()) == 2
    blocks = plots.conflict_share(real, blocks=True)
    assert [a.get_title() for a in blocks.axes if a.get_visible()] == [f"blocks.{b}" for b in range(4)]


def test_routing_vs_affinity(real):
    fig = plots.routing_vs_affinity(real)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    vanilla, dtr = panels[:3], panels[3:]
    assert [vanilla[0].get_title(), dtr[0].get_title()] == ["vanilla: routing masks", "dtr: routing masks"]
    masks = dtr[0].get_images()[0].get_array()
    assert masks.shape == (1000, 128) and dtr[0].get_ylabel() == "timestep t"  # T × C
    # DTR at t = 0 uses the first ⌊0.8·128⌋ = 102 channels; unrouted uses all
    assert masks[0].sum() == 102 and vanilla[0].get_images()[0].get_array().min() == 1
    # unrouted is a dark block, not white on white; the colour bar names the two states
    unrouted = vanilla[0].get_images()[0]
    assert max(unrouted.to_rgba(1.0)[:3]) < 0.4 and min(unrouted.to_rgba(0.0)[:3]) > 0.4
    bar = unrouted.colorbar.ax
    assert [t.get_text() for t in bar.get_yticklabels()] == ["masked", "active"]
    assert dtr[1].get_title() == "mask overlap (IoU)"
    assert [t.get_text() for t in dtr[1].get_xticklabels()] == INTERVALS_K3
    assert "Spearman ρ(IoU, Z)" in dtr[2].get_xlabel() and "undefined" in vanilla[2].get_xlabel()


def test_routing_vs_affinity_one_extreme_cell_leaves_the_other_runs_colours(tmp_path):
    """Z on its fixed scale: a run with a cell of −4.2 beside one whose |Z| ≤ 0.03 leaves the latter's
    colours as they are when it is drawn alone (a scale shared by maximum made them all near-white)."""
    small = write_fake_run(tmp_path, "dtr", 0)
    extreme = write_fake_run(tmp_path, "vanilla", 0)
    for run, change in ((small, lambda v: v / 100), (extreme, lambda v: -4.2 if v == -3.3 else v)):
        path = run / "records" / "affinity.csv"
        with path.open() as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            r["value"] = change(round(float(r["value"]), 6))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def colours(runs):
        fig = plots.routing_vs_affinity(load_runs(runs))
        mesh = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][2].collections[0]
        return mesh.to_rgba(mesh.get_array()), mesh.get_array()

    alone, values = colours([small])
    beside, _ = colours([small, extreme])
    assert abs(values).max() == pytest.approx(0.033) and np.array_equal(alone, beside)
    # and far from white: T(0.033) / T(1) = (1/0.9 + log10 33) / (1/0.9 + 3) = 0.64 of the way to full red
    assert alone.min() < 0.8


def test_sample_grids(real):
    fig = plots.sample_grids(real)
    assert len(fig.axes) == 2 and all(ax.get_images() for ax in fig.axes)
    assert fig.axes[0].get_title().endswith("step 4")


def test_palette_is_fixed_per_label_and_never_runs_out():
    alone = plots.palette(["dtr"])
    assert alone["dtr"] == labels.colour("dtr") == labels.PALETTE[labels.slot("dtr")]
    both = plots.palette(["vanilla", "dtr", "min_snr"])
    assert alone["dtr"] == both["dtr"] and len(set(both.values())) == 3
    many = [f"routing_{k}" for k in range(40)]  # more groups than any fixed list: all told apart
    every = plots.palette(many)
    assert len(set(every.values())) == 40 and set(every.values()) <= set(labels.PALETTE)
    # two labels that hash to one colour: the later in label order takes the next free one
    first, second = next((a, b) for a in many for b in many if a < b and labels.slot(a) == labels.slot(b))
    pair = plots.palette([second, first])
    assert pair[first] == labels.colour(first) and pair[second] != pair[first]
    # a colour a run recorded wins over the hash
    assert plots.palette(["dtr"], {"dtr": "#123456"}) == {"dtr": "#123456"}


def test_the_label_palette_is_48_distinct_colours_from_a_stable_hash():
    import hashlib

    assert len(labels.PALETTE) == len(set(labels.PALETTE)) == 48
    assert all(len(c) == 7 and c.startswith("#") for c in labels.PALETTE)
    # MD5 of b"dtr", not Python's per-process salted hash(): the same colour in every process
    assert labels.slot("dtr") == int(hashlib.md5(b"dtr").hexdigest(), 16) % 48


def test_missing_records_name_the_file(tmp_path):
    run = write_fake_run(tmp_path, "dtr", 0)
    (run / "records" / "affinity.csv").unlink()
    runs = load_runs([run])
    with pytest.raises(RunError, match=r"no run has metric 'tag' in records/affinity.csv"):
        plots.matrix_grid(runs, "affinity", "tag")
    # the IoU alone still draws, with the missing affinity said in its panel
    fig = plots.routing_vs_affinity(runs)
    assert any("no 'tag' recorded" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_style_restores_only_its_own_settings():
    grid = plt.rcParams["axes.grid"]
    was = matplotlib.is_interactive()
    try:
        with plots.style():
            assert plt.rcParams["axes.grid"] is True
            # a notebook's inline backend turns interactive mode on while the first figure is drawn
            matplotlib.interactive(True)
        assert plt.rcParams["axes.grid"] == grid and matplotlib.is_interactive()
    finally:
        matplotlib.interactive(was)


def test_matrix_grid_run_still_training_shows_its_own_steps(tmp_path):
    ahead = write_fake_run(tmp_path, "vanilla", 0)
    behind = write_fake_run(tmp_path, "dtr", 0)
    conflict = behind / "records" / "conflict.csv"
    lines = conflict.read_text().splitlines(keepends=True)
    conflict.write_text(
        "".join(ln for ln in lines if not ln.startswith(("50,", "100,")))
    )  # only step 0 so far
    fig = plots.matrix_grid(load_runs([ahead, behind]), "conflict", "cos")
    grid = [ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in grid] == ["step 0", "step 50", "step 100", "step 0"]
    # the run behind draws its step 0 once; the columns it has not reached say so instead of repeating it
    empty = [ax for ax in fig.axes if not ax.collections and ax.texts]
    assert [ax.texts[0].get_text() for ax in empty] == [
        "no step 50\n(last measured: 0)", "no step 100\n(last measured: 0)"
    ]


def test_paired_gains_draws_means_and_interval_bars():
    """One panel per (metric, axis); each point at its mean, its bar from ci_low to ci_high."""
    import pandas as pd

    from dtr_lab.plots import paired_gains

    table = pd.DataFrame([
        {"axis": "width", "x": 128, "metric": "fid", "diff": -1.0, "ci_low": -3.0, "ci_high": 1.0},
        {"axis": "width", "x": 256, "metric": "fid", "diff": -4.0, "ci_low": -5.0, "ci_high": -3.5},
        {"axis": "steps", "x": 1500, "metric": "fid", "diff": -1.0, "ci_low": -3.0, "ci_high": 1.0},
        {"axis": "steps", "x": 6000, "metric": "fid", "diff": 2.0, "ci_low": 0.5, "ci_high": 3.0},
    ])
    fig = paired_gains(table, {"fid": "Δ FID"})
    assert [ax.get_xlabel() for ax in fig.axes] == ["width", "steps"]
    width = fig.axes[0]
    assert list(width.get_lines()[0].get_ydata()) == [-1.0, -4.0]
    bars = width.collections[0].get_segments()  # one vertical segment per point
    assert [tuple(s[:, 1]) for s in bars] == [(-3.0, 1.0), (-5.0, -3.5)]


def test_convergence_curves_of_one_arm_draw_its_curve_without_comparisons():
    """A study of one arm (e.g. benchmarks/study_time.py's runs) has no paired table: the curves alone."""
    import pandas as pd

    scores = pd.DataFrame([
        {"arm": "vanilla-uniform", "routing": "vanilla", "weighting": "uniform", "seed": 0, "step": step,
         "metric": "fid", "value": value}
        for step, value in [(250, 80.0), (500, 40.0), (750, 30.0)]
    ])
    fig = plots.convergence_curves(scores, pd.DataFrame())
    top, zoom = fig.axes
    (line,) = top.get_lines()
    assert list(line.get_ydata()) == [80.0, 40.0, 30.0] and line.get_label() == "vanilla-uniform (1 seeds)"


def test_convergence_curves_draw_every_arm_over_one_panel_per_comparison():
    import pandas as pd

    steps = [250, 500, 750]
    scores = pd.DataFrame(
        [
            {"arm": f"{r}-uniform", "routing": r, "weighting": "uniform", "seed": seed, "step": step,
             "metric": "fid", "value": 100.0 / (k + 1) + seed + (5 if r == "dtr" else 0)}
            for r in ("vanilla", "dtr") for seed in (0, 1) for k, step in enumerate(steps)
        ]
    )
    paired = pd.DataFrame(
        [
            {"comparison": name, "step": step, "metric": "fid", "pairs": 2, "diff": 5.0, "ci_low": 1.0,
             "ci_high": 9.0}
            for name in ("DTR − vanilla", "DTR − vanilla (again)") for step in [0, *steps]
        ]
    )
    fig = plots.convergence_curves(scores, paired, target=50)
    top, zoom, *panels = fig.axes
    assert len(panels) == 2 and [ax.get_title() for ax in panels] == [
        "DTR − vanilla (2 pairs)", "DTR − vanilla (again) (2 pairs)"
    ]
    # one line per arm (its mean over the 2 seeds) and the target
    means = {line.get_label(): list(line.get_ydata()) for line in top.get_lines()}
    assert means["vanilla-uniform (2 seeds)"] == pytest.approx([100.5, 50.5, 100 / 3 + 0.5])
    assert means["target 50"] == [50, 50]
    # the difference's panel: its mean at every scoring point, never the probe-only step 0
    line = panels[0].get_lines()[0]
    assert list(line.get_xdata()) == steps and list(line.get_ydata()) == [5.0, 5.0, 5.0]
    # the plateau: the later half of the scoring points (from the middle one, 500) on a linear y spanning the
    # bands at the last one: vanilla 100/3 + 0.5 ± 0.707 (seeds 0 and 1), dtr 5 higher; 15 % margin
    assert zoom.get_yscale() == "linear"
    assert [list(ln.get_xdata()) for ln in zoom.get_lines()] == [[500, 750]] * 2
    low, high = 100 / 3 + 0.5 - 0.5**0.5, 100 / 3 + 5.5 + 0.5**0.5
    assert zoom.get_ylim() == pytest.approx((low - 0.15 * (high - low), high + 0.15 * (high - low)))
    # log y labelled at 1, 2 and 5 of each decade, not only at 100
    fig.canvas.draw()
    labels = {t.get_text() for t in top.get_yticklabels() if top.get_ylim()[0] <= t.get_position()[1]}
    assert {"50", "100"} <= labels
    plt.close(fig)
