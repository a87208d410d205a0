"""Run directories read back into tidy pandas frames, each row labelled with its run's configuration.

A run directory is what ``python -m dtr_lab fit`` writes: ``config.yaml`` (the resolved config),
TensorBoard ``events.out.tfevents.*`` (scalars), and ``records/*.csv`` (long format
``step,metric,i,j,value``, plus ``records/intervals.csv`` with ``name,k,start,end``; the format is
:mod:`dtr_lab.records`'s), and ``command.yaml`` (what made it: :mod:`dtr_lab.storage.run_kind`). Every frame
carries the label columns ``run, routing, weighting, mtl, model, seed`` so runs compare with one
``groupby``; ``load_runs`` reads a resumed run into the fit it continues and keeps a test of a fit's
checkpoint with that fit, so each fit counts once. Nothing here imports torch or training code: a run
that is still being written, or was cut off, reads as far as its complete lines go.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dtr_lab import records
from dtr_lab.storage import labels as run_labels_file
from dtr_lab.storage import run_kind
from dtr_lab.errors import DTRLabError
from dtr_lab.runs.logger_stores import read_store_scalars, run_files
from dtr_lab.records import (  # noqa: F401  (NAN_TEXTS: re-exported with the rest of the record format)
    NAN_TEXTS,
    RunError,
    empty_records,
    matrix,
    read_intervals,
    read_records,
)
from dtr_lab.storage.run_dir import EVENTS_GLOB, holds_output, read_events
from dtr_lab.storage.run_kind import RunKind

LABELS = ("run", "routing", "weighting", "mtl", "model", "seed")
# the records of dtr_lab's own callbacks: a Run has each as an attribute (empty where the run has none);
# any other record a callback writes is read too, into Run.records by its name
KNOWN_RECORDS = ("loss_by_t", "conflict", "affinity", "routing", "quality")
RECORD_COLUMNS = list(records.COLUMNS)
INTERVAL_COLUMNS = list(records.INTERVAL_COLUMNS)
AFFINITY_SOURCES = (("affinity", "tag"), ("conflict", "cos"))
# the routing labels of runs written before a run recorded its own (labels.yaml): the routings dtr_lab had
# then, by class name; any other class is labelled by its name in lower case
LEGACY_ROUTING_LABELS = {
    "NoRouting": "vanilla",
    "DTRRouting": "dtr",
    "RandomRouting": "rtr",
    "SwitchRouting": "switch",
    "AffinityRouting": "affinity",
    "InterpolatedAffinityRouting": "affinity_t",
}
# short names researchers use (DTR paper, Table 2), as in the experiments/*/*.yaml file names; a
# routing's comes from the run (labels.yaml)
SHORT_NAMES = {
    "Uniform": "uniform",
    "MinSNR": "min_snr",
    "P2": "p2",
    "UncertaintyWeighting": "uw",
    "PCGrad": "pcgrad",
    "NashMTL": "nash",
}


# ----------------------------------------------------------------------------- labels


def config_value(config: dict, key: str, default=None):
    """The value at a dotted key of a nested config ("model.routing.init_args.alpha"), or default."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _class_name(node) -> str | None:
    """The class name of a jsonargparse ``class_path`` node (dict or bare string), or None."""
    path = node.get("class_path") if isinstance(node, dict) else node
    return str(path).rsplit(".", 1)[-1] if path else None


def _short(node, default: str) -> str:
    name = _class_name(node)
    return SHORT_NAMES.get(name, name.lower()) if name else default


def routing_label(node, default: str = "vanilla") -> str:
    """The routing label of a config's routing (a class_path node) for a run that did not record its own
    (no labels.yaml): LEGACY_ROUTING_LABELS, else the class name in lower case."""
    name = _class_name(node)
    if not name:
        return default
    return LEGACY_ROUTING_LABELS.get(name, name.lower())


def run_labels(config: dict, recorded: dict | None = None) -> dict:
    """routing (vanilla/dtr/rtr), weighting (uniform/min_snr/p2), mtl (none/uw/pcgrad/nash), model
    (DiT-T/2, UNet, …) and seed of a resolved config; absent keys take the module's defaults. The routing
    is the label the run recorded (``recorded``: its labels.yaml, dtr_lab.storage.labels) where it did."""
    model = config_value(config, "model.net.init_args.size") or _class_name(config_value(config, "model.net"))
    seed = config_value(config, "seed_everything")
    if isinstance(seed, bool) or not isinstance(seed, int):
        seed = config_value(config, "model.seed", -1)
    return {
        "routing": (recorded or {}).get("routing") or routing_label(config_value(config, "model.routing")),
        "weighting": _short(config_value(config, "model.weighting"), "uniform"),
        "mtl": _short(config_value(config, "model.mtl"), "none"),
        "model": model or "unknown",
        "seed": int(seed) if isinstance(seed, int) else -1,
    }


