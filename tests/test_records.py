"""The run-record format (dtr_lab.records): one schema for writer and reader, rows → K×K matrix, and the
one affinity reader (dtr_lab.runs.read_affinity) with its one rule."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import CONFLICT_EDGES, write_fake_run

from dtr_lab import records, runs
from dtr_lab.callbacks.record_writer import RecordWriter as TensorRecordWriter
from dtr_lab.records import RecordWriter, RunError, matrix, read_intervals, read_records, write_intervals


def test_writer_and_reader_share_one_schema(tmp_path):
    writer = RecordWriter(tmp_path, "conflict")
    assert writer.path == records.path(tmp_path, "conflict") == tmp_path / "records" / "conflict.csv"
    assert writer.path.read_text().strip() == ",".join(records.COLUMNS)
    assert runs.RECORD_COLUMNS == list(records.COLUMNS)
    assert runs.INTERVAL_COLUMNS == list(records.INTERVAL_COLUMNS)
    assert runs.read_records is read_records and runs.RunError is RunError and runs.matrix is matrix
    write_intervals(tmp_path, "conflict", [0, 10, 30])
    assert (tmp_path / "records" / "intervals.csv").read_text().splitlines() == [
        ",".join(records.INTERVAL_COLUMNS),
        "conflict,0,0,10",
        "conflict,1,10,30",
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


def numbered_rows(path, damage: dict[int, str]) -> None:
    """A records file whose line n (2 … 101) is `n,probe,0,,n/100`, or damage[n] in its place."""
    rows = [damage.get(n, f"{n},probe,0,,{n / 100}") for n in range(2, 102)]
    path.write_text("step,metric,i,j,value\n" + "\n".join(rows) + "\n")


def test_no_row_is_left_out_in_silence(tmp_path):
    """100 rows, one with an extra field (line 40, as a resumed run appending to a cut-off line leaves),
    one short (60), one whose value is no number (80), a cut-off last line (102): the other 97 are read
    and every loss is named with its line; read strictly (what an affinity routing reads), it is refused."""
    path = tmp_path / "loss_by_t.csv"
    numbered_rows(path, {40: "40,probe,0,,0.4,9", 60: "60,probe,0", 80: "80,probe,0,,oops"})
    with path.open("a") as f:
        f.write("102,probe,0,,1.0")  # no newline: the writer was cut off
    frame, problems = read_records(path)
    assert frame["step"].tolist() == [n for n in range(2, 102) if n not in (40, 60, 80)]
    np.testing.assert_allclose(frame["value"], frame["step"].astype(float) / 100)
    assert problems == [
        f"{path}: line 102 is cut off (no newline at its end; ignored)",
        f"{path}: 3 malformed row(s) ignored (line 40, 60, 80; line 40: 6 fields where 5 are expected)",
    ]
    numbered_rows(path, {40: "40,probe,0,,0.4,9"})
    assert len(read_records(path)[0]) == 99
    with pytest.raises(RunError, match=r"loss_by_t.csv: 1 malformed row\(s\) ignored \(line 40; line 40: 6 "):
        read_records(path, strict=True)
    path.write_bytes(b"")
    with pytest.raises(RunError, match=r"loss_by_t.csv: empty \(0 bytes"):
        read_records(path, strict=True)


def test_load_run_reports_an_extra_field_row(tmp_path):
    """What load_run reads reaches the figures' notes (make_figures, compare, index.md): the row is named."""
    run = write_fake_run(tmp_path)
    file = run / "records/conflict.csv"
    lines = file.read_text().splitlines()
    lines[5] += ",0.5"
    file.write_text("\n".join(lines) + "\n")
    loaded = runs.load_run(run)
    assert (
        f"{file}: 1 malformed row(s) ignored (line 6; line 6: 6 fields where 5 are expected)"
        in loaded.problems
    )
    assert len(loaded.conflict) == len(lines) - 2  # the header and the damaged row


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


def test_read_affinity_reads_both_files_whole(tmp_path):
    """A damaged row in the affinity or its intervals is refused, never a hole in the matrix."""
    run = write_fake_run(tmp_path)
    with (run / "records/intervals.csv").open("a") as f:
        f.write("affinity,9,0\n")
    with pytest.raises(RunError, match=r"intervals.csv: 1 malformed row.*line \d+: 3 fields where 4"):
        runs.read_affinity(run)


def test_read_affinity_without_records_or_intervals(tmp_path):
    run = write_fake_run(tmp_path)
    (run / "records" / "intervals.csv").write_text("name,k,start,end\n")
    with pytest.raises(RunError, match="does not give the 4 intervals"):
        runs.read_affinity(run)
    shutil.rmtree(run / "records")
    with pytest.raises(RunError, match="has no affinity records"):
        runs.read_affinity(run)


def test_a_record_is_read_by_its_header_and_found_without_a_list(tmp_path):
    """The schema is the header: a record of other columns reads typed by their names (step, i, j, k as
    integers; metric, name as text; any other as numbers, nan kept), and every records/*.csv but the
    intervals is a record of the run."""
    RecordWriter(tmp_path, "grad_norm").vector(3, "norm", [0.5, 1.5])
    write_intervals(tmp_path, "grad_norm", [0, 500, 1000])
    odd = records.path(tmp_path, "spectrum")
    odd.write_text("step,k,name,power\n1,0,low,2.5\n2,1,high,nan\n3,x,high,1\n")
    assert records.names(tmp_path) == ["grad_norm", "spectrum"]
    frame, problems = read_records(odd, columns=None)
    assert list(frame.columns) == ["step", "k", "name", "power"]
    assert [str(t) for t in frame.dtypes] == ["Int64", "Int64", "string", "float64"]
    assert frame["step"].tolist() == [1, 2] and frame["power"].iloc[0] == 2.5
    assert np.isnan(frame["power"].iloc[1])
    assert problems == [f"{odd}: 1 malformed row(s) ignored (line 4; line 4: k 'x' is not a number)"]
    long, _ = read_records(records.path(tmp_path, "grad_norm"), columns=None)
    assert list(long.columns) == list(records.COLUMNS) and long["value"].tolist() == [0.5, 1.5]
    assert records.names(tmp_path / "nothing") == []
