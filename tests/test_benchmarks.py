"""Every benchmark still runs: each script in benchmarks/ once with --tiny (seconds: the smallest model, one
round of one or two steps), so that a change of dtr_lab's API cannot break a benchmark unseen (issue 32:
one import of a removed class broke three of them). Scripts are found, not listed: a new benchmark is
covered the day it is added. The numbers a tiny run prints mean nothing and are not checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MAIN = 'if __name__ == "__main__":'


def scripts() -> list[Path]:
    """The benchmarks: every file of benchmarks/ that runs as a script (the Makefile's `bench` finds them
    the same way)."""
    return sorted(p for p in BENCHMARKS.glob("*.py") if MAIN in p.read_text())


def test_benchmarks_are_found():
    names = {p.name for p in scripts()}
    assert {"routing_overhead.py", "mtl_overhead.py", "switch_overhead.py"} <= names
    assert "timing.py" not in names  # the shared helpers are no benchmark


def test_every_other_file_is_a_helper_the_benchmarks_import():
    """A file without a main guard is skipped by the discovery, so it must be a helper some benchmark
    imports (a benchmark whose guard was forgotten would otherwise never run)."""
    sources = [p.read_text() for p in scripts()]
    for helper in set(BENCHMARKS.glob("*.py")) - set(scripts()):
        assert any(re.search(rf"^from {helper.stem} import", s, re.M) for s in sources), helper.name


@pytest.mark.parametrize("script", scripts(), ids=lambda p: p.stem)
def test_benchmark_runs_tiny(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(script), "--tiny"],
        cwd=tmp_path,  # nothing it writes may land in the repository
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # each ends by printing its results; a ratio or a share is among them
    assert re.search(r"\d\.\d+", result.stdout), result.stdout
    assert list(tmp_path.iterdir()) == []
