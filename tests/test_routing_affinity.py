"""AffinityRouting: windows placed by a measured affinity, from a run or given inline; its bad input."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import DIGITS, REPO, run_cli, run_dir, tiny

from dtr_lab.callbacks.record_writer import RecordWriter, write_intervals
from dtr_lab.callbacks.routing_maps import interval_iou
from dtr_lab.cli import main
from dtr_lab.errors import DTRLabError
from dtr_lab.model_checks import check_identity
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl.intervals import TaskIntervals
from dtr_lab.routing import AffinityRouting
from dtr_lab.runs import read_affinity_options, run_labels

AFFINITY = ["--config", str(REPO / "experiments/routing/affinity.yaml")]


def windows(starts: list[int], width: int, channels: int, rows_per_interval: int) -> torch.Tensor:
    """A table built by hand: each interval's rows active on [start, start + width)."""
    table = torch.zeros(len(starts) * rows_per_interval, channels, dtype=torch.bool)
    for k, start in enumerate(starts):
        table[k * rows_per_interval : (k + 1) * rows_per_interval, start : start + width] = True
    return table


def starts_of(table: torch.Tensor) -> list[int]:
    """The first active channel of every row."""
    return table.int().argmax(dim=1).tolist()


def test_hand_worked_three_intervals():
    """S off-diagonal: S01 = .45, S02 = −.25, S12 = .15 → weights 1, 0, 4/7: a path graph 0 — 1 — 2."""
    routing = AffinityRouting([[1, 0.5, -0.2], [0.4, 1, 0.1], [-0.3, 0.2, 1]], beta=0.5)
    # path Laplacian [[a, −a, 0], [−a, a+b, −b], [0, −b, b]]: λ₂ = (a+b) − √(a² − ab + b²), and from its
    # rows v1 = v0·(1 − λ/a), v2 = v1·b/(b − λ)
    a, b = 1.0, 4 / 7
    lam = (a + b) - math.sqrt(a * a - a * b + b * b)
    v = np.array([1.0, 1 - lam / a, (1 - lam / a) * b / (b - lam)])
    x = 1 - (v - v.min()) / (v.max() - v.min())  # oriented: interval 0 at 0
    np.testing.assert_allclose(routing.coordinates, x, atol=1e-9)
    assert x[1] == pytest.approx(0.3057458, abs=1e-6)
    # C = 10, C_β = 5: starts round(5·x) = 0, round(1.53) = 2, 5; T = 9 → three timesteps per interval
    assert [math.floor(5 * c + 0.5) for c in x] == [0, 2, 5]
    assert torch.equal(routing.table(9, 10), windows([0, 2, 5], 5, 10, 3))
    assert torch.equal(routing.table(9, 10, block=3), routing.table(9, 10))  # one table for every block


@pytest.mark.parametrize("block_a", [(0, 1, 2), (0, 1, 4)], ids=["contiguous", "interleaved"])
def test_two_blocks_share_within_and_not_across(block_a):
    """Two clear blocks (+1 within, −1 across, a little asymmetric noise): each block at one end."""
    k, num_timesteps, channels = 6, 60, 20
    in_a = np.isin(np.arange(k), block_a)
    affinity = np.where(in_a[:, None] == in_a[None, :], 1.0, -1.0)
    affinity += 0.05 * np.random.default_rng(0).standard_normal((k, k))
    routing = AffinityRouting(affinity.tolist(), beta=0.8)
    np.testing.assert_allclose(routing.coordinates, np.where(in_a, 0.0, 1.0), atol=0.05)
    table = routing.table(num_timesteps, channels)
    iou = interval_iou(table, TaskIntervals([0, 10, 20, 30, 40, 50, 60], num_timesteps)).numpy()
    same = in_a[:, None] == in_a[None, :]
    # C_β = 16: a block's intervals share their window (IoU 1), the two ends overlap on 12 of 20 channels
    np.testing.assert_allclose(iou[same], 1.0)
    np.testing.assert_allclose(iou[~same], 12 / 20)
    assert iou[same].mean() > iou[~same].mean()