# ----------------------------------------------------------------------------- reading


def read_scalars(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every TensorBoard scalar of a run as rows (step, tag, value, wall_time), or its CSVLogger, MLflow or
    W&B scalars (dtr_lab.runs.logger_stores); a damaged events file is read up to the damage, and a problem
    names the file and how much of it was lost."""
    from tensorboard.util import tensor_util

    rows, problems = [], []
    for file in sorted(run_dir.glob(EVENTS_GLOB)):
        events, read = read_events(file)
        size = file.stat().st_size
        if read < size:
            problems.append(
                f"{file}: unreadable from byte {read} of {size} (damaged or cut off); the scalars in its "
                f"last {size - read} bytes ({(size - read) / size:.0%} of the file) are missing"
            )
        for event in events:
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                if kind == "simple_value":
                    rows.append((event.step, value.tag, value.simple_value, event.wall_time))
                elif kind == "tensor" and value.metadata.plugin_data.plugin_name == "scalars":
                    scalar = float(tensor_util.make_ndarray(value.tensor))
                    rows.append((event.step, value.tag, scalar, event.wall_time))
    store_rows, store_problems = read_store_scalars(run_dir)  # CSVLogger, MLflow, W&B
    rows, problems = rows + store_rows, problems + store_problems
    frame = pd.DataFrame(rows, columns=["step", "tag", "value", "wall_time"])
    frame = frame.astype({"step": "int64", "tag": "string", "value": "float64", "wall_time": "float64"})
    # a resumed run re-logs steps after its last checkpoint: keep the latest write
    frame = frame.sort_values("wall_time", kind="stable").drop_duplicates(["tag", "step"], keep="last")
    return frame.sort_values(["tag", "step"], kind="stable").reset_index(drop=True), problems


def is_run_dir(path: Path) -> bool:
    """Whether a folder looks like a run: a config, hparams, events file or records folder."""
    return path.is_dir() and (
        (path / "config.yaml").is_file()
        or (path / "hparams.yaml").is_file()
        or (path / records.FOLDER).is_dir()
        or any(path.glob(EVENTS_GLOB))
    )


def find_run_dirs(path: str | Path, max_depth: int = 4) -> list[Path]:
    """The run itself, or every run folder below it (e.g. all versions under ``runs/``), sorted."""
    path = run_files(Path(path))
    if not path.exists():
        raise RunError(f"{path}: no such file or directory; pass a run folder such as runs/<name>/version_0")
    if is_run_dir(path):
        return [path]
    found = []
    for root, dirs, _ in os.walk(path):
        depth = len(Path(root).relative_to(path).parts)
        if is_run_dir(Path(root)):
            found.append(Path(root))
            dirs.clear()
        elif depth >= max_depth:
            dirs.clear()
        dirs.sort()
    if not found:
        raise RunError(
            f"{path}: not a run directory (no config.yaml, {EVENTS_GLOB} or records/ in it or below); "
            "pass a folder written by `python -m dtr_lab fit`, e.g. runs/<name>/version_0"
        )
    return sorted(found)


# ----------------------------------------------------------------------------- runs


class KnownRecords:
    """The records of dtr_lab's own callbacks as attributes: ``run.conflict`` is ``run.records["conflict"]``
    (a frame with no rows where the run has none)."""

    records: dict[str, pd.DataFrame]

    def record(self, name: str) -> pd.DataFrame:
        """The record of this name (any callback's), with no rows where no run holds it."""
        return self.records.get(name, empty_records())

    @property
    def loss_by_t(self) -> pd.DataFrame:
        return self.records["loss_by_t"]

    @property
    def conflict(self) -> pd.DataFrame:
        return self.records["conflict"]

    @property
    def affinity(self) -> pd.DataFrame:
        return self.records["affinity"]

    @property
    def routing(self) -> pd.DataFrame:
        return self.records["routing"]

    @property
    def quality(self) -> pd.DataFrame:
        return self.records["quality"]


@dataclass
class Run(KnownRecords):
    """One run directory as frames: scalars (step, tag, value), records by name (every records/NAME.csv,
    read by its header; long format step, metric, i, j, value) and intervals (name, k, start, end), each with
    the label columns; plus its config and labels."""

    path: Path
    config: dict
    labels: dict
    scalars: pd.DataFrame
    records: dict[str, pd.DataFrame]  # KNOWN_RECORDS always (empty where not written), then any other
    intervals: pd.DataFrame
    samples: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kind: RunKind = field(default_factory=lambda: RunKind("fit"))
    colours: dict[str, str] = field(default_factory=dict)  # label -> "#rrggbb", as the run recorded them
    continuations: list[Path] = field(default_factory=list)  # resumed runs read into this one (join_runs)
    evaluations: list[Run] = field(default_factory=list)  # test/validate/predict runs of its checkpoints

    @property
    def name(self) -> str:
        return self.labels["run"]

    @property
    def steps(self) -> int:
        """The step the run trained to: its last logged step (its checkpoint's for an evaluation)."""
        if self.kind.kind in run_kind.EVALUATIONS and self.kind.ckpt_step is not None:
            return int(self.kind.ckpt_step)
        steps = [frame["step"].max() for frame in (self.scalars, *self.records.values())]
        steps = [int(s) for s in steps if pd.notna(s)]
        return max(steps, default=0)

    def __repr__(self) -> str:
        frames = {"scalars": self.scalars, **self.records, "intervals": self.intervals}
        sizes = ", ".join(f"{f}={len(frame)}" for f, frame in frames.items())
        return f"Run({self.name!r}, {self.labels['routing']}, {self.labels['model']}, rows: {sizes})"


def load_run(path: str | Path, labels: dict[str, str] | None = None, name: str | None = None) -> Run:
    """Read one run directory; ``labels`` adds columns from dotted config keys, e.g.
    {"alpha": "model.routing.init_args.alpha"}. An MLflow or W&B run is read from its local store."""
    path = run_files(Path(path))
    if not path.exists():
        raise RunError(f"{path}: no such directory; pass a run folder such as runs/<name>/version_0")
    if not is_run_dir(path):
        raise RunError(
            f"{path}: not a run directory (no config.yaml, {EVENTS_GLOB} or records/); "
            "pass a folder written by `python -m dtr_lab fit`, e.g. runs/<name>/version_0"
        )
    problems: list[str] = []
    config = _read_config(path, problems)
    recorded = run_labels_file.read(path)  # what the run recorded of itself as it started
    run_labels_ = {"run": name or f"{path.parent.name}/{path.name}", **run_labels(config, recorded)}
    for column, key in (labels or {}).items():
        run_labels_[column] = config_value(config, key)

    scalars, p = read_scalars(path)
    problems += p
    frames = {record: empty_records() for record in KNOWN_RECORDS}
    for record in records.names(path):
        file = records.path(path, record)
        frame, p = read_records(file, columns=None)  # its header is its schema
        problems += p
        if "step" in frame.columns:
            frames[record] = frame
        else:
            problems.append(f"{file}: its header has no step column, so it is not read as a record")
    intervals, p = read_intervals(path)  # callbacks rewrite their intervals when a run resumes
    problems += p

    kind = run_kind.read(path, config, set(scalars["tag"]))
    if scalars.empty and all(frame.empty for frame in frames.values()):
        raise RunError(
            f"{path}: run has no logged metrics yet (no scalars in {EVENTS_GLOB}, no rows in records/*.csv); "
            "let it train past its first logging step or pass another run"
        )
    return Run(
        path=path,
        config=config,
        labels=run_labels_,
        scalars=_labelled(scalars, run_labels_),
        records={record: _labelled(frame, run_labels_) for record, frame in frames.items()},
        intervals=_labelled(intervals, run_labels_),
        samples=sorted((path / "samples").glob("*.png")),
        masks=sorted((path / "routing").glob("masks_*.png")),
        problems=problems,
        kind=kind,
        colours=recorded["colours"],
    )


def _read_config(path: Path, problems: list[str]) -> dict:
    file = path / "config.yaml"
    if not file.is_file():
        problems.append(f"{path}: no config.yaml, so routing/weighting/model/seed labels are defaults")
        return {}
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError:
        problems.append(f"{file}: not valid YAML (cut off?), so labels are defaults")
        return {}
    return config if isinstance(config, dict) else {}


def _labelled(frame: pd.DataFrame, labels: dict) -> pd.DataFrame:
    """The frame with the label columns in front."""
    frame = frame.copy()
    for k, (column, value) in enumerate(labels.items()):
        frame.insert(k, column, pd.Series([value] * len(frame), index=frame.index, dtype=object))
    return frame


@dataclass
class Runs(KnownRecords):
    """Several runs: the same frames as a Run, concatenated (a record: of the runs that hold it), plus one
    row of labels per run."""

    runs: list[Run]
    skipped: list[str] = field(default_factory=list)  # folders passed over, e.g. failed starts

    def __post_init__(self) -> None:
        self.scalars = pd.concat([r.scalars for r in self.runs], ignore_index=True)
        self.colours = {label: c for r in self.runs for label, c in r.colours.items()}
        self.intervals = pd.concat([r.intervals for r in self.runs], ignore_index=True)
        names = dict.fromkeys(name for r in self.runs for name in r.records)
        self.records = {
            name: pd.concat([r.records[name] for r in self.runs if name in r.records], ignore_index=True)
            for name in names
        }

    @property
    def labels(self) -> pd.DataFrame:
        return pd.DataFrame([{**r.labels, "path": str(r.path)} for r in self.runs])

    @property
    def problems(self) -> list[str]:
        return self.skipped + [p for r in self.runs for p in r.problems]

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def __getitem__(self, key: int | str) -> Run:
        if isinstance(key, str):
            return next(r for r in self.runs if r.name == key)
        return self.runs[key]

    def select(self, **labels) -> Runs:
        """The runs whose labels equal the given values, e.g. ``runs.select(routing="dtr")``."""
        chosen = [r for r in self.runs if all(r.labels.get(k) == v for k, v in labels.items())]
        if not chosen:
            raise RunError(f"no run has labels {labels}; runs are {', '.join(r.name for r in self.runs)}")
        return Runs(chosen)

    def __repr__(self) -> str:
        return f"Runs({len(self)}):\n" + self.labels.drop(columns="path").to_string(index=False)


def as_runs(runs: Run | Runs) -> Runs:
    """A Run or Runs as Runs, so every function takes either."""
    return Runs([runs]) if isinstance(runs, Run) else runs


def load_runs(
    paths: str | Path | Iterable[str | Path],
    labels: dict[str, str] | None = None,
    on_error: Callable[[RunError], None] | None = None,
) -> Runs:
    """Read runs from folders or glob patterns (a folder above runs finds every run below it).

    With ``on_error`` a bad path is reported to it and skipped; without, it raises RunError. A folder
    that a pattern or a parent folder turns up but that holds no run output (a failed or just-begun
    start, an empty ``version_N``) is passed over with a note in ``problems``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    dirs: list[Path] = []
    skipped: list[str] = []
    for p in paths:
        named = not glob.has_magic(str(p))
        matches = [str(p)] if named else sorted(glob.glob(str(p)))
        if not matches:
            _fail(RunError(f"{p}: the pattern matches nothing; check the path"), on_error)
        for m in matches:
            if not named and Path(m).is_dir() and not holds_output(Path(m)):
                skipped.append(f"{m}: skipped, it holds no run output (a failed or just-begun start)")
                continue
            try:
                found = [d for d in find_run_dirs(m) if d not in dirs]
            except RunError as err:
                _fail(err, on_error)
                continue
            for d in found:
                if d != Path(m) and not holds_output(d):
                    skipped.append(f"{d}: skipped, it holds no run output (a failed or just-begun start)")
                else:
                    dirs.append(d)
    names = _unique_names(dirs)
    loaded = []
    for d, name in zip(dirs, names, strict=True):
        try:
            loaded.append(load_run(d, labels, name=name))
        except RunError as err:
            _fail(err, on_error)
    if not loaded:
        raise RunError(f"no readable run in {', '.join(map(str, paths))}")
    loaded, notes = join_runs(loaded)
    return Runs(loaded, skipped + notes)


def join_runs(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """The runs as fits: a resumed run is read into the fit it continues, and a test, validate or predict
    run is kept with the fit whose checkpoint it evaluated (``Run.evaluations``), wherever that fit is
    among ``runs``; one note per run so joined. A run whose checkpoint's fit is not among them stays a
    run of its own (an evaluation of an official checkpoint, a continuation passed alone)."""
    by_dir = {r.path.resolve(): r for r in runs}
    root: dict[int, Run] = {}  # id(run) -> the fit it was read into

    def fit_of(run: Run) -> Run | None:
        parent = run.kind.parent
        found = by_dir.get(parent.resolve()) if parent is not None else None
        return root.get(id(found), found) if found is not None else None

    kept, notes = [], []
    # a continuation of a continuation joins after the one it continues: in order of the step it starts at
    order = {"fit": 0, "resumed": 1}  # evaluations last: the fit they evaluate is whole by then
    for run in sorted(runs, key=lambda r: (order.get(r.kind.kind, 2), _start_step(r))):
        fit = fit_of(run) if run.kind.kind != "fit" else None
        if fit is None:
            kept.append(run)
            if run.kind.kind == "resumed" and run.kind.parent is not None:
                notes.append(
                    f"{run.name} resumes {run.kind.parent}, which is not among the runs read: its curves "
                    f"start at step {_start_step(run)}"
                )
        elif run.kind.kind == "resumed":
            _continue(fit, run)
            root[id(run)] = fit
            notes.append(f"{run.name} resumes {fit.name} from step {_start_step(run)}: read as one run")
        else:
            fit.evaluations.append(run)
            notes.append(f"{run.name} is a {run.kind.kind} of {fit.name}'s checkpoint, not another run")
    return [r for r in runs if any(r is k for k in kept)], notes


def _start_step(run: Run) -> int:
    """The step a run started at: its checkpoint's (where recorded), else its first logged training step."""
    if run.kind.ckpt_step is not None:
        return int(run.kind.ckpt_step)
    train = run.scalars.loc[run.scalars["tag"].str.startswith("train/"), "step"]
    return int(train.min()) if len(train) else 0


def continued(frame: pd.DataFrame, resumed: pd.DataFrame, start: int, key: list[str]) -> pd.DataFrame:
    """A frame continued by the part of its run that resumed from step ``start``: the resumed part's rows
    replace the earlier ones after ``start`` (it trained those steps again), and a row the resumed part
    wrote again (same ``key``) keeps its latest write; sorted by the key's first two columns. The one rule
    of joining a resumed run, for load_runs and the studies (analysis/study.py) alike."""
    joined = pd.concat([frame[frame["step"] <= start], resumed], ignore_index=True)
    joined = joined.drop_duplicates(key, keep="last").sort_values(key[:2], kind="stable")
    return joined.reset_index(drop=True)


def record_key(frame: pd.DataFrame) -> list[str]:
    """The columns that name a record's row: every column but its value (long format: step, metric, i, j)."""
    return [c for c in frame.columns if c != "value"]


def _continue(fit: Run, resumed: Run) -> None:
    """Read ``resumed`` into ``fit`` (``continued``), all under the fit's labels."""
    start = _start_step(resumed)
    fit.scalars = continued(fit.scalars, resumed.scalars.assign(**fit.labels), start, ["tag", "step"])
    for name, new in resumed.records.items():
        new = new.assign(**fit.labels)
        old = fit.records.get(name, new.iloc[:0])
        fit.records[name] = continued(old, new, start, [c for c in record_key(new) if c not in fit.labels])
    intervals = pd.concat([fit.intervals, resumed.intervals.assign(**fit.labels)], ignore_index=True)
    fit.intervals = intervals.drop_duplicates(["name", "k"], keep="last").reset_index(drop=True)
    fit.samples += resumed.samples
    fit.masks += resumed.masks
    fit.problems += resumed.problems
    fit.continuations.append(resumed.path)


def comparable(runs: Runs, by: str) -> tuple[Runs, list[str]]:
    """The fits to average in each ``by`` group: those trained to the group's most common number of steps
    (the longest where two counts tie); one note for what is left out, and one if groups end apart."""
    kept, left_out = [], []
    for group in dict.fromkeys(r.labels[by] for r in runs):
        members = [r for r in runs if r.labels[by] == group]
        fits = [r for r in members if r.kind.kind in ("fit", "resumed")]
        if not fits:
            kept += members  # evaluations only (e.g. of official checkpoints): compared as they are
            continue
        counts = pd.Series([r.steps for r in fits]).value_counts()
        steps = max(counts[counts == counts.max()].index)
        chosen = [r for r in fits if r.steps == steps]
        kept += chosen
        left_out += [
            f"{r.name} ({r.kind.kind}, {r.steps} steps)" for r in members if not any(r is c for c in chosen)
        ]
    notes = []
    if left_out:
        notes.append(f"not averaged with the comparable fits of their {by}: {'; '.join(left_out)}")
    ends = {r.labels[by]: r.steps for r in kept}
    if len(set(ends.values())) > 1:
        listing = ", ".join(f"{g}: {s}" for g, s in ends.items())
        notes.append(f"the {by} groups end at different steps ({listing}); compare them at one step")
    return Runs(kept, runs.skipped), notes


def _fail(err: RunError, on_error: Callable[[RunError], None] | None) -> None:
    if on_error is None:
        raise err
    on_error(err)


def _unique_names(dirs: list[Path]) -> list[str]:
    """ "name/version_N" for each run, with more of the path where two would be the same."""
    for depth in range(2, 10):
        names = ["/".join(d.resolve().parts[-depth:]) for d in dirs]
        if len(set(names)) == len(names):
            return names
    return [str(d) for d in dirs]


# ----------------------------------------------------------------------------- reductions


def interval_edges(intervals: pd.DataFrame, name: str, run: str | None = None) -> list[int] | None:
    """The edges [start_0, …, end_{K-1}] of the intervals a callback used, or None if not recorded."""
    rows = intervals[intervals["name"] == name]
    if run is not None:
        rows = rows[rows["run"] == run]
    if rows.empty:
        return None
    rows = rows.drop_duplicates("k").sort_values("k")
    return [int(v) for v in rows["start"]] + [int(rows["end"].iloc[-1])]


def interval_labels(edges: list[int] | None, k: int) -> list[str]:
    """Inclusive timestep ranges ("0–124") for K intervals, or "interval k" when edges are unknown."""
    if edges is None or len(edges) != k + 1:
        return [f"interval {i}" for i in range(k)]
    return [f"{a}–{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)]


def metric_rows(frame: pd.DataFrame, metric: str, source: str) -> pd.DataFrame:
    """Rows of one metric; RunError naming the metric and the metrics there are if none has it."""
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        have = sorted(set(frame["metric"].dropna())) if len(frame) else []
        raise RunError(
            f"no run has metric {metric!r} in records/{source}.csv "
            f"({'it has ' + ', '.join(have[:8]) if have else 'the file is empty or missing'}); "
            "turn on the callback that records it"
        )
    return rows


def at_step(rows: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """Each run's rows at its last measured step at or before ``step`` (its last step if None)."""
    if step is not None:
        rows = rows[rows["step"] <= step]
    last = rows.groupby("run")["step"].transform("max")
    return rows[rows["step"] == last]


def read_affinity(
    run_dir: str | Path, source: tuple[str, str] | None = None, step: int | None = None
) -> tuple[np.ndarray, list[int], str]:
    """A run's K×K affinity between its timestep intervals, their edges (K+1), and the record it came
    from ("affinity/tag" or "conflict/cos"): the one reader of a run's affinity, with one rule.

    The record is ``source`` (records file, metric) or by default the first the run has of
    AFFINITY_SOURCES: the lookahead affinity Z (TaskAffinity), else the gradient cosine
    (GradientConflict). A step that a resumed run measured again keeps its latest write. The matrix is
    the mean over the later ⌈n/2⌉ of the n measured steps (the first measurement, at step 0, is of the
    untrained network: it is left out whenever there are two or more, and the mean averages probe
    noise), or the matrix at ``step`` when one is given. An entry never measured is NaN. Both files are
    read whole (read_records strict): a damaged or cut-off row is a RunError naming its line.
    """
    run_dir = Path(run_dir)
    for name, metric in [source] if source else AFFINITY_SOURCES:
        file = records.path(run_dir, name)
        if file.exists() and not file.is_file():
            raise RunError(f"{file} is not a file (a folder?); it must be the records a run wrote")
        if not file.is_file():
            if source:
                raise RunError(f"{file} does not exist; train with the callback that writes {name!r} records")
            continue
        frame, _ = read_records(file, strict=True)  # a lost row would be a hole in the matrix
        rows = frame[frame["metric"] == metric]
        if source and rows.empty:
            raise RunError(f"{file} has no rows with metric {metric!r}; pass another metric")
        if source and (rows["i"].isna() | rows["j"].isna()).any():
            raise RunError(f"{file}: metric {metric!r} is not a matrix (no i, j); pass another metric")
        rows = rows[rows["i"].notna() & rows["j"].notna()]
        if rows.empty:
            continue
        rows = rows.drop_duplicates(["step", "i", "j"], keep="last")
        steps = sorted(rows["step"].unique())
        if step is None:
            rows = rows[rows["step"].isin(steps[len(steps) // 2 :])]
        elif step in steps:
            rows = rows[rows["step"] == step]
        else:
            raise RunError(
                f"{file} has no {metric!r} matrix at step={step}; it holds steps {steps[0]} … {steps[-1]}"
            )
        mean = rows.groupby(["i", "j"])["value"].mean().reset_index()
        affinity = matrix(mean)
        edges = interval_edges(read_intervals(run_dir, strict=True)[0], name)
        if edges is None or len(edges) != len(affinity) + 1:
            raise RunError(
                f"{records.path(run_dir, records.INTERVALS)} does not give the {len(affinity)} intervals of "
                f"the {name}.csv {metric!r} matrix; pass a complete run directory"
            )
        return affinity, edges, f"{name}/{metric}"
    raise RunError(
        f"{run_dir} has no affinity records (records/affinity.csv 'tag' or records/conflict.csv 'cos'); "
        "measure them with the TaskAffinity or GradientConflict callback in a short run first"
    )


def final_scalars(scalars: pd.DataFrame, tags: Iterable[str]) -> pd.DataFrame:
    """Per run and tag, the last logged value and its step (a final value is never a smoothed one)."""
    rows = scalars[scalars["tag"].isin(list(tags))].sort_values("step", kind="stable")
    if rows.empty:
        raise RunError(f"no run logged any of the scalars {', '.join(tags)}; check the run's events file")
    label_cols = [c for c in rows.columns if c not in ("step", "tag", "value", "wall_time")]
    return (
        rows.groupby([*label_cols, "tag"], dropna=False)
        .agg(step=("step", "last"), value=("value", "last"))
        .reset_index()
    )


def loss_by_t_table(
    loss_by_t: pd.DataFrame, metric: str = "probe_ema", by: str = "routing", baseline: str = "vanilla"
) -> pd.DataFrame:
    """Loss at each timestep t of each group (mean and sd over its runs at their last step), with the
    ratio of each group to the baseline group's mean (< 1: that group denoises t better)."""
    rows = at_step(metric_rows(loss_by_t, metric, "loss_by_t"))
    table = rows.groupby([by, "i"])["value"].agg(["mean", "std", "count"]).reset_index()
    table = table.rename(columns={"i": "t", "count": "runs"})
    base = table[table[by] == baseline].set_index("t")["mean"]
    table["ratio"] = table["mean"] / table["t"].map(base)
    return table


def distance_table(conflict: pd.DataFrame, intervals: pd.DataFrame) -> pd.DataFrame:
    """Mean gradient cosine vs interval distance at each run's last step, distance also in timesteps."""
    rows = at_step(metric_rows(conflict, "cos_by_distance", "conflict")).copy()
    rows = rows.rename(columns={"i": "distance", "value": "cos"}).drop(columns=["metric", "j"])
    width = {}
    for run in rows["run"].unique():
        edges = interval_edges(intervals, "conflict", run)
        width[run] = (edges[-1] - edges[0]) / (len(edges) - 1) if edges else math.nan
    rows["distance_t"] = rows["distance"].astype(float) * rows["run"].map(width)
    return rows.reset_index(drop=True)


def routing_affinity_correlation(
    runs: Run | Runs, source: str = "affinity", metric: str = "tag"
) -> pd.DataFrame:
    """Spearman rank correlation, per run, between the routing masks' channel overlap (IoU) of two
    intervals and their measured affinity (off-diagonal pairs, the affinity's last step)."""
    from scipy.stats import spearmanr

    out = []
    for run in as_runs(runs):
        measured = run.record(source)
        row = {**run.labels, "rho": math.nan, "pairs": 0, "note": ""}
        iou_rows, aff_rows = (
            run.routing[run.routing["metric"] == "iou"],
            measured[measured["metric"] == metric],
        )
        if iou_rows.empty or aff_rows.empty:
            row["note"] = "no routing IoU recorded" if iou_rows.empty else f"no {source} {metric!r} recorded"
            out.append(row)
            continue
        iou, aff = matrix(at_step(iou_rows)), matrix(at_step(aff_rows))
        same = interval_edges(run.intervals, "routing") == interval_edges(run.intervals, source)
        if iou.shape != aff.shape or not same:
            row["note"] = f"routing and {source} intervals differ ({len(iou)} vs {len(aff)})"
            out.append(row)
            continue
        off = ~np.eye(len(iou), dtype=bool) & np.isfinite(iou) & np.isfinite(aff)
        row["pairs"] = int(off.sum())
        if np.ptp(iou[off]) == 0:
            row["note"] = "ρ undefined: the same IoU for every pair (unrouted)"
        else:
            row["rho"] = float(spearmanr(iou[off], aff[off]).statistic)
        out.append(row)
    return pd.DataFrame(out)


def _last_mean(frame: pd.DataFrame, metric: str, off_diagonal: bool = False) -> float:
    rows = frame[frame["metric"] == metric]
    if off_diagonal:
        rows = rows[rows["i"] != rows["j"]]
    return float(at_step(rows)["value"].mean()) if len(rows) else math.nan


def _last_scalar(run: Run, tag: str) -> float:
    rows = run.scalars[run.scalars["tag"] == tag].sort_values("step")
    return float(rows["value"].iloc[-1]) if len(rows) else math.nan


def fid_samples(config: dict, stage: str = "fit") -> int | None:
    """N, the samples behind a run's FID (FID depends on N): SampleQuality's num_samples in fit, its
    test_num_samples (default model.num_samples) in test; None without SampleQuality in the config."""
    callbacks = config_value(config, "trainer.callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        if _class_name(callback) == "SampleQuality":
            args = (callback.get("init_args") if isinstance(callback, dict) else None) or {}
            if stage == "test":
                return args.get("test_num_samples") or config_value(config, "model.num_samples")
            return args.get("num_samples")
    return None


def _fid(run: Run, metric: str, stage: str) -> dict[str, float]:
    """{"FID, N = n": the last recorded value} of one FID record (test: of the run's latest test), or {}."""
    tests = [e for e in run.evaluations if e.kind.kind == "test"]
    source = tests[-1] if stage == "test" and tests else run
    rows = source.quality[source.quality["metric"] == metric]
    if rows.empty:
        return {}
    prefix = "FID" if stage == "fit" else "test FID"
    n = fid_samples(source.config, stage)
    return {f"{prefix}, N = {n if n is not None else '?'}": float(rows.sort_values("step")["value"].iloc[-1])}


def final_metrics(run: Run) -> dict[str, float]:
    """One run's end-of-training summary, each the last value logged (NaN for what it did not record):
    losses, mean probe loss, conflict share and mean cosines, mean affinity, ρ(mask IoU, affinity), and
    the FID of fit and of its latest test with the N it was computed on."""
    return {
        "train/loss (last)": _last_scalar(run, "train/loss"),
        "val/loss_ema (last)": _last_scalar(run, "val/loss_ema"),
        **_fid(run, "fid", "fit"),
        "class accuracy": _last_mean(run.quality, "accuracy"),
        **_fid(run, "test/fid", "test"),
        "probe loss, EMA, mean over t": _last_mean(run.loss_by_t, "probe_ema"),
        "conflicting pairs (share)": _last_mean(run.conflict, "neg_share"),
        "gradient cosine, mean off-diagonal": _last_mean(run.conflict, "cos", off_diagonal=True),
        "affinity Z, mean off-diagonal": _last_mean(run.affinity, "tag", off_diagonal=True),
        "ρ(mask IoU, affinity)": float(routing_affinity_correlation(run)["rho"].iloc[0]),
    }


# ----------------------------------------------------------------------------- measured routing inputs


def read_affinity_options(source: str | Path) -> dict:
    """AffinityRouting's options from a run directory: the matrix (``source``), the interval ``edges`` it
    was measured on and where it came from (``measured``)."""
    path = Path(source)
    given = str(source).strip()  # '' would be read as the current folder, whatever it holds
    if not given or not is_run_dir(path):
        what = "a path that does not exist" if given and not path.exists() else "not a run directory"
        raise DTRLabError(
            f"AffinityRouting.source={str(source)!r} is {what}; give a run folder "
            "(runs/NAME/version_N, measured with TaskAffinity) or a K×K matrix"
        )
    try:
        affinity, edges, measured = read_affinity(path)
    except RunError as err:
        raise DTRLabError(f"AffinityRouting.source={str(source)!r}: {err}") from None
    return {"source": affinity.tolist(), "edges": edges, "measured": measured}
