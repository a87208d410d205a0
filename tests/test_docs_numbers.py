"""The numbers the README quotes equal those of the files they come from: the quickstart's records and figure
index (docs/quickstart/quality.csv, index.md), and the paper-scale plan as benchmarks/memory_plan.py printed
it (docs/paper-scale.md). A number changed on one side only fails here."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return " ".join(text[start:end].split())  # one line: a number's words may wrap


def markdown_rows(text: str, heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading` in an index.md."""
    part = text[text.index(f"## {heading}\n"):]
    rows = []
    for line in part.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # past the header


QUICKSTART = section(README, "The quickstart study")
QUALITY = {
    (r["routing"], r["metric"]): float(r["value"])
    for r in csv.DictReader((REPO / "docs/quickstart/quality.csv").open())
}
INDEX = (REPO / "docs/quickstart/index.md").read_text()


def quoted(pattern: str) -> list[float]:
    found = re.search(pattern, QUICKSTART)
    assert found, f"the README's quickstart section no longer says {pattern!r}"
    return [float(g) for g in found.groups()]


@pytest.mark.parametrize(
    "pattern, metric, scale, digits",
    [
        (r"\((\d+\.\d+) DTR, (\d+\.\d+) unrouted\)", "fid", 1, 2),
        (r"class accuracy (\d\.\d+) and (\d\.\d+)", "accuracy", 1, 3),
        (r"KID (\d\.\d+) and (\d\.\d+)", "kid_mean", 1, 3),
        (r"(\d+\.\d) % and (\d+\.\d) % of samples memorised", "memorised", 100, 1),
    ],
)
def test_quickstart_quality_numbers_are_the_runs_own(pattern, metric, scale, digits):
    dtr, vanilla = quoted(pattern)
    assert dtr == round(scale * QUALITY[("dtr", metric)], digits)
    assert vanilla == round(scale * QUALITY[("vanilla", metric)], digits)


def test_quickstart_cosines_are_the_index_tables():
    said = quoted(r"mean cosine ([\d.]+) / ([\d.]+) / ([\d.]+) at 200 / 400 / 600 timesteps apart, "
                  r"vs ([\d.]+) / ([\d.]+) / ([\d.]+) unrouted")
    rows = {int(r[1]): (float(r[2]), float(r[3])) for r in markdown_rows(INDEX, "cos_vs_distance")}
    assert said[:3] == [round(rows[d][0], 2) for d in (200, 400, 600)]  # the dtr column
    assert said[3:] == [round(rows[d][1], 2) for d in (200, 400, 600)]  # the vanilla column


def test_quickstart_probe_ratios_are_the_index_tables():
    low, low_max = quoted(r"is (\d+)–(\d+) % lower than the unrouted model's at 50 ≤ t ≤ 300")
    high, high_max = quoted(r"and (\d+)–(\d+) % higher above t ≈ 520")
    ratios = {int(r[0]): float(r[3]) for r in markdown_rows(INDEX, "loss_by_t_probe")}
    lower = [100 * (1 - v) for t, v in ratios.items() if 50 <= t <= 300]
    higher = [100 * (v - 1) for t, v in ratios.items() if t > 520]
    assert round(min(lower)) == low and round(max(lower)) == low_max
    assert round(min(higher)) == high and round(max(higher)) == high_max


def test_paper_scale_table_is_the_plan_script_output():
    plan = {}
    for line in (REPO / "docs/paper-scale.md").read_text().splitlines():
        cells = line.split()
        if len(cells) == 14 and cells[0].startswith("DiT-") and cells[1] in ("unrouted", "dtr", "rtr"):
            plan[(cells[0], cells[1])] = cells
    rows = [r for r in README.splitlines() if r.startswith("| DiT-")]
    assert len(rows) == 2
    for row in rows:
        size, params, memory, flops, largest = [c.strip() for c in row.strip("|").split("|")]
        size = size.split()[0]
        for routing in ("unrouted", "dtr"):
            cells = plan[(size, routing)]
            assert params == cells[3] and memory == f"{cells[8]} GB"
            assert flops == f"{cells[9]} ({cells[10]})" and largest.startswith(f"{cells[13]} ")
        unrouted, rtr = plan[(size, "unrouted")][13], plan[(size, "rtr")][13]
        assert largest == f"{unrouted} (R-TR {rtr})"
