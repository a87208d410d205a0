"""The run-record format, in one place: what the callbacks write and what ``runs.py`` reads back.

A run directory holds ``records/NAME.csv`` for each recording callback, in the long format
``step,metric,i,j,value`` (one row per scalar, per vector entry (i), per matrix entry (i, j); i and j
empty where they do not apply; values to 8 significant digits, a diverged run's ``nan`` kept), and
``records/intervals.csv`` with ``name,k,start,end``: interval k of the callback NAME holds the
timesteps [start, end). Files are append-only and flushed per batch, so a run that is still being
written, or was cut off, reads as far as its complete lines go.

Torch-free: writers take plain numbers (the callbacks convert their tensors), readers give pandas
frames (pandas is imported when reading, so training does not pay for it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dtr_lab.errors import DTRLabError

FOLDER = "records"
COLUMNS = ("step", "metric", "i", "j", "value")
INTERVAL_COLUMNS = ("name", "k", "start", "end")
INTERVALS = "intervals"  # records/intervals.csv
NAMES = ("loss_by_t", "conflict", "affinity", "routing", "quality")  # the records files callbacks write
NAN_TEXTS = ("nan", "-nan", "+nan")


class RunError(DTRLabError):
    """A path that is not a readable run, or runs lacking the metric a figure needs."""


def path(run_dir: str | Path, name: str) -> Path:
    """RUN_DIR/records/NAME.csv."""
    return Path(run_dir) / FOLDER / f"{name}.csv"


def value_text(value: float) -> str:
    """A value as written: 8 significant digits (float32 holds about 7)."""
    return f"{float(value):.8g}"


# ----------------------------------------------------------------------------- writing


class RecordWriter:
    """Appends rows to RUN_DIR/records/NAME.csv, flushing each batch so a cut-off run stays readable."""

    def __init__(self, run_dir: str | Path, name: str) -> None:
        self.path = path(run_dir, name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append([COLUMNS])

    def _append(self, rows: Iterable[Iterable]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows(rows)

    def scalar(self, step: int, metric: str, value: float, i: int | str = "", j: int | str = "") -> None:
        self._append([(step, metric, i, j, value_text(value))])

    def vector(
        self, step: int, metric: str, values: Sequence[float], index: Iterable[int] | None = None
    ) -> None:
        """One row per entry; i is the entry's index (or the given labels, e.g. timesteps)."""
        index = list(range(len(values))) if index is None else list(index)
        self._append((step, metric, int(i), "", value_text(v)) for i, v in zip(index, values, strict=True))

    def matrix(self, step: int, metric: str, values: Sequence[Sequence[float]]) -> None:
        """One row per entry (i, j) of a matrix (rows of numbers)."""
        self._append(
            (step, metric, i, j, value_text(v)) for i, row in enumerate(values) for j, v in enumerate(row)
        )


def write_intervals(run_dir: str | Path, name: str, edges: Iterable[int]) -> None:
    """RUN_DIR/records/intervals.csv: the intervals a callback used, rows (name, k, start, end)."""
    file = path(run_dir, INTERVALS)
    file.parent.mkdir(parents=True, exist_ok=True)
    new = not file.exists() or file.stat().st_size == 0
    edges = [int(e) for e in edges]
    with file.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(INTERVAL_COLUMNS)
        w.writerows((name, k, edges[k], edges[k + 1]) for k in range(len(edges) - 1))


# ----------------------------------------------------------------------------- reading


def _complete_lines(file: Path) -> tuple[str, bool]:
    """The file's text up to its last newline, and whether anything after it was dropped."""
    data = file.read_bytes()
    end = data.rfind(b"\n") + 1
    return data[:end].decode("utf-8", errors="replace"), end < len(data)


def _dtype(column: str) -> str:
    return {"metric": "string", "name": "string", "value": "float64"}.get(column, "Int64")


def empty_records(columns: Sequence[str] = COLUMNS):
    """An empty frame with the typed columns of a records file."""
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in columns})


def read_records(file: Path, columns: Sequence[str] = COLUMNS):
    """A long-format CSV as a typed frame and the problems met, skipping a cut-off last line and
    malformed rows; RunError if its header is not ``columns``."""
    import pandas as pd

    columns = list(columns)
    problems = []
    empty = empty_records(columns)
    text, cut = _complete_lines(file)
    if cut:
        problems.append(f"{file}: last line is cut off (ignored)")
    if not text.strip():
        return empty, problems
    header = text.splitlines()[0].strip().split(",")
    if header != columns:
        raise RunError(f"{file}: header is {','.join(header)!r}, expected {','.join(columns)!r}")
    frame = pd.read_csv(io.StringIO(text), dtype=str, on_bad_lines="skip", keep_default_na=False)
    n = len(frame)
    malformed = pd.Series(False, index=frame.index)
    for c in columns:
        if _dtype(c) == "string":
            malformed |= frame[c].isna()
            continue
        cells = frame[c].fillna("").str.strip()
        frame[c] = pd.to_numeric(cells, errors="coerce")
        missing = frame[c].isna()
        if c in ("i", "j"):  # empty on scalar rows
            missing &= cells != ""
        elif c == "value":  # a diverged run writes nan: that is a value, kept as NaN, not a malformed row
            missing &= ~cells.str.lower().isin(NAN_TEXTS)
        malformed |= missing
    frame = frame[~malformed]
    if len(frame) < n:
        problems.append(f"{file}: {n - len(frame)} malformed row(s) ignored")
    frame = frame.astype({c: _dtype(c) for c in columns}).reset_index(drop=True)
    return frame, problems


def read_intervals(run_dir: str | Path):
    """RUN_DIR/records/intervals.csv as a typed frame (empty if absent) and its problems; a resumed run
    appends its intervals again, and the last copy of each (name, k) is the one in use."""
    file = path(run_dir, INTERVALS)
    if not file.is_file():
        return empty_records(INTERVAL_COLUMNS), []
    intervals, problems = read_records(file, INTERVAL_COLUMNS)
    return intervals.drop_duplicates(["name", "k"], keep="last").reset_index(drop=True), problems


def matrix(rows) -> np.ndarray:
    """(i, j, value) rows as a K×K array, K = 1 + the largest index (NaN where missing)."""
    k = int(max(rows["i"].max(), rows["j"].max())) + 1
    out = np.full((k, k), np.nan)
    out[rows["i"].astype(int).to_numpy(), rows["j"].astype(int).to_numpy()] = rows["value"].to_numpy()
    return out
