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
