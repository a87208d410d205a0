"""analysis/make_figures.py and analysis/compare.py end to end on real tiny runs and bad input."""

from __future__ import annotations

import csv
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = [
    "training_curves",
    "loss_by_t_probe",
    "loss_by_t_train",
    "conflict_heatmaps",
    "affinity_heatmaps",
    "cos_vs_distance",
    "conflict_share",
    "conflict_share_blocks",
    "routing_vs_affinity",
    "samples",
]


def script(name: str, *args) -> subprocess.CompletedProcess:
    """The script as a user runs it, in its own interpreter."""
    return subprocess.run(
        [sys.executable, str(REPO / "analysis" / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def run_main(capsys, monkeypatch):
    """The script's main() in this interpreter (imports once; saves seconds a call), as (rc, out, err)."""
    monkeypatch.syspath_prepend(str(REPO / "analysis"))

    def call(name: str, *args) -> subprocess.CompletedProcess:
        module = importlib.import_module(name.removesuffix(".py"))
        rc = module.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(name, rc, out, err)

    return call


def last_probe(run: Path) -> dict[int, float]:
    with (run / "records" / "loss_by_t.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "probe_ema"]
    last = max(int(r["step"]) for r in rows)
    return {int(r["i"]): float(r["value"]) for r in rows if int(r["step"]) == last}


def test_make_figures_writes_every_figure_and_index(tiny_runs, tmp_path):
    out = tmp_path / "figs"
    done = script("make_figures.py", tiny_runs["vanilla"], tiny_runs["dtr"], "--out", out)
    assert done.returncode == 0, done.stderr
    assert f"wrote {len(FIGURES)} figures" in done.stdout
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0
    index = (out / "index.md").read_text()
    assert [m for m in re.findall(r"^## (\S+)", index, flags=re.M)] == FIGURES
    # the numbers behind the probe figure: per t, both losses and the dtr/vanilla ratio
    van, dtr = last_probe(tiny_runs["vanilla"]), last_probe(tiny_runs["dtr"])
    section = index.split("## loss_by_t_probe")[1].split("## ")[0]
    assert "| t | dtr | vanilla | dtr / vanilla |" in section
    for t in van:
        assert f"| {t} | {dtr[t]:.4g} | {van[t]:.4g} | {dtr[t] / van[t]:.4g} |" in section


def test_make_figures_bad_paths_and_truncated_run(tiny_runs, tmp_path, run_main):
    """Bad paths are one error line each; a cut-off run without affinity still gives the rest."""
    empty = tmp_path / "empty" / "version_0"
    empty.mkdir(parents=True)
    (empty / "config.yaml").write_text("model: {}\n")
    run = tmp_path / "cut" / "version_0"
    shutil.copytree(tiny_runs["dtr"], run)
    (run / "records" / "affinity.csv").unlink()
    data = (run / "records" / "conflict.csv").read_bytes()
    (run / "records" / "conflict.csv").write_bytes(data[: len(data) // 2])
    out = tmp_path / "figs"
    done = run_main("make_figures.py", tmp_path / "nowhere", empty, run, "--out", out)
    assert done.returncode == 2
    errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 2
    assert "nowhere: no such" in errors[0] and "version_0: run has no logged metrics" in errors[1]
    assert "skipped affinity_heatmaps: no run has metric 'tag' in records/affinity.csv" in done.stderr
    assert "conflict.csv: last line is cut off" in done.stderr
    index = (out / "index.md").read_text()
    assert "affinity_heatmaps" in index.split("## Not drawn")[1]
    assert (out / "conflict_heatmaps.png").exists() and not (out / "affinity_heatmaps.png").exists()


def test_make_figures_only_bad_input_exits_2(tmp_path, run_main):
    (tmp_path / "plain").mkdir()
    done = run_main("make_figures.py", tmp_path / "plain", "--out", tmp_path / "figs")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "plain: not a run directory" in done.stderr


def test_compare_pair(tiny_runs, tmp_path, run_main):
    out = tmp_path / "cmp"
    done = run_main("compare.py", tiny_runs["vanilla"], tiny_runs["dtr"], "--out", out)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:1] == ["metric"] and "vs" in header and header[-1] == "vanilla"
    van, dtr = last_probe(tiny_runs["vanilla"]), last_probe(tiny_runs["dtr"])
    mean_van, mean_dtr = sum(van.values()) / len(van), sum(dtr.values()) / len(dtr)
    line = next(ln for ln in done.stdout.splitlines() if ln.strip().startswith("probe loss, EMA"))
    assert f"{mean_van:.4g}" in line and f"{mean_dtr:.4g}" in line
    assert f"{(mean_dtr - mean_van) / mean_van * 100:+.1f} %" in line
    assert "ρ(mask IoU, affinity)" in done.stdout and "undefined for routing=vanilla" in done.stderr
    assert (out / "compare.md").exists() and (out / "loss_by_t_probe.png").exists()


def test_compare_without_common_metric(tmp_path, run_main):
    def lone_run(name: str, routing: str, record: str, row: str) -> Path:
        run = tmp_path / name / "version_0"
        (run / "records").mkdir(parents=True)
        (run / "config.yaml").write_text(f"model:\n  routing:\n    class_path: dtr_lab.routing.{routing}\n")
        (run / "records" / f"{record}.csv").write_text(f"step,metric,i,j,value\n{row}\n")
        return run

    a = lone_run("a", "NoRouting", "conflict", "0,neg_share,,,0.5")
    b = lone_run("b", "DTRRouting", "affinity", "0,tag,0,1,0.1")
    done = run_main("compare.py", a, b)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no metric in common" in done.stderr and "vanilla has conflicting pairs (share)" in done.stderr


@pytest.mark.parametrize("name", ["make_figures.py", "compare.py"])
def test_unknown_group_label(tiny_runs, tmp_path, name, run_main):
    done = run_main(name, tiny_runs["dtr"], "--by", "colour", "--out", tmp_path)
    assert done.returncode == 2 and "--by 'colour' is not a run label" in done.stderr


def test_out_that_is_a_file_is_one_line(tiny_runs, tmp_path, run_main):
    taken = tmp_path / "figures.png"
    taken.write_bytes(b"an existing figure")
    for name, out in (("make_figures.py", taken), ("compare.py", taken / "sub")):
        done = run_main(name, tiny_runs["vanilla"], tiny_runs["dtr"], "--out", out)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and f"{taken} is a file, not a folder" in done.stderr
    assert taken.read_bytes() == b"an existing figure"


def test_compare_skips_an_empty_newest_version(tiny_runs, tmp_path, run_main):
    """A failed start's empty version_1 next to a finished version_0 does not fail the comparison."""
    for name in ("vanilla", "dtr"):
        shutil.copytree(tiny_runs[name], tmp_path / name / "version_0")
        (tmp_path / name / "version_1").mkdir()
    done = run_main("compare.py", str(tmp_path / "*" / "version_*"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("holds no run output") == 2 and "probe loss, EMA" in done.stdout
