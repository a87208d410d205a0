"""Shared fixtures: tiny real runs made once per test session through the CLI."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import tiny

REPO = Path(__file__).resolve().parents[1]

# every analysis callback at a cadence a 4-step run exercises: measured at steps 0, 2 and 4 (K = 3 intervals)
TINY_CALLBACKS = [
    {"class_path": "dtr_lab.callbacks.SampleGrid", "init_args": {"every_n_steps": 1000, "num_samples": 10}},
    {"class_path": "dtr_lab.callbacks.RoutingMaps", "init_args": {"intervals": {"num_intervals": 3}}},
    {
        "class_path": "dtr_lab.callbacks.TimestepLoss",
        "init_args": {
            "every_n_steps": 1,
            "num_bins": 5,
            "probe_every_n_steps": 2,
            "probe_timesteps": 5,
            "probe_size": 4,
        },
    },
    {
        "class_path": "dtr_lab.callbacks.GradientConflict",
        "init_args": {"every_n_steps": 2, "intervals": {"num_intervals": 3}, "probe_size": 2},
    },
    {
        "class_path": "dtr_lab.callbacks.TaskAffinity",
        "init_args": {"every_n_steps": 2, "intervals": {"num_intervals": 3}, "probe_size": 2},
    },
    {"class_path": "dtr_lab.callbacks.tensorboard_layout.TensorBoardLayout"},
]
TINY_STEPS = 4

# both fits in one interpreter: importing torch and Lightning dominates a run this small
_FIT_ALL = """
import sys
from dtr_lab.cli import main
for args in {runs!r}:
    main(args)
"""


def tiny_fit_args(save_dir: Path, name: str, routing_yaml: str, overrides: Path) -> list[str]:
    """CLI arguments for a 4-step digits run with every analysis callback (seconds on a CPU)."""
    return [
        "fit",
        "--config",
        str(REPO / "experiments/digits/base.yaml"),
        "--config",
        str(REPO / "experiments/routing" / routing_yaml),
        "--config",
        str(overrides),
        *tiny(save_dir, steps=TINY_STEPS, batch=16),
        "--trainer.logger.init_args.name",
        name,
    ]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """{"vanilla": run dir, "dtr": run dir}: tiny unrouted and DTR digits runs, made once per session."""
    root = tmp_path_factory.mktemp("tiny_runs")
    overrides = root / "tiny.yaml"
    overrides.write_text(yaml.safe_dump({"trainer": {"callbacks": TINY_CALLBACKS}}))
    runs = [tiny_fit_args(root, name, f"{name}.yaml", overrides) for name in ("vanilla", "dtr")]
    done = subprocess.run(
        [sys.executable, "-c", _FIT_ALL.format(runs=runs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: root / name / "version_0" for name in ("vanilla", "dtr")}


@pytest.fixture
def run_main(capsys, monkeypatch):
    """An analysis/ script's main() in this interpreter (imports once), as (rc, out, err)."""
    monkeypatch.syspath_prepend(str(REPO / "analysis"))

    def call(name: str, *args) -> subprocess.CompletedProcess:
        module = importlib.import_module(name.removesuffix(".py"))
        try:
            rc = module.main([str(a) for a in args])
        except SystemExit as exit:  # argparse and the studies' refusals end this way, as a script would
            rc = exit.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(name, rc, out, err)

    return call