def test_affinity_decaying_with_distance_gives_a_monotone_shift():
    """Z_ij = s·exp(−|i−j|/2)·(1 + asymmetry), tiny scale s as TAG's: windows move with t, DTR-like."""
    k, channels = 8, 32
    dist = np.abs(np.subtract.outer(np.arange(k), np.arange(k)))
    asym = 1 + 0.1 * np.random.default_rng(1).random((k, k))
    routing = AffinityRouting((1e-3 * np.exp(-dist / 2) * asym).tolist(), beta=0.75, intervals=8)
    assert (np.diff(routing.coordinates) > 0).all()
    starts = starts_of(routing.table(800, channels))
    assert starts[0] == 0 and starts[-1] == channels - 24
    assert all(s <= t for s, t in zip(starts[:-1], starts[1:], strict=True))
    assert len(set(starts)) == k  # every interval its own window
    # only relative affinity matters: the same affinity in other units gives the same table
    scaled = AffinityRouting((5.0 * np.array(routing.affinity)).tolist(), beta=0.75)
    assert torch.equal(scaled.table(800, channels), routing.table(800, channels))


@pytest.mark.parametrize(
    "affinity, starts",
    [
        ([[0.3]], [0]),  # one interval: one window at channel 0
        ([[1, 0.2], [0.3, 1]], [0, 0]),  # K = 2 that help each other: one shared window
        ([[1, -0.2], [-0.2, 1]], [0, 6]),  # K = 2 that conflict: the two ends
        ([[1, 0.1, 0.1], [0.1, 1, 0.1], [0.1, 0.1, 1]], [0, 0, 0]),  # all alike and helpful: shared
        ([[1, -0.1, -0.1], [-0.1, 1, -0.1], [-0.1, -0.1, 1]], [0, 3, 6]),  # all alike, conflicting: spread
    ],
    ids=["K=1", "K=2 help", "K=2 conflict", "equal help", "equal conflict"],
)
def test_degenerate_affinities(affinity, starts):
    k = len(affinity)
    table = AffinityRouting(affinity, beta=0.5).table(4 * k, 12)  # C_β = 6, C − C_β = 6
    assert torch.equal(table, windows(starts, 6, 12, 4))


def test_three_conflicting_blocks_keep_the_t_order():
    """Three mutually conflicting pairs of intervals: a disconnected graph; the tie keeps the t order."""
    affinity = 2 * np.kron(np.eye(3), np.ones((2, 2))) - 1  # pairs (0,1), (2,3), (4,5)
    routing = AffinityRouting(affinity.tolist(), beta=0.5)
    np.testing.assert_allclose(routing.coordinates, [0, 0, 0.5, 0.5, 1, 1], atol=1e-9)


# ----------------------------------------------------------------------------------------- from a run
def write_records(
    run: Path,
    steps: dict[int, np.ndarray],
    name: str = "affinity",
    metric: str = "tag",
    edges: list[int] | None = None,
) -> None:
    """Records in the exact format TaskAffinity/GradientConflict write (RecordWriter, write_intervals)."""
    writer = RecordWriter(run, name)
    for step, matrix in steps.items():
        writer.matrix(step, metric, torch.tensor(matrix))
    k = len(next(iter(steps.values())))
    write_intervals(run, name, torch.tensor(edges or [round(i * 1000 / k) for i in range(k + 1)]))


def test_a_real_run_gives_the_table_of_its_averaged_matrix(tiny_runs):
    """The session's tiny vanilla run measured TaskAffinity at steps 0, 2, 4 on K = 3 intervals."""
    run = tiny_runs["vanilla"]
    with (run / "records/affinity.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "tag"]
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]
    later = [r for r in rows if int(r["step"]) >= 2]  # the later ⌈3/2⌉ = 2 measurements
    mean = np.zeros((3, 3))
    for r in later:
        mean[int(r["i"]), int(r["j"])] += float(r["value"]) / 2
    with (run / "records/intervals.csv").open() as f:
        edges_rows = [r for r in csv.DictReader(f) if r["name"] == "affinity"]
    edges = [int(r["start"]) for r in edges_rows] + [int(edges_rows[-1]["end"])]

    routing = AffinityRouting(**read_affinity_options(run), intervals=3)
    assert routing.measured == "affinity/tag" and routing.edges == edges == [0, 333, 666, 1000]
    np.testing.assert_allclose(routing.affinity, mean, rtol=1e-5)
    inline = AffinityRouting(mean.tolist())  # K uniform intervals over T = the run's uniform split
    assert torch.equal(routing.table(1000, 128), inline.table(1000, 128))


