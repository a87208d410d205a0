"""Claiming a run directory, and whether it holds run output or only what a start writes before the
first step.

A start claims its directory with os.mkdir, which either creates it or fails: two starts never share
one, and a start never writes into an existing one. A start that fails after that leaves `command.yaml`,
`config.yaml`, `labels.yaml`, perhaps `hparams.yaml`, and an events file without metrics. The CLI removes
such a directory (its own claim) when the start fails; readers skip it when they expand a folder or pattern.
Anything else in a run directory is output and is never deleted. No torch or training imports: runs.py
uses this too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtr_lab.errors import DTRLabError
from dtr_lab.storage import labels, run_kind

STARTUP_FILES = ("config.yaml", "hparams.yaml", run_kind.FILE, labels.FILE)
EVENTS_GLOB = "events.out.tfevents.*"
# TensorBoardLogger writes these with the hyperparameters, before any step
STARTUP_TAGS = ("hp_metric",)
STARTUP_TAG_PREFIX = "_hparams_/"


def read_events(file: Path) -> tuple[list, int]:
    """The Event protos of a TensorBoard events file up to its first damaged or cut-off record, and how
    many of the file's bytes they span (the file size when it reads to its end)."""
    from google.protobuf.message import DecodeError
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    events, read = [], 0
    # the loader checks each record's CRC and stops at the first bad one without saying so
    for raw in RawEventFileLoader(str(file)).Load():
        try:
            events.append(event_pb2.Event.FromString(raw))
        except DecodeError:
            break
        read += len(raw) + 16  # TFRecord framing: length (8), its CRC (4), the data, its CRC (4)
    return events, read


def events_have_metrics(file: Path) -> bool:
    """Whether a TensorBoard events file holds any summary beyond the start-up hyperparameters; a
    file that does not read to its end counts as holding some (it is never judged empty)."""
    events, read = read_events(file)
    if read < file.stat().st_size:
        return True
    tags = (value.tag for event in events for value in event.summary.value)
    return any(tag not in STARTUP_TAGS and not tag.startswith(STARTUP_TAG_PREFIX) for tag in tags)


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


@dataclass(frozen=True)
class Claim:
    """A run directory this start created, and the highest folder it created for it (save_dir/name may
    be new too)."""

    path: Path
    top: Path

    def release(self) -> None:
        """After a failed start: remove the run directory if it holds no output, then the folders made for
        it while they are empty (another start may have claimed a version beside it)."""
        if remove_failed_start(self.path):
            for folder in self.path.parents:
                if not folder.is_relative_to(self.top) or not remove_if_empty(folder):
                    break


def claim_log_dir(logger: Any) -> Claim | None:
    """Create the logger's run directory before anything is written there (None without one). An unset
    version takes the first version_N this process creates; a named one must be new."""
    if getattr(logger, "_version", 0) is None:  # TensorBoardLogger, CSVLogger: the version is still to pick
        root = Path(logger.root_dir)
        top = None if root.exists() else first_missing(root)
        root.mkdir(parents=True, exist_ok=True)
        version = logger._get_next_version()
        while not make_dir(root / f"version_{version}"):  # another start took it since the listing
            version += 1
        logger._version = version
        path = root / f"version_{version}"
        return Claim(path, top or path)
    if not logger.log_dir:
        return None
    path = Path(logger.log_dir)
    top = first_missing(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not make_dir(path):
        raise DTRLabError(
            f"run directory {path} exists already, and a run never writes into another's; leave "
            "--trainer.logger.init_args.version unset to take the next free version_N, or name a new one"
        )
    return Claim(path, top)


def first_missing(path: Path) -> Path:
    """The highest of path and its parents that does not exist yet (path itself when its parent does)."""
    while not path.parent.exists():
        path = path.parent
    return path


def make_dir(path: Path) -> bool:
    """os.mkdir: True if this call created path, False if it existed (the atomic claim)."""
    try:
        path.mkdir()
    except FileExistsError:
        return False
    return True


def remove_if_empty(folder: Path) -> bool:
    try:
        folder.rmdir()
    except OSError:  # not empty (or gone): keep it
        return False
    return True
