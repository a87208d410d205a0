"""dtr_lab.runs: reading run directories (hand-made and real), labels, robustness, reductions."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CONFLICT_EDGES, write_fake_run

from dtr_lab.runs import (
    RunError,
    comparable,
    continued,
    distance_table,
    final_metrics,
    final_scalars,
    find_run_dirs,
    interval_edges,
    interval_labels,
    load_run,
    load_runs,
    loss_by_t_table,
    read_records,
    record_key,
    routing_affinity_correlation,
    run_labels,
)


@pytest.fixture
def fake_runs(tmp_path) -> list[Path]:
    return [
        write_fake_run(tmp_path, "vanilla", 0, 1.0),
        write_fake_run(tmp_path, "vanilla", 1, 3.0),
        write_fake_run(tmp_path, "dtr", 0, 1.0),
        write_fake_run(tmp_path, "dtr", 1, 1.0),
    ]


def test_labels_from_config():
    dtr = {
        "seed_everything": 3,
        "model": {
            "routing": {"class_path": "dtr_lab.routing.DTRRouting"},
            "net": {"class_path": "x.DiT", "init_args": {"size": "DiT-S/2"}},
            "weighting": {"class_path": "dtr_lab.diffusion.weighting.MinSNR"},
        },
    }
    assert run_labels(dtr) == {
        "routing": "dtr",
        "weighting": "min_snr",
        "mtl": "none",
        "model": "DiT-S/2",
        "seed": 3,
    }
    # no routing is the module default NoRouting; seed_everything: true falls back to model.seed
    bare = {
        "seed_everything": True,
        "model": {
            "seed": 7,
            "net": {"class_path": "dtr_lab.models.UNet"},
            "mtl": {"class_path": "dtr_lab.mtl.UncertaintyWeighting"},
        },
    }
    assert run_labels(bare) == {
        "routing": "vanilla",
        "weighting": "uniform",
        "mtl": "uw",
        "model": "UNet",
        "seed": 7,
    }
    assert run_labels({"model": {"routing": "dtr_lab.routing.RandomRouting"}})["routing"] == "rtr"


def test_load_run_frames_and_labels(fake_runs):
    run = load_run(fake_runs[2])
    assert run.labels == {
        "run": "dtr_s0/version_0",
        "routing": "dtr",
        "weighting": "uniform",
        "mtl": "none",
        "model": "DiT-T/2",
        "seed": 0,
    }
    assert set(run.scalars["tag"]) == {"train/loss", "val/loss_ema"}
    assert run.scalars[run.scalars["tag"] == "train/loss"]["value"].tolist() == [
        float(s + 1) for s in range(10)
    ]
    assert len(run.conflict[run.conflict["metric"] == "cos"]) == 3 * 16
    assert len(run.affinity) == 2 * 16 and len(run.routing) == 16
    assert (run.loss_by_t["routing"] == "dtr").all() and (run.conflict["seed"] == 0).all()
    assert interval_edges(run.intervals, "conflict") == CONFLICT_EDGES
    assert interval_labels(CONFLICT_EDGES, 4) == ["0–249", "250–499", "500–749", "750–999"]
    assert interval_labels(None, 2) == ["interval 0", "interval 1"]
    assert run.problems == []


def test_load_runs_groupby_config(fake_runs, tmp_path):
    runs = load_runs(str(tmp_path / "*" / "version_0"))
    assert len(runs) == 4
    final = final_scalars(runs.scalars, ["train/loss"])
    # the last logged loss, scale·10 at step 9 (never a mean of several); vanilla seeds have scale 1 and 3
    by = final.groupby("routing")["value"].mean()
    assert by["vanilla"] == pytest.approx((10 + 30) / 2) and by["dtr"] == pytest.approx(10)
    assert set(final["step"]) == {9}
    # a folder above the runs finds all of them; select filters by label
    assert len(load_runs(tmp_path)) == 4
    assert [r.labels["seed"] for r in runs.select(routing="dtr")] == [0, 1]
    with pytest.raises(RunError, match="no run has labels"):
        runs.select(routing="rtr")


def test_loss_by_t_ratio_hand_worked(fake_runs):
    runs = load_runs(fake_runs)
    table = loss_by_t_table(runs.loss_by_t, "probe_ema").set_index(["routing", "t"])
    # vanilla mean over scales 1 and 3 is 2·(t+10)/1000; dtr's is (t+10)/1000: ratio 1/2 at every t
    assert table.loc[("vanilla", 500), "mean"] == pytest.approx(2 * 510 / 1000)
    assert table.loc[("dtr", 500), "std"] == pytest.approx(0.0)
    assert np.allclose(table.xs("dtr")["ratio"], 0.5)
    assert np.allclose(table.xs("vanilla")["ratio"], 1.0)
    with pytest.raises(RunError, match="'probe_nope'.*loss_by_t.csv"):
        loss_by_t_table(runs.loss_by_t, "probe_nope")


def test_distance_in_timesteps_and_last_step(fake_runs):
    runs = load_runs(fake_runs[:1])
    table = distance_table(runs.conflict, runs.intervals).sort_values("distance")
    assert (table["step"] == 100).all()
    assert table["distance_t"].tolist() == [0.0, 250.0, 500.0, 750.0]
    assert table["cos"].tolist() == pytest.approx([1 - d for d in range(4)])


def test_rank_correlation_hand_worked(fake_runs):
    runs = load_runs([fake_runs[0], fake_runs[2]])
    corr = routing_affinity_correlation(runs).set_index("routing")
    # off-diagonal pairs: IoU = 1/(1+|i-j|), Z = -|i-j| - 0.1 i; both fall with distance, so the
    # ranks agree except for the ties IoU has within one distance: brute-force Spearman below
    iou, aff = [], []
    for i in range(4):
        for j in range(4):
            if i != j:
                iou.append(1 / (1 + abs(i - j)))
                aff.append(-abs(i - j) - 0.1 * i)

    def ranks(v):
        order = sorted(v)
        return [np.mean([k for k, w in enumerate(order) if w == x]) for x in v]

    expected = np.corrcoef(ranks(iou), ranks(aff))[0, 1]
    assert corr.loc["dtr", "rho"] == pytest.approx(expected) and corr.loc["dtr", "pairs"] == 12
    assert 0.8 < expected < 1
    assert math.isnan(corr.loc["vanilla", "rho"]) and "undefined" in corr.loc["vanilla", "note"]


def test_cut_off_records_keep_complete_lines(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("step,metric,i,j,value\r\n5,cos,0,1,0.25\r\n5,cos,1,0,0.2")  # last line has no newline
    frame, problems = read_records(path)
    assert frame["value"].tolist() == [0.25] and frame["i"].tolist() == [0]
    assert problems == [f"{path}: line 3 is cut off (no newline at its end; ignored)"]
    path.write_text("step,metric,i,j,value\n5,cos,0,1,0.25\nnot,a,row\n7,neg_share,,,0.5\n")
    frame, problems = read_records(path)
    assert frame["step"].tolist() == [5, 7] and frame["i"].isna().tolist() == [False, True]
    assert problems == [f"{path}: 1 malformed row(s) ignored (line 3; line 3: 3 fields where 5 are expected)"]
    path.write_text("")
    frame, problems = read_records(path)
    assert frame.empty and problems == [
        f"{path}: empty (0 bytes, not even its header: its writer never wrote, or its disk refused)"
    ]


def test_bad_paths_name_the_path(tmp_path, fake_runs):
    with pytest.raises(RunError, match="no such"):
        load_run(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunError, match=r"plain: not a run directory"):
        find_run_dirs(tmp_path / "plain")
    empty = tmp_path / "empty" / "version_0"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text("model: {}\n")
    with pytest.raises(RunError, match=r"version_0: run has no logged metrics"):
        load_run(empty)
    seen = []
    runs = load_runs([fake_runs[0], tmp_path / "plain", empty], on_error=seen.append)
    assert len(runs) == 1 and len(seen) == 2
    assert all("\n" not in str(e) for e in seen)


def test_no_training_imports():
    code = (
        "import sys, dtr_lab.runs, dtr_lab.plots; "
        "print([m for m in ('torch', 'lightning', 'dtr_lab.module', 'dtr_lab.routing') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_real_run_and_truncated_copy(tiny_runs, tmp_path):
    run = load_run(tiny_runs["dtr"])
    assert run.labels["routing"] == "dtr" and run.labels["model"] == "DiT-T/2"
    assert (run.scalars["tag"] == "train/loss").sum() >= 2
    for name in ("loss_by_t", "conflict", "affinity", "routing"):
        assert len(getattr(run, name)) > 0, name
    # cut every records file mid-line and the events file in half: what is complete still reads
    copy = tmp_path / "cut" / "version_0"
    shutil.copytree(tiny_runs["dtr"], copy)
    for f in (copy / "records").glob("*.csv"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) - 3])
    for f in copy.glob("events.out.tfevents.*"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    cut = load_run(copy)
    assert any("cut off" in p for p in cut.problems)
    for name in ("loss_by_t", "conflict", "affinity"):
        full, part = getattr(run, name), getattr(cut, name)
        assert 0 < len(part) < len(full), name
        # the complete lines are exactly the original's first rows
        assert part["value"].tolist() == full["value"].iloc[: len(part)].tolist()
    assert 0 < (cut.scalars["tag"] == "train/loss").sum() <= (run.scalars["tag"] == "train/loss").sum()


def test_tensorboard_layout_and_hparams(tiny_runs):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    for routing, path in tiny_runs.items():
        acc = EventAccumulator(str(path))
        acc.Reload()
        event = acc.Tensors("custom_scalars__config__")[0]
        layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())
        charts = {c.title: [(ch.title, list(ch.multiline.tag)) for ch in c.chart] for c in layout.category}
        # one chart per probe timestep (5 evenly spaced over 0…999) and per conflict distance (K = 3)
        assert charts["loss by t: probe, EMA weights"] == [
            (f"t = {t}", [f"^loss_by_t/probe_ema/t{t:04d}$"]) for t in (0, 250, 500, 749, 999)
        ]
        assert [c for c, _ in charts["gradient conflict"]][1:3] == [
            "mean cos, intervals 1 apart",
            "mean cos, intervals 2 apart",
        ]
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert start.session_start_info.hparams["routing"].string_value == routing
        assert start.session_start_info.hparams["model"].string_value == "DiT-T/2"
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {"hparams/probe_loss_ema", "hparams/fid", "hparams/accuracy"} <= {
            m.name.tag for m in experiment.metric_infos
        }
        # the dashboard shows 5 columns at first, differing ones first, then by name (TensorBoard's rule)
        first = sorted(experiment.hparam_infos, key=lambda h: (not h.differs, h.name))[:5]
        if routing == "dtr":  # DTRRouting(alpha=4, beta=0.8) from experiments/routing/dtr.yaml
            assert start.session_start_info.hparams["routing.alpha"].number_value == 4.0
            assert start.session_start_info.hparams["routing.beta"].number_value == 0.8
            shown = ["routing", "routing.alpha", "routing.beta", "weighting", "batch_size"]
            assert [h.name for h in first] == shown
        else:  # NoRouting has no options
            assert [h.name for h in first][:2] == ["routing", "weighting"]

        # the final probe loss it reports: the mean of the last step's probe_ema rows, by hand
        with (path / "records" / "loss_by_t.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["metric"] == "probe_ema"]
        last = max(int(r["step"]) for r in rows)
        expected = np.mean([float(r["value"]) for r in rows if int(r["step"]) == last])
        scalars = load_run(path).scalars
        logged = scalars[scalars["tag"] == "hparams/probe_loss_ema"]["value"]
        assert logged.tolist() == pytest.approx([expected], rel=1e-6)


def test_damaged_events_file_reads_to_the_damage_and_says_what_was_lost(tiny_runs, tmp_path):
    """A flipped byte mid-file: the scalars before it are read (exactly the original's), and a problem
    names the file and how many of its bytes were lost."""
    run = load_run(tiny_runs["dtr"])
    copy = tmp_path / "flipped" / "version_0"
    shutil.copytree(tiny_runs["dtr"], copy)
    (events,) = copy.glob("events.out.tfevents.*")
    data = bytearray(events.read_bytes())
    at = len(data) // 2
    data[at] ^= 0x01
    events.write_bytes(bytes(data))
    damaged = load_run(copy)
    (problem,) = [p for p in damaged.problems if events.name in p]
    start = int(problem.split("unreadable from byte ")[1].split()[0])
    assert start <= at  # the damaged record and everything after it are lost, and said to be
    assert f"of {len(data)} (damaged or cut off)" in problem and f"last {len(data) - start} bytes" in problem
    full, part = run.scalars, damaged.scalars
    assert 0 < len(part) < len(full)
    key = ["tag", "step", "value"]
    merged = part[key].merge(full[key], on=["tag", "step"], suffixes=("", "_full"))
    assert len(merged) == len(part) and (merged["value"] == merged["value_full"]).all()


def test_nan_values_are_values_and_malformed_rows_are_not(tmp_path):
    """At divergence the callbacks write nan: kept as NaN; a cell that is no number is dropped."""
    path = tmp_path / "loss_by_t.csv"
    path.write_text("step,metric,i,j,value\n5,probe,0,,nan\n6,probe,0,,0.5\n7,probe,0,,oops\n8,probe,x,,1\n")
    frame, problems = read_records(path)
    assert frame["step"].tolist() == [5, 6] and math.isnan(frame["value"][0]) and frame["value"][1] == 0.5
    assert problems == [
        f"{path}: 2 malformed row(s) ignored (line 4, 5; line 4: value 'oops' is not a number)"
    ]


def test_patterns_and_folders_pass_over_runs_without_output(tmp_path, fake_runs):
    """An empty version_N and a failed start's leftovers (config and an events file without metrics)
    are skipped with a note when a pattern or a parent folder turns them up."""
    from torch.utils.tensorboard import SummaryWriter

    root = fake_runs[0].parent
    (root / "version_1").mkdir()
    failed = root / "version_2"
    failed.mkdir()
    (failed / "config.yaml").write_text("model: {}\n")
    SummaryWriter(str(failed)).close()
    # the pattern turns up both; the folder walk only the one that looks like a run
    for paths, notes in (([str(root / "version_*")], 2), ([root], 1)):
        runs = load_runs(paths)
        assert [r.path for r in runs] == [fake_runs[0]]
        assert sum("holds no run output" in p for p in runs.problems) == notes
    with pytest.raises(RunError, match="no logged metrics"):  # named on its own, it is still an error
        load_runs([failed])


def _derived_run(fit: Path, name: str, config: dict, scalars: dict[str, list[tuple[int, float]]]) -> Path:
    """A run folder beside ``fit`` with the given config and scalars (tag -> [(step, value)])."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    run = fit.parent / name
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with SummaryWriter(str(run)) as writer:
        for tag, points in scalars.items():
            for step, value in points:
                writer.add_scalar(tag, value, step)
    return run


def test_a_resumed_run_joins_its_fit_and_a_test_goes_with_it(tmp_path):
    import yaml

    fit = write_fake_run(tmp_path, "dtr", 0, 1.0)  # train/loss = step + 1 at steps 0…9; no command.yaml
    config = yaml.safe_load((fit / "config.yaml").read_text())
    ckpt = str(fit / "checkpoints" / "last.ckpt")
    quality = {"class_path": "dtr_lab.callbacks.SampleQuality", "init_args": {"test_num_samples": 30}}
    continued = {"train/loss": [(step, 100.0 + step) for step in range(5, 15)]}
    resumed = _derived_run(fit, "version_1", {**config, "ckpt_path": ckpt}, continued)
    (resumed / "command.yaml").write_text(f"kind: resumed\nckpt_path: {ckpt}\nckpt_step: 5\n")
    # an older test run, without command.yaml: told by its checkpoint and its test/ scalars
    test_config = {**config, "ckpt_path": ckpt, "trainer": {"callbacks": [quality]}}
    test = _derived_run(fit, "version_2", test_config, {"test/fid": [(0, 44.0)]})
    (test / "records").mkdir()
    (test / "records" / "quality.csv").write_text("step,metric,i,j,value\n9,test/fid,,,44.0\n")

    runs = load_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.kind.kind == "fit" and run.continuations == [resumed] and run.steps == 14
    assert [e.path for e in run.evaluations] == [test] and run.evaluations[0].kind.kind == "test"
    loss = run.scalars[run.scalars["tag"] == "train/loss"]
    # steps 0…5 of the fit (its rows after the checkpoint at step 5 were trained again), then the resumed run
    assert list(loss["step"]) == list(range(15))
    assert list(loss["value"]) == [1.0, 2.0, 3.0, 4.0, 5.0, *(100.0 + s for s in range(5, 15))]
    assert set(loss["run"]) == {run.name}
    assert final_metrics(run)["train/loss (last)"] == 114.0 and final_metrics(run)["test FID, N = 30"] == 44.0
    assert any("resumes dtr_s0/version_0 from step 5: read as one run" in p for p in runs.problems)
    assert any("version_2 is a test of dtr_s0/version_0's checkpoint" in p for p in runs.problems)
    # read alone, the continuation is a run of its own, and says where its curves start
    alone = load_runs([resumed])
    assert len(alone) == 1 and alone[0].steps == 14
    assert "which is not among the runs read: its curves start at step 5" in alone.problems[0]


def test_a_record_no_reader_knows_is_read_joined_and_concatenated(tmp_path):
    """records/grad_norm.csv, which no list names, is run.records["grad_norm"] with the label columns; its
    resumed part replaces the fit's rows after the checkpoint (step 5) as every record's do; Runs
    concatenates it over the runs that hold it, and the known records stay attributes."""
    import yaml

    fit = write_fake_run(tmp_path, "dtr", 0, 1.0)
    other = write_fake_run(tmp_path, "vanilla", 0, 1.0)
    rows = lambda steps, v: "".join(f"{s},norm,0,,{v + s}\n" for s in steps)  # noqa: E731
    (fit / "records" / "grad_norm.csv").write_text("step,metric,i,j,value\n" + rows(range(0, 10, 2), 0))
    config = yaml.safe_load((fit / "config.yaml").read_text())
    ckpt = str(fit / "checkpoints" / "last.ckpt")
    resumed = _derived_run(fit, "version_1", {**config, "ckpt_path": ckpt}, {"train/loss": [(6, 1.0)]})
    (resumed / "command.yaml").write_text(f"kind: resumed\nckpt_path: {ckpt}\nckpt_step: 5\n")
    (resumed / "records").mkdir()
    (resumed / "records" / "grad_norm.csv").write_text("step,metric,i,j,value\n" + rows((6, 8, 10), 100))

    alone = load_run(fit)
    assert alone.records["grad_norm"]["value"].tolist() == [0, 2, 4, 6, 8]
    assert set(alone.records["grad_norm"]["routing"]) == {"dtr"}
    assert alone.conflict is alone.records["conflict"]
    runs = load_runs(tmp_path)
    run = runs.select(routing="dtr")[0]
    joined = run.records["grad_norm"]
    assert joined["step"].tolist() == [0, 2, 4, 6, 8, 10]
    assert joined["value"].tolist() == [0, 2, 4, 106, 108, 110]
    assert run.steps == 10 and set(joined["run"]) == {run.name}
    assert "grad_norm" not in load_run(other).records and load_run(other).record("grad_norm").empty
    assert runs.records["grad_norm"]["value"].tolist() == [0, 2, 4, 106, 108, 110]
    assert len(runs.conflict) == len(run.conflict) + len(load_run(other).conflict) > 0


def test_a_run_is_labelled_by_what_it_recorded_and_an_old_one_by_its_config(tmp_path):
    from dtr_lab.storage import labels

    recorded = write_fake_run(tmp_path, "dtr", 0, 1.0)
    labels.write(recorded, "soft_dtr")  # as the CLI does for a routing labelled "soft_dtr"
    run = load_run(recorded)
    assert run.labels["routing"] == "soft_dtr" and run.colours == {"soft_dtr": labels.colour("soft_dtr")}
    old = write_fake_run(tmp_path, "vanilla", 0, 1.0)  # no labels.yaml: NoRouting's label then
    assert load_run(old).labels["routing"] == "vanilla" and load_run(old).colours == {}
    (old / labels.FILE).write_text("routing: [cut")  # cut off while written: as an old run
    assert load_run(old).labels["routing"] == "vanilla" and load_runs([recorded, old]).colours == run.colours


def test_continued_replaces_rows_after_the_resume_step_and_keeps_the_latest_write():
    import pandas as pd

    fit = pd.DataFrame({"step": [1, 2, 3, 3], "metric": ["a", "a", "a", "b"], "value": [1, 2, 3, 4]})
    part = pd.DataFrame({"step": [2, 4], "metric": ["a", "a"], "value": [20, 40]})
    out = continued(fit, part, 2, record_key(part))
    # step 3 (after the resume at 2) is dropped; step 2 was written again: the part's row wins
    assert out.values.tolist() == [[1, "a", 1], [2, "a", 20], [4, "a", 40]]


def test_arms_average_only_fits_of_the_same_length(tmp_path):
    runs = [write_fake_run(tmp_path, "dtr", seed, 1.0) for seed in (0, 1, 2)]
    short = tmp_path / "dtr_short" / "version_0"
    shutil.copytree(runs[0], short)
    for f in short.glob("events.out.tfevents.*"):
        f.unlink()
    for f in (short / "records").glob("*.csv"):  # records end at step 100: keep only step 0
        lines = f.read_text().splitlines()
        f.write_text("\n".join(lines[:1] + [ln for ln in lines[1:] if ln.split(",")[0] == "0"]) + "\n")
    kept, notes = comparable(load_runs(tmp_path), "routing")
    assert sorted(r.path for r in kept) == sorted(runs) and {r.steps for r in kept} == {100}
    assert notes == [
        "not averaged with the comparable fits of their routing: dtr_short/version_0 (fit, 0 steps)"
    ]
