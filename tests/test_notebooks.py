"""The notebooks execute top to bottom on fresh tiny runs (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["explore.ipynb", "compare_routing.ipynb"])
def test_notebook_runs(name, tiny_runs, monkeypatch):
    # the kernel inherits the environment: point the notebook at the tiny runs' folder
    monkeypatch.setenv("DTR_RUNS", str(tiny_runs["dtr"].parents[1]))
    # a headless server's MPLBACKEND=Agg is inherited too: the notebooks must show their figures regardless
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    figure_cells = sum("fig = plots." in cell.source for cell in nb.cells if cell.cell_type == "code")
    assert len(images) == figure_cells  # every figure drawn once
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert tables, "the grouped frames show as tables"
    first = nb.cells[1].outputs[0]["data"]["text/plain"]
    assert "Runs(2)" in first and "dtr" in first and "vanilla" in first
