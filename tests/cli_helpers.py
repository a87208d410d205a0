"""Run the CLI as a user would, with tiny overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["--config", str(REPO / "experiments/digits/base.yaml")]


def tiny(save_dir: Path, steps: int = 4, batch: int = 32) -> list[str]:
    """Overrides that make a digits run take seconds."""
    return [
        "--trainer.max_steps",
        str(steps),
        "--data.init_args.batch_size",
        str(batch),
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--checkpoint.every_n_train_steps",
        "2",
        "--model.sample_steps",
        "4",
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
    ]


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtr_lab", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