def test_run_records_later_half_resumed_steps_and_fallback(tmp_path):
    a, b, c = (np.full((2, 2), v) + np.eye(2) for v in (0.5, -0.1, -0.3))
    write_records(tmp_path, {0: a, 10: b, 20: c})
    np.testing.assert_allclose(measured(tmp_path).affinity, (b + c) / 2)  # steps 10, 20
    write_records(tmp_path, {20: a})  # a resumed run re-measured step 20: the later write counts
    np.testing.assert_allclose(measured(tmp_path).affinity, (b + a) / 2)

    cos = tmp_path / "cos"
    write_records(cos, {0: a, 5: c}, name="conflict", metric="cos", edges=[0, 100, 1000])
    routing = AffinityRouting(**read_affinity_options(cos))
    assert routing.measured == "conflict/cos" and routing.edges == [0, 100, 1000]
    assert torch.equal(
        routing.table(1000, 10), windows([0, 2], 8, 10, 1).repeat_interleave(torch.tensor([100, 900]), dim=0)
    )  # conflicting pair: the two ends over the run's own intervals


def measured(run: Path, **options) -> AffinityRouting:
    """The affinity routing of a measured run directory, read as a config's ``source: RUN_DIR`` is."""
    return AffinityRouting(**read_affinity_options(run), **options)


def affinity_module(source: Path) -> DiffusionModule:
    """A T = 100 DiT-T/2 diffusion module routed by the affinity measured in ``source``."""

    def net(*args, **kw):
        return DiT(*args, size="DiT-T/2", **kw)

    return DiffusionModule(net=net, routing=measured(source), num_timesteps=100, sample_steps=100)


def test_a_source_that_gains_records_fails_the_checkpoint_identity(tmp_path):
    write_records(tmp_path, {0: np.eye(3), 4: np.eye(3) - 0.1}, edges=[0, 30, 60, 100])
    saved = affinity_module(tmp_path).identity()
    check_identity(affinity_module(tmp_path), saved)  # the same records: the same routing
    # the source run measured once more
    write_records(tmp_path, {8: np.eye(3) + 0.2 * np.diag([1, 1], 1)}, edges=[0, 30, 60, 100])
    with pytest.raises(DTRLabError, match=r"checkpoint was trained with routing=AffinityRouting\(beta"):
        check_identity(affinity_module(tmp_path), saved)


