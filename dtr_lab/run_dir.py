"""Whether a run directory holds run output, or only what a start writes before the first step.

A start that fails after the logger opened `version_N` leaves `config.yaml`, perhaps `hparams.yaml`,
and an events file without metrics. The CLI removes such a directory when the start fails; readers
skip it when they expand a folder or pattern. Anything else in a run directory is output and is
never deleted. No torch or training imports: runs.py uses this too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

STARTUP_FILES = ("config.yaml", "hparams.yaml")
EVENTS_GLOB = "events.out.tfevents.*"
# TensorBoardLogger writes these with the hyperparameters, before any step
STARTUP_TAGS = ("hp_metric",)
STARTUP_TAG_PREFIX = "_hparams_/"


def events_have_metrics(file: Path) -> bool:
    """Whether a TensorBoard events file holds any summary beyond the start-up hyperparameters."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    try:
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                if value.tag not in STARTUP_TAGS and not value.tag.startswith(STARTUP_TAG_PREFIX):
                    return True
    except Exception:  # a file that cannot be read is kept, never judged empty
        return True
    return False


def holds_output(path: Path) -> bool:
    """Whether a run directory holds anything a start does not write (files in subfolders, metrics)."""
    files = [p for p in path.rglob("*") if not p.is_dir()]
    startup = [p for p in files if p.parent == path and (p.name in STARTUP_FILES or p.match(EVENTS_GLOB))]
    if len(startup) < len(files):
        return True
    return any(events_have_metrics(p) for p in startup if p.match(EVENTS_GLOB))


def remove_failed_start(path: Path) -> bool:
    """Delete a run directory that holds no output; returns whether it did."""
    if not path.is_dir() or holds_output(path):
        return False
    shutil.rmtree(path)
    return True
