"""The run-record format (dtr_lab.records): one schema for writer and reader, rows → K×K matrix, and the
one affinity reader (dtr_lab.runs.read_affinity) with its one rule."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import CONFLICT_EDGES, write_fake_run

from dtr_lab import records, runs
from dtr_lab.callbacks.records import RecordWriter as TensorRecordWriter
from dtr_lab.records import RecordWriter, RunError, matrix, read_intervals, read_records, write_intervals


def test_writer_and_reader_share_one_schema(tmp_path):
    writer = RecordWriter(tmp_path, "conflict")
    assert writer.path == records.path(tmp_path, "conflict") == tmp_path / "records" / "conflict.csv"
    assert writer.path.read_text().strip() == ",".join(records.COLUMNS)
    assert runs.RECORD_COLUMNS == list(records.COLUMNS) and runs.RECORDS == records.NAMES
    assert runs.INTERVAL_COLUMNS == list(records.INTERVAL_COLUMNS)
    assert runs.read_records is read_records and runs.RunError is RunError and runs.matrix is matrix
    write_intervals(tmp_path, "conflict", [0, 10, 30])
    assert (tmp_path / "records" / "intervals.csv").read_text().splitlines() == [
        ",".join(records.INTERVAL_COLUMNS), "conflict,0,0,10", "conflict,1,10,30"
    ]


def test_rows_round_trip_to_the_matrix(tmp_path):
    m = [[1.0, -0.25, 0.5], [0.125, 1.0, float("nan")], [1 / 3, 2.0, 1.0]]
    writer = RecordWriter(tmp_path, "affinity")
    writer.scalar(7, "neg_share", 0.5)
    writer.vector(7, "grad_norm", [1.0, 2.0, 3.0])
    writer.matrix(7, "tag", m)
    frame, problems = read_records(writer.path)
    assert problems == []
    rows = frame[frame["metric"] == "tag"]
    assert len(rows) == 9 and rows["step"].eq(7).all()
    expected = np.array(m)
    expected[2, 0] = float(f"{1 / 3:.8g}")  # written to 8 significant digits
    np.testing.assert_array_equal(matrix(rows), expected)
    # missing entries are NaN, K is one more than the largest index
    np.testing.assert_array_equal(matrix(rows[rows["i"] != 2]).shape, (3, 3))
    assert np.isnan(matrix(rows[rows["i"] != 2])[2]).all()


def test_the_callbacks_writer_writes_tensors_as_the_same_bytes(tmp_path):
    m = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    TensorRecordWriter(tmp_path / "a", "x").matrix(3, "cos", m)
    TensorRecordWriter(tmp_path / "a", "x").vector(3, "g", m[0], index=[0, 10, 20, 30])
    RecordWriter(tmp_path / "b", "x").matrix(3, "cos", m.tolist())
    RecordWriter(tmp_path / "b", "x").vector(3, "g", m[0].tolist(), index=[0, 10, 20, 30])
    assert records.path(tmp_path / "a", "x").read_bytes() == records.path(tmp_path / "b", "x").read_bytes()


def test_read_intervals_keeps_a_resumed_runs_last_copy(tmp_path):
    write_intervals(tmp_path, "conflict", [0, 10, 30])
    write_intervals(tmp_path, "conflict", [0, 20, 30])  # a resumed run writes its intervals again
    frame, _ = read_intervals(tmp_path)
    assert frame["start"].tolist() == [0, 20] and frame["end"].tolist() == [20, 30]
    assert read_intervals(tmp_path / "nothing")[0].empty


# ----------------------------------------------------------------------------- the one affinity reader


def test_read_affinity_rule_on_a_hand_made_run(tmp_path):
    """Z_{i→j} = −|i−j| − 0.1·i at steps 0 and 100; cos = 1 − |i−j|/2·(1 + s/100) at steps 0, 50, 100."""
    run = write_fake_run(tmp_path)
    i, j = np.indices((4, 4))
    z, source = -abs(i - j) - 0.1 * i, "affinity/tag"
    affinity, edges, measured = runs.read_affinity(run)  # lookahead affinity first: the later 1 of 2 steps
    assert (measured, edges) == (source, CONFLICT_EDGES)
    np.testing.assert_allclose(affinity, z)
    # the later ⌈3/2⌉ = 2 of the cosine's 3 steps (50, 100), averaged
    cos, _, measured = runs.read_affinity(run, ("conflict", "cos"))
    assert measured == "conflict/cos"
    np.testing.assert_allclose(cos, (2 - abs(i - j) / 2 * (1.5 + 2)) / 2)
    step0, _, _ = runs.read_affinity(run, ("conflict", "cos"), step=0)
    np.testing.assert_allclose(step0, 1 - abs(i - j) / 2)
    # without lookahead affinity records: the gradient cosine
    (run / "records" / "affinity.csv").unlink()
    fallback, _, measured = runs.read_affinity(run)
    assert measured == "conflict/cos"
    np.testing.assert_array_equal(fallback, cos)


def test_read_affinity_keeps_a_remeasured_steps_latest_write(tmp_path):
    run = write_fake_run(tmp_path)
    with (run / "records" / "affinity.csv").open("a") as f:  # a resumed run measures step 100 again
        f.writelines(f"100,tag,{i},{j},{i + j}\n" for i in range(4) for j in range(4))
    affinity, _, _ = runs.read_affinity(run)
    np.testing.assert_allclose(affinity, np.add.outer(np.arange(4), np.arange(4)))


@pytest.mark.parametrize(
    ("source", "step", "match"),
    [
        (("quality", "fid"), None, "quality.csv does not exist"),
        (("conflict", "tag"), None, "no rows with metric 'tag'"),
        (("conflict", "neg_share"), None, "not a matrix"),
        (("conflict", "cos"), 7, "step=7"),
    ],
)
def test_read_affinity_names_what_is_missing(tmp_path, source, step, match):
    run = write_fake_run(tmp_path)
    with pytest.raises(RunError, match=match):
        runs.read_affinity(run, source, step)


def test_read_affinity_without_records_or_intervals(tmp_path):
    run = write_fake_run(tmp_path)
    (run / "records" / "intervals.csv").write_text("name,k,start,end\n")
    with pytest.raises(RunError, match="does not give the 4 intervals"):
        runs.read_affinity(run)
    shutil.rmtree(run / "records")
    with pytest.raises(RunError, match="has no affinity records"):
        runs.read_affinity(run)