# ----------------------------------------------------------------------------------------- bad input
def bad_sources(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    empty = tmp_path / "empty_run"  # a run (its config) that measured nothing
    empty.mkdir()
    (empty / "config.yaml").write_text("model: {}\n")
    measured = tmp_path / "measured"
    write_records(measured, {0: np.eye(3)})
    no_intervals = tmp_path / "no_intervals"
    RecordWriter(no_intervals, "affinity").matrix(0, "tag", torch.eye(2))
    unmeasured = tmp_path / "unmeasured"  # pair (1, 0) never recorded
    write_records(unmeasured, {0: np.eye(2)}, edges=[0, 500, 1000])
    lines = (unmeasured / "records/affinity.csv").read_text().splitlines()
    (unmeasured / "records/affinity.csv").write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    folder = tmp_path / "folder"  # records/affinity.csv is a folder: never the cosine fallback in silence
    write_records(folder, {0: np.eye(2)}, edges=[0, 500, 1000])
    write_records(folder, {0: np.eye(2)}, name="conflict", metric="cos", edges=[0, 500, 1000])
    (folder / "records/affinity.csv").unlink()
    (folder / "records/affinity.csv").mkdir()
    extra = tmp_path / "extra"  # line 3 (pair (0, 1)) has a sixth field
    write_records(extra, {0: np.eye(2)}, edges=[0, 500, 1000])
    lines = (extra / "records/affinity.csv").read_text().splitlines()
    lines[2] += ",7"
    (extra / "records/affinity.csv").write_text("\n".join(lines) + "\n")
    return {
        "missing path": ({"source": str(tmp_path / "nope")}, "is a path that does not exist"),
        "empty path": ({"source": ""}, "AffinityRouting.source='' is not a run directory"),
        "folder, no run": ({"source": str(tmp_path)}, "is not a run directory"),
        "affinity.csv a folder": ({"source": str(folder)}, "affinity.csv is not a file"),
        "extra field": (
            {"source": str(extra)},
            "affinity.csv: 1 malformed row(s) ignored (line 3; line 3: 6 "
            "fields where 5 are expected); this reader takes the whole file or nothing",
        ),
        "no records": ({"source": str(empty)}, "has no affinity records"),
        "no intervals": ({"source": str(no_intervals)}, "intervals.csv does not give the 2 intervals"),
        "run K mismatch": ({"source": str(measured), "intervals": 5}, "K=3 intervals but intervals=5"),
        "unmeasured pair": ({"source": str(unmeasured)}, "no finite affinity at (1, 0)"),
        "not square": ({"source": [[1, 2, 3], [4, 5, 6]]}, "is not a square K×K matrix"),
        "ragged": ({"source": [[1, 2], [3]]}, "is not a square K×K matrix"),
        "empty": ({"source": []}, "is not a square K×K matrix"),
        "NaN": ({"source": [[1, 0.5], [0.5, float("nan")]]}, "no finite affinity at (1, 1)"),
        "inline K mismatch": ({"source": np.eye(3).tolist(), "intervals": 4}, "is 3×3 but intervals=4"),
        "beta 0": ({"source": [[1.0]], "beta": 0.0}, "beta=0.0 is outside (0, 1]"),
        "beta > 1": ({"source": [[1.0]], "beta": 1.5}, "beta=1.5 is outside (0, 1]"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing path",
        "empty path",
        "folder, no run",
        "affinity.csv a folder",
        "extra field",
        "no records",
        "no intervals",
        "run K mismatch",
        "unmeasured pair",
        "not square",
        "ragged",
        "empty",
        "NaN",
        "inline K mismatch",
        "beta 0",
        "beta > 1",
    ],
)
def test_bad_source_is_one_line(case, tmp_path):
    kwargs, needle = bad_sources(tmp_path)[case]
    with pytest.raises(DTRLabError) as err:
        if isinstance(kwargs["source"], str):  # a run directory: read by dtr_lab.runs, as configs do
            kwargs = {**kwargs, **read_affinity_options(kwargs["source"])}
        AffinityRouting(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_run_measured_over_another_t_is_one_line(tmp_path):
    write_records(tmp_path, {0: np.eye(2)}, edges=[0, 500, 1000])
    with pytest.raises(DTRLabError, match=r"over T=1000 timesteps, but this model has T=100"):
        AffinityRouting(**read_affinity_options(tmp_path)).table(100, 8)


def test_cli_bad_source_exits_2_with_one_line_and_no_run(tmp_path):
    save = tmp_path / "runs"
    proc = run_cli(
        "fit",
        *DIGITS,
        *AFFINITY,
        *tiny(save, steps=2),
        "--model.routing.init_args.source",
        str(tmp_path / "no_such_run"),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("dtr_lab: error: AffinityRouting.source=")
    assert [line for line in proc.stderr.splitlines() if "error" in line.lower()] == [
        proc.stderr.strip().splitlines()[-1]
    ]
    assert not save.exists() or not any(save.rglob("*"))


def test_two_stage_workflow_trains_from_a_measured_run(tiny_runs, tmp_path):
    """Stage 2 of the README's pair: the shipped affinity.yaml with the measuring run as its source."""
    save = tmp_path / "runs"
    main(
        [
            "fit",
            *DIGITS,
            *AFFINITY,
            *tiny(save, steps=2, batch=16),
            "--trainer.callbacks",
            "[]",
            "--model.routing.init_args.source",
            str(tiny_runs["vanilla"]),
        ]
    )
    ckpt = torch.load(run_dir(save) / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    expected = AffinityRouting(**read_affinity_options(tiny_runs["vanilla"]), beta=0.8)
    assert ckpt["dtr_lab_identity"]["routing"] == expected.identity()
    config = yaml.safe_load((run_dir(save) / "config.yaml").read_text())
    assert config["model"]["routing"]["init_args"]["source"] == str(tiny_runs["vanilla"])  # provenance
    assert run_labels(config)["routing"] == "affinity"  # how dtr_lab.runs labels the run for comparisons
