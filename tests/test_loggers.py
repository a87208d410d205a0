"""CSVLogger, MLFlowLogger (file store) and WandbLogger (offline): two runs in a row each, every one with
its own config, records, samples and routing maps, its images and hyper-parameters in the logger, and read
back by dtr_lab.runs and analysis/make_figures.py from the logger's local store."""

from __future__ import annotations

import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CALLBACKS, tiny_fit_args
from helpers import DIGITS, tiny

from dtr_lab.cli import main
from dtr_lab.runs import load_run, load_runs
from dtr_lab.runs.logger_stores import read_csv_metrics, read_mlflow_metrics, wandb_records

pytest.importorskip("mlflow", reason="the loggers extra: pip install 'dtr_lab[loggers]'")
pytest.importorskip("wandb", reason="the loggers extra: pip install 'dtr_lab[loggers]'")
from wandb.proto import wandb_internal_pb2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOGGERS = {
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "mlflow": "lightning.pytorch.loggers.MLFlowLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
}
ARMS = ("vanilla", "dtr")
FIGURES = 10  # analysis/make_figures.py's figures (tests/test_analysis_scripts.py names them)
FIT_ALL = "from dtr_lab.cli import main\nfor args in {runs!r}:\n    main(args)\n"


def fit_args(root: Path, kind: str, arm: str) -> list[str]:
    """A tiny digits run (4 steps, every analysis callback) with the logger `kind` saving in root/kind."""
    args = tiny_fit_args(root / kind, arm, f"{arm}.yaml", root / "tiny.yaml")
    cut = args.index("--trainer.logger.init_args.save_dir")  # the class first: its options follow
    options = args[cut:]
    if kind != "csv":  # MLflow names an experiment, W&B a run; the folder is theirs
        options = options[: options.index("--trainer.logger.init_args.name")]
    return [*args[:cut], "--trainer.logger", LOGGERS[kind], *options]


