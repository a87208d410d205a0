"""The run-record format, in one place: what the callbacks write and what ``runs.py`` reads back.

A run directory holds ``records/NAME.csv`` for each recording callback, in the long format
``step,metric,i,j,value`` (one row per scalar, per vector entry (i), per matrix entry (i, j); i and j
empty where they do not apply; values to 8 significant digits, a diverged run's ``nan`` kept), and
``records/intervals.csv`` with ``name,k,start,end``: interval k of the callback NAME holds the
timesteps [start, end). A record's schema is its header, so a reader finds every record in the folder
(``names``) and reads each by its own header: a new callback's record needs no entry anywhere else.
Files are append-only and flushed per batch, so a run that is still being written, or was cut off, reads
as far as its complete lines go.

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
# the type of a column by its name; any other column of a header holds numbers (as value does)
INTEGERS = ("step", "i", "j", "k", "start", "end")
TEXTS = ("metric", "name")
NAN_TEXTS = ("nan", "-nan", "+nan")


class RunError(DTRLabError):
    """A path that is not a readable run, or runs lacking the metric a figure needs."""


def path(run_dir: str | Path, name: str) -> Path:
    """RUN_DIR/records/NAME.csv."""
    return Path(run_dir) / FOLDER / f"{name}.csv"


def names(run_dir: str | Path) -> list[str]:
    """The records a run holds: every RUN_DIR/records/NAME.csv but the intervals, by NAME, sorted."""
    folder = Path(run_dir) / FOLDER
    return sorted(f.stem for f in folder.glob("*.csv") if f.stem != INTERVALS and f.is_file())


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
    return "string" if column in TEXTS else "Int64" if column in INTEGERS else "float64"


def empty_records(columns: Sequence[str] = COLUMNS):
    """An empty frame with the typed columns of a records file."""
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in columns})


def read_records(file: Path, columns: Sequence[str] | None = COLUMNS, strict: bool = False):
    """A long-format CSV as a typed frame and the problems met, each naming the file and its lines; RunError
    if its header is not ``columns`` (None: whatever its header names, each column typed by its name).

    Nothing is left out in silence. Reading for a figure or a table (strict=False), a damaged row (a cell
    that is no number, too few or too many fields) is left out and reported, and so are a cut-off last
    line and an empty (0-byte) file: one damaged line must not hide the rest of a run. Reading what
    decides a model or its intervals (strict=True: a measured affinity), any of these is a RunError in one
    line: a hole there would become a NaN or a mean over other steps, silently.
    """
    import pandas as pd

    problems = []
    text, cut = _complete_lines(file)
    if columns is None:  # the schema is the header (an empty file: the long format's)
        columns = text.split("\n", 1)[0].strip().split(",") if text.strip() else COLUMNS
    columns = list(columns)
    empty = empty_records(columns)
    if cut:
        problems.append(f"{file}: line {text.count(chr(10)) + 1} is cut off (no newline at its end; ignored)")
    if file.stat().st_size == 0:
        problems.append(
            f"{file}: empty (0 bytes, not even its header: its writer never wrote, or its disk refused)"
        )
    if not text.strip():
        return _checked(empty, problems, strict)
    lines = text.split("\n")[:-1]  # text ends at its last newline; no cell the writers write holds one
    header = lines[0].strip().split(",")
    if header != columns:
        raise RunError(f"{file}: header is {','.join(header)!r}, expected {','.join(columns)!r}")
    good, damaged = [], {}  # line numbers (1: the header) of whole rows, and of damaged ones with why
    for number, line in enumerate(lines[1:], start=2):
        # counting commas is the fast path; the csv module settles a line with quotes
        fields = len(columns) if line.count(",") == len(columns) - 1 else len(next(csv.reader([line]), []))
        if fields == len(columns):
            good.append(number)
        elif line.strip():  # a blank line holds nothing to lose
            damaged[number] = f"{fields} fields where {len(columns)} are expected"
    rows = "\n".join([lines[0], *(lines[n - 1] for n in good)])
    frame = pd.read_csv(io.StringIO(rows), dtype=str, keep_default_na=False).set_axis(good)
    for c in columns:
        if _dtype(c) == "string":
            continue
        text_cells = frame[c].str.strip()
        frame[c] = pd.to_numeric(text_cells, errors="coerce")
        missing = frame[c].isna()
        if c in ("i", "j"):  # empty on scalar rows
            missing &= text_cells != ""
        elif _dtype(c) == "float64":  # a diverged run writes nan: a value, kept as NaN, not a malformed row
            missing &= ~text_cells.str.lower().isin(NAN_TEXTS)
        for line in frame.index[missing]:
            damaged.setdefault(line, f"{c} {text_cells[line]!r} is not a number")
    if damaged:
        first = min(damaged)
        where = ", ".join(str(n) for n in sorted(damaged)[:5]) + (", …" if len(damaged) > 5 else "")
        problems.append(
            f"{file}: {len(damaged)} malformed row(s) ignored (line {where}; line {first}: {damaged[first]})"
        )
        frame = frame.drop(index=[n for n in damaged if n in frame.index])
    frame = frame.astype({c: _dtype(c) for c in columns}).reset_index(drop=True)
    return _checked(frame, problems, strict)


def _checked(frame, problems: list[str], strict: bool):
    if strict and problems:
        raise RunError(
            f"{problems[0]}; this reader takes the whole file or nothing: repair it, or measure again"
        )
    return frame, problems


def read_intervals(run_dir: str | Path, strict: bool = False):
    """RUN_DIR/records/intervals.csv as a typed frame (empty if absent) and its problems (strict: as
    read_records); a resumed run appends its intervals again, and the last copy of each (name, k) is the
    one in use."""
    file = path(run_dir, INTERVALS)
    if not file.is_file():
        return empty_records(INTERVAL_COLUMNS), []
    intervals, problems = read_records(file, INTERVAL_COLUMNS, strict)
    return intervals.drop_duplicates(["name", "k"], keep="last").reset_index(drop=True), problems


def matrix(rows) -> np.ndarray:
    """(i, j, value) rows as a K×K array, K = 1 + the largest index (NaN where missing)."""
    k = int(max(rows["i"].max(), rows["j"].max())) + 1
    out = np.full((k, k), np.nan)
    out[rows["i"].astype(int).to_numpy(), rows["j"].astype(int).to_numpy()] = rows["value"].to_numpy()
    return out
