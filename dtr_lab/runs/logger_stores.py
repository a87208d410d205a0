"""Scalars of runs logged by CSVLogger, MLFlowLogger and WandbLogger, read from their local stores (no
server, no training imports): rows (step, tag, value, wall_time) as dtr_lab.runs reads TensorBoard's.

Where each logger keeps a run (its folder for dtr_lab's files is dtr_lab.callbacks.logging.run_folder):
- CSVLogger: ``<save_dir>/<name>/version_N/metrics.csv``, one column per tag.
- MLflow file store: ``<save_dir>/<experiment id>/<run id>/`` with ``artifacts/`` (the run folder) and
  ``metrics/<tag>``, one line ``timestamp value step`` per logged value.
- W&B offline: ``<save_dir>/wandb/offline-run-<time>-<id>/`` (the run folder) with
  ``run-<id>.wandb``, W&B's transaction log: LevelDB log framing (32 KiB blocks of CRC-checked chunks)
  around the protobuf ``Record``s of wandb.proto; history rows carry ``trainer/global_step``.
A store that is cut off or still being written reads as far as its complete records go.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import pandas as pd

from dtr_lab.records import RunError

CSV_METRICS = "metrics.csv"
MLFLOW_FILES = "artifacts"
WANDB_LOG = "run-*.wandb"
# W&B's log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each
# (crc32 of type byte + data, length, type) and data; a record is one FULL chunk or FIRST, MIDDLE…, LAST
WANDB_HEADER = struct.Struct("<4sHB")
WANDB_CHUNK = struct.Struct("<IHB")
WANDB_BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
WANDB_STEP = "trainer/global_step"  # WandbLogger logs Lightning's step beside W&B's own _step


def is_mlflow_run(folder: Path) -> bool:
    return (folder / "meta.yaml").is_file() and (folder / MLFLOW_FILES).is_dir()


def run_files(path: Path) -> Path:
    """The folder of dtr_lab's files for a path that names an MLflow run itself; else path."""
    return path / MLFLOW_FILES if is_mlflow_run(path) else path


def read_store_scalars(run_dir: Path) -> tuple[list[tuple], list[str]]:
    """The scalar rows of the CSVLogger, MLflow or W&B run whose folder is run_dir (none for a
    TensorBoard run), and the problems met reading them."""
    if (run_dir / CSV_METRICS).is_file():
        return read_csv_metrics(run_dir / CSV_METRICS)
    if run_dir.name == MLFLOW_FILES and is_mlflow_run(run_dir.parent):
        return read_mlflow_metrics(run_dir.parent / "metrics")
    wandb_logs = sorted(run_dir.glob(WANDB_LOG))
    if wandb_logs:
        return read_wandb_history(wandb_logs[-1])
    return [], []


def read_csv_metrics(file: Path) -> tuple[list[tuple], list[str]]:
    """CSVLogger's wide metrics.csv (a step column, a column per tag) as rows; the row number stands in
    for the wall time (later rows are later writes)."""
    try:
        frame = pd.read_csv(file, on_bad_lines="skip")
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        return [], [f"{file}: not readable as CSV ({err}); its scalars are missing"]
    if "step" not in frame.columns:
        return [], [f"{file}: no step column (not CSVLogger's metrics.csv); its scalars are missing"]
    frame = frame.apply(pd.to_numeric, errors="coerce").dropna(subset=["step"])
    long = frame.reset_index(names="wall_time").melt(["step", "wall_time"], var_name="tag").dropna()
    return list(long[["step", "tag", "value", "wall_time"]].itertuples(index=False, name=None)), []


def read_mlflow_metrics(folder: Path) -> tuple[list[tuple], list[str]]:
    """Every metric file of an MLflow file-store run (the tag is its path under metrics/)."""
    rows, problems = [], []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        tag = file.relative_to(folder).as_posix()
        for n, line in enumerate(file.read_text().splitlines(), 1):
            try:
                timestamp, value, step = line.split()
                rows.append((int(step), tag, float(value), int(timestamp) / 1000))
            except ValueError:
                problems.append(f"{file}: line {n} is not 'timestamp value step' (cut off?); skipped")
    return rows, problems


def wandb_records(file: Path) -> tuple[list[bytes], str | None]:
    """The records of a W&B transaction log up to the first damaged or cut-off chunk, and a problem
    naming the damage (None when it reads to its end)."""
    data = file.read_bytes()
    ident, magic, _ = WANDB_HEADER.unpack_from(data) if len(data) >= WANDB_HEADER.size else (b"", 0, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        return [], f"{file}: not a W&B run log (no :W&B header)"
    records, record, pos = [], b"", WANDB_HEADER.size
    while pos < len(data):
        if WANDB_BLOCK - pos % WANDB_BLOCK < WANDB_CHUNK.size:  # a block's tail too short for a chunk
            pos += WANDB_BLOCK - pos % WANDB_BLOCK
            continue
        if pos + WANDB_CHUNK.size > len(data):
            break
        crc, length, kind = WANDB_CHUNK.unpack_from(data, pos)
        body = data[pos + WANDB_CHUNK.size : pos + WANDB_CHUNK.size + length]
        if len(body) < length or zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            return records, f"{file}: unreadable from byte {pos} of {len(data)} (damaged or cut off)"
        pos += WANDB_CHUNK.size + length
        record = body if kind in (FULL, FIRST) else record + body
        if kind in (FULL, LAST):
            records.append(record)
    return records, None


def read_wandb_history(file: Path) -> tuple[list[tuple], list[str]]:
    """The numeric history values of a W&B offline run at Lightning's step (W&B's own keys, those
    starting with "_", and media are left out)."""
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError:
        raise RunError(f"{file}: reading a W&B run needs wandb: pip install 'dtr_lab[loggers]'") from None
    records, problem = wandb_records(file)
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record.FromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        # a one-part nested_key is a tag ("train/loss"); longer ones are the fields of a media value
        items = {
            item.key or item.nested_key[0]: json.loads(item.value_json)
            for item in record.history.item
            if item.key or len(item.nested_key) == 1
        }
        step = items.get(WANDB_STEP, items.get("_step"))
        wall_time = items.get("_timestamp", math.nan)
        for tag, value in items.items():
            if tag.startswith("_") or tag == WANDB_STEP or type(value) not in (int, float):
                continue
            rows.append((int(step), tag, float(value), wall_time))
    return rows, [problem] if problem else []