@pytest.fixture(scope="module")
def logger_runs(tmp_path_factory) -> dict[str, Path]:
    """{kind: store}: for each logger, an unrouted then a DTR run, all started from one empty working
    folder in one interpreter (importing torch and Lightning dominates runs this small)."""
    root = tmp_path_factory.mktemp("loggers")
    (root / "tiny.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": TINY_CALLBACKS}}))
    (root / "cwd").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **{f"WANDB_{d}_DIR": str(root / f"wandb-{d.lower()}") for d in ("CONFIG", "CACHE", "DATA")},
    }
    env.pop("MLFLOW_ALLOW_FILE_STORE", None)  # dtr_lab allows the file store it reads runs from
    runs = [fit_args(root, kind, arm) for kind in LOGGERS for arm in ARMS]
    done = subprocess.run(
        [sys.executable, "-c", FIT_ALL.format(runs=runs)],
        cwd=root / "cwd",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((root / "cwd").iterdir())  # nothing in the working folder
    return {kind: root / kind for kind in LOGGERS}


def run_dirs(root: Path) -> list[Path]:
    """The run folders (config.yaml beside records/) under a logger's store, oldest first."""
    found = (p.parent for p in root.rglob("config.yaml") if (p.parent / "records").is_dir())
    return sorted(found, key=lambda p: (p / "config.yaml").stat().st_mtime)


@pytest.mark.parametrize("kind", LOGGERS)
def test_two_runs_each_in_a_folder_of_its_own(logger_runs, kind):
    dirs = run_dirs(logger_runs[kind])
    assert len(dirs) == 2
    for run, arm in zip(dirs, ARMS, strict=True):
        routing = yaml.safe_load((run / "config.yaml").read_text())["model"]["routing"]["class_path"]
        assert routing.endswith("NoRouting" if arm == "vanilla" else "DTRRouting")
        for name in ("conflict", "affinity", "loss_by_t", "routing"):
            assert (run / "records" / f"{name}.csv").is_file(), name
        assert list((run / "samples").glob("step*.png")) and list((run / "routing").glob("masks_*.png"))
    assert not list(logger_runs[kind].glob("config.yaml"))  # no config the runs share


def hparams_of(kind: str, run: Path) -> dict:
    """The logger's stored hyper-parameters, as nested dicts."""
    if kind == "csv":
        return yaml.safe_load((run / "hparams.yaml").read_text())
    if kind == "mlflow":  # one file per parameter, its key's parts as folders, the value as text
        params, out = run.parent / "params", {}
        for file in (p for p in params.rglob("*") if p.is_file()):
            *parents, leaf = file.relative_to(params).parts
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(file.read_text())
        return out
    out = {}  # W&B: the config updates in the run's log, one JSON value per top-level key
    for raw in wandb_records(next(run.glob("run-*.wandb")))[0]:
        for item in wandb_internal_pb2.Record.FromString(raw).config.update:
            out[item.key] = json.loads(item.value_json)
    return out


@pytest.mark.parametrize("kind", LOGGERS)
def test_hyperparameters_reach_the_logger(logger_runs, kind):
    for run, arm in zip(run_dirs(logger_runs[kind]), ARMS, strict=True):
        stored, config = hparams_of(kind, run), yaml.safe_load((run / "config.yaml").read_text())
        assert stored["run"]["routing"] == arm
        for key in (("model", "optimizer", "init_args", "lr"), ("data", "init_args", "batch_size")):
            value, expected = stored, config
            for part in key:
                value, expected = value[part], expected[part]
            assert value == expected, key
        lr, batch = stored["model"]["optimizer"]["init_args"]["lr"], stored["data"]["init_args"]["batch_size"]
        assert (lr, batch) == (0.001, 16)  # experiments/digits/base.yaml's lr, the tests' batch
        routing = stored["model"]["routing"]
        assert routing["class_path"] == config["model"]["routing"]["class_path"]
        if arm == "dtr":  # the routing's options, as configured (experiments/routing/dtr.yaml)
            assert (routing["init_args"]["alpha"], routing["init_args"]["beta"]) == (4.0, 0.8)


def image_tags(kind: str, run: Path) -> set[str]:
    """The tags of the images and figures a logger holds for a run."""
    if kind == "csv":  # images/<tag>/step<N>.png
        return {p.parent.relative_to(run / "images").as_posix() for p in (run / "images").rglob("step*.png")}
    # MLflow: figures as images/<tag>/step<N>.png, image series as images/<tag, / as ~>+step+<N>+….png
    if kind == "mlflow":
        images = run / "images"
        figures = {p.parent.relative_to(images).as_posix() for p in images.rglob("step*.png")}
        series = {p.name.split("+step+")[0].replace("~", "/") for p in images.glob("*+step+*.png")}
        return figures | series
    tags = set()  # W&B: history values of type images/separated (nested_key [tag, field]), files in files/
    for raw in wandb_records(next(run.glob("run-*.wandb")))[0]:
        fields = {}
        for item in wandb_internal_pb2.Record.FromString(raw).history.item:
            if len(item.nested_key) == 2:
                fields.setdefault(item.nested_key[0], {})[item.nested_key[1]] = json.loads(item.value_json)
        for tag, value in fields.items():
            if value.get("_type") == "images/separated":
                assert all((run / "files" / name).is_file() for name in value["filenames"])
                tags.add(tag)
    return tags


@pytest.mark.parametrize("kind", LOGGERS)
def test_images_and_figures_reach_the_logger(logger_runs, kind):
    expected = {
        "samples/ema",  # SampleGrid
        "routing/iou",  # RoutingMaps' figure
        "conflict/cos",  # GradientConflict's image at each measurement
        "conflict/cos_labelled",  # and its labelled figure at the end
        "affinity/tag_labelled",  # TaskAffinity
        "loss_by_t/probe",  # TimestepLoss
    }
    vanilla, dtr = (image_tags(kind, run) for run in run_dirs(logger_runs[kind]))
    assert expected <= vanilla and expected <= dtr
    assert "routing/masks_table_128" in dtr  # DiT-T/2's 128 channels, DTR's table


def records_by_step(run: Path, metric: str) -> dict[int, float]:
    with (run / "records" / "conflict.csv").open() as f:
        return {int(r["step"]): float(r["value"]) for r in csv.DictReader(f) if r["metric"] == metric}


@pytest.mark.parametrize("kind", LOGGERS)
def test_scalars_read_back_from_the_store(logger_runs, kind):
    """dtr_lab.runs reads the logger's own store: its conflict share equals the one the callback wrote to
    records/ at every measured step, and an MLflow run is found from its run folder too."""
    for run in run_dirs(logger_runs[kind]):
        loaded = load_run(run.parent if kind == "mlflow" else run)
        assert loaded.path == run
        share = loaded.scalars[loaded.scalars.tag == "conflict/neg_share"]
        recorded = records_by_step(run, "neg_share")
        assert sorted(recorded) == [0, 2, 4]
        assert dict(zip(share.step, share.value, strict=True)) == pytest.approx(recorded, rel=1e-6)
        assert set(loaded.scalars[loaded.scalars.tag == "train/loss"].step) >= {1, 2, 3}
    assert len(load_runs(logger_runs[kind])) == 2  # the store's folder finds both runs


def test_the_loggers_hold_the_same_training_curve(logger_runs):
    """The same seeded run logged three ways: the same tags and train/loss curve, whichever store it is
    read from."""
    curves, tags = {}, {}
    for kind in LOGGERS:
        scalars = load_run(run_dirs(logger_runs[kind])[1]).scalars
        loss = scalars[scalars.tag == "train/loss"]
        curves[kind] = dict(zip(loss.step, loss.value, strict=True))
        tags[kind] = set(scalars.tag)
    assert tags["mlflow"] == tags["csv"] == tags["wandb"]  # and no W&B media fields among them
    assert curves["mlflow"] == pytest.approx(curves["csv"], rel=1e-6)
    assert curves["wandb"] == pytest.approx(curves["csv"], rel=1e-6)


@pytest.mark.parametrize("kind", LOGGERS)
def test_make_figures_draws_every_figure_from_each_logger(logger_runs, kind, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    make_figures = importlib.import_module("make_figures")  # in this interpreter: imports once
    runs = [run.parent if kind == "mlflow" else run for run in run_dirs(logger_runs[kind])]
    out = tmp_path / "figures"
    assert make_figures.main([*map(str, runs), "--out", str(out)]) in (None, 0)
    assert f"wrote {FIGURES} figures" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == FIGURES


def fit_in_process(capsys, *args: str) -> tuple[int, str]:
    """`python -m dtr_lab fit` in this interpreter: (exit status, stderr)."""
    with pytest.raises(SystemExit) as done:
        main(["fit", *DIGITS, *args])
    return done.value.code, capsys.readouterr().err


@pytest.mark.parametrize("kind, package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_logger_without_its_package_is_one_line(kind, package, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed: `import mlflow` fails
    monkeypatch.chdir(tmp_path)
    code, err = fit_in_process(capsys, "--trainer.logger", LOGGERS[kind], *tiny(tmp_path / "store"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"needs the package {package}" in err and "pip install 'dtr_lab[loggers]'" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_mlflow_file_store_refused_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    monkeypatch.chdir(tmp_path)
    code, err = fit_in_process(capsys, "--trainer.logger", LOGGERS["mlflow"], *tiny(tmp_path / "store"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "MLFLOW_ALLOW_FILE_STORE=false" in err and "set MLFLOW_ALLOW_FILE_STORE=true" in err
    assert not list(tmp_path.iterdir())


def test_mlflow_artifacts_off_the_local_disk_are_one_line(tmp_path, capsys, monkeypatch):
    """An experiment whose artifacts live in a bucket: dtr_lab has no run folder for its files."""
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.logger", LOGGERS["mlflow"], *tiny(tmp_path / "store")]
    code, err = fit_in_process(capsys, *args, "--trainer.logger.init_args.artifact_location", "s3://bucket/runs")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "artifacts are not on a local disk" in err and "artifact_location" in err
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("records"))


def test_csv_metrics_by_hand(tmp_path):
    """CSVLogger's wide rows, each value at its row's step; empty cells are no value."""
    file = tmp_path / "metrics.csv"
    file.write_text("epoch,step,train/loss,val/loss\n0,0,1.5,\n0,1,,2.0\n0,2,1.25\n")
    rows = read_csv_metrics(file)[0]
    assert sorted((step, tag, value) for step, tag, value, _ in rows) == [
        (0, "epoch", 0.0),
        (0, "train/loss", 1.5),
        (1, "epoch", 0.0),
        (1, "val/loss", 2.0),
        (2, "epoch", 0.0),
        (2, "train/loss", 1.25),
    ]


def test_mlflow_metric_files_by_hand(tmp_path):
    """One file per tag (its path under metrics/), lines 'timestamp value step'; a cut-off line is named."""
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loss").write_text("1000 0.5 0\n2500 0.25 3\n3000 0.1")
    rows, problems = read_mlflow_metrics(tmp_path)
    assert rows == [(0, "train/loss", 0.5, 1.0), (3, "train/loss", 0.25, 2.5)]
    assert len(problems) == 1 and "line 3" in problems[0]


def test_a_cut_off_wandb_log_reads_its_complete_records(logger_runs, tmp_path):
    log = next(run_dirs(logger_runs["wandb"])[1].glob("run-*.wandb"))
    whole, problem = wandb_records(log)
    assert problem is None and len(whole) > 10
    cut = tmp_path / log.name
    cut.write_bytes(log.read_bytes()[: log.stat().st_size // 2])
    part, problem = wandb_records(cut)
    assert 0 < len(part) < len(whole) and part == whole[: len(part)]
    assert problem is not None and "damaged or cut off" in problem


@pytest.mark.parametrize("kind", LOGGERS)
def test_compare_reads_each_store(logger_runs, kind, capsys, monkeypatch):
    """compare.py given the logger's whole store: both runs, grouped by their routing."""
    monkeypatch.syspath_prepend(str(REPO / "analysis"))
    compare = importlib.import_module("compare")
    assert compare.main([str(logger_runs[kind])]) in (None, 0)
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[0] == "metric" and {"dtr", "vanilla"} <= set(header)
