"""The numbers the README quotes equal those of the files they come from: the quickstart's records and figure
index (docs/quickstart/quality.csv, index.md), and the paper-scale plan as benchmarks/memory_plan.py printed
it (docs/paper-scale.md). A number changed on one side only fails here."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from dtr_lab.convergence import paired_steps, plateau, steps_to_target
from dtr_lab.stats import paired_difference, sd_of

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


# ------------------------------------------------------------------------------------ the docs/ pages
# A page's number is checked as the source value rounded to the digits the page shows: "+14.9" agrees with
# 14.87 and 14.93, not with 15.0. Pages write "−" (U+2212); the sources "-".
NUMBER = re.compile(r"[+-]?\d+(?:,\d{3})*(?:\.\d+)?")


def flat(text: str) -> str:
    return " ".join(text.replace("\u2212", "-").split())


def page(name: str) -> str:
    return (REPO / "docs" / f"{name}.md").read_text()


def page_section(name: str, heading: str) -> str:
    """The text under `### heading` (or `## heading`) of a docs page, to the next heading of any level."""
    text = page(name)
    start = re.search(rf"^#+ {re.escape(heading)}\n", text, re.M)
    assert start, f"docs/{name}.md has no heading {heading!r}"
    end = re.compile(r"^#+ ", re.M).search(text, start.end())
    return text[start.end(): end.start() if end else len(text)]


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell.replace("\u2212", "-"))


def agrees(quoted: str, value: float) -> bool:
    decimals = len(quoted.partition(".")[2])
    return abs(float(quoted.replace(",", "")) - value) <= 0.5 * 10**-decimals + 1e-9


def assert_quotes(quoted: list[str], values: list[float], where: str) -> None:
    assert len(quoted) == len(values), f"{where}: quotes {quoted}, the source has {len(values)} values"
    wrong = [(q, round(v, 4)) for q, v in zip(quoted, values) if not agrees(q, v)]
    assert not wrong, f"{where}: quoted ≠ source: {wrong}"


def says(text: str, pattern: str) -> list[str]:
    found = re.search(pattern, flat(text))
    assert found, f"the page no longer says {pattern!r}"
    return list(found.groups())


def table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with `| header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def interval(cell: str, mean: float, low: float, high: float, where: str) -> None:
    """A cell 'mean [low, high]' (or 'mean' alone), starred exactly when the interval excludes 0."""
    quoted = numbers(cell.split("(")[0])[:3]
    assert_quotes(quoted, [mean, low, high][: len(quoted)], where)
    starred = "*" in cell.replace("**", "")  # "**…**" is bold, not a star
    assert starred == (low > 0 or high < 0), f"{where}: the star of {cell!r}"


def csv_rows(path: str) -> list[dict]:
    return list(csv.DictReader((REPO / path).open()))


def paired_csv(folder: str) -> dict[tuple[str, int, str], dict]:
    return {(r["comparison"], int(r["step"]), r["metric"]): r for r in csv_rows(f"{folder}/paired.csv")}


def convergence_csv(folder: str) -> dict[str, dict]:
    return {r["comparison"]: r for r in csv_rows(f"{folder}/convergence.csv")}


def diff(row: dict) -> list[float]:
    return [float(row["diff"]), float(row["ci_low"]), float(row["ci_high"])]


def generated(folder: str, header: str) -> dict[str, list[str]]:
    """A table of a study's generated table.md, by its first cell."""
    return {r[0]: r for r in table((REPO / folder / "table.md").read_text(), header)}


FIVE_SEEDS = "docs/repro/core-5seeds"
COMPLEMENTARITY = "docs/repro/complementarity"
EARLY = "docs/repro-early"
SCALING = "docs/scaling"

# --- docs/studies.md: the 5-seed, complementarity, early and scaling studies (their committed folders)
FIVE_SEED_ARMS = {
    "unrouted": "vanilla-uniform", "DTR": "dtr-uniform", "Switch-DiT": "switch-uniform", "R-TR": "rtr-uniform",
    "experts, width-matched (4 × 64)": "experts-uniform", "experts, equal width (4 × 128)": "experts_wide-uniform",
}
EARLY_ARMS = {
    "vanilla, uniform": "vanilla-uniform", "R-TR, uniform": "rtr-uniform", "DTR, uniform": "dtr-uniform",
    "vanilla, Min-SNR": "vanilla-min_snr", "DTR, Min-SNR": "dtr-min_snr", "vanilla, ANT-UW": "vanilla-uw",
    "DTR, ANT-UW": "dtr-uw",
}


def scores(folder: str) -> list[dict]:
    return [r for r in csv_rows(f"{folder}/scores.csv") if r["metric"] == "fid"]


def fid_curves(rows: list[dict], arm: str, seeds) -> list[tuple[list[int], list[float]]]:
    """Per seed (in `seeds`' order) the digits-FID curve of one arm: steps and values."""
    curves = []
    for seed in seeds:
        points = sorted((int(r["step"]), float(r["value"])) for r in rows if r["arm"] == arm and int(r["seed"]) == seed)
        curves.append(([s for s, _ in points], [v for _, v in points]))
    return curves


def convergence_of(a, b, target: float = 50.0) -> tuple[list[float], list[float], list[float]]:
    """Steps to digits-FID ≤ target and plateau, paired b − a, as the study computes them (mean, low,
    high each), and the per-pair plateau differences."""
    steps = paired_steps([steps_to_target(*c, target) for c in a], [steps_to_target(*c, target) for c in b])
    per_pair = [plateau(*cb) - plateau(*ca) for ca, cb in zip(a, b)]
    flat_plateau = paired_difference(per_pair)
    d = steps.difference
    return [d.mean, d.low, d.high], [flat_plateau.mean, flat_plateau.low, flat_plateau.high], per_pair


def arms_table_agrees(rows: list[list[str]], source: dict[str, list[str]], names: dict, skip=()) -> None:
    """Every number of a page's arms table is the generated table's (its columns `skip` left out)."""
    assert [names[r[0]] for r in rows] == [a for a in source if a in names.values()]
    for row in rows:
        src = [c for i, c in enumerate(source[names[row[0]]]) if i not in skip]
        values = [float(n) for c in src[1:] for n in numbers(c)]
        assert_quotes([n for c in row[1:] for n in numbers(c)], values, row[0])


def test_five_seed_arms_are_the_study_table():
    text = page_section("studies", "The 5-seed study of 2026-12-02 (superseded)")
    source = generated(FIVE_SEEDS, "arm | seeds | steps")
    arms_table_agrees(table(text, "arm | seeds"), source, FIVE_SEED_ARMS, skip=(2,))  # not steps


def test_five_seed_paired_differences_are_the_study_csvs():
    text = page_section("studies", "The 5-seed study of 2026-12-02 (superseded)")
    conv, paired = convergence_csv(FIVE_SEEDS), paired_csv(FIVE_SEEDS)
    rows = table(text, "comparison (b − a) | pairs")
    assert len(rows) == len(conv)
    for name, pairs, steps, plateau_cell, *fids in rows:
        c = conv[{"equal-width experts − vanilla": "wide experts − vanilla"}.get(name, name)]
        assert int(pairs) == int(c["pairs"])
        interval(steps, *(float(c[k]) for k in ("steps_diff", "steps_ci_low", "steps_ci_high")), f"{name} steps")
        interval(plateau_cell, *(float(c[k]) for k in ("plateau_diff", "plateau_ci_low", "plateau_ci_high")), name)
        for step, cell in zip((500, 1000, 1500), fids):
            interval(cell, *diff(paired[(c["comparison"], step, "fid")]), f"{name}, FID at {step}")


def test_complementarity_table_is_the_study_csvs_and_its_post_hoc_row_its_scores():
    text = page_section("studies", "Results: complementarity with Min-SNR and ANT-UW")
    conv, paired = convergence_csv(COMPLEMENTARITY), paired_csv(COMPLEMENTARITY)
    rows = table(text, "comparison (b − a) | pairs")
    for name, pairs, steps, plateau_cell, fid, probe in rows[:2]:
        c = conv[name]
        assert int(pairs) == int(c["pairs"])
        interval(steps, *(float(c[k]) for k in ("steps_diff", "steps_ci_low", "steps_ci_high")), f"{name} steps")
        interval(plateau_cell, *(float(c[k]) for k in ("plateau_diff", "plateau_ci_low", "plateau_ci_high")), name)
        interval(fid, *diff(paired[(name, 1500, "fid")]), f"{name}, FID at 1500")
        interval(probe, *diff(paired[(name, 1500, "probe_3")]), f"{name}, probe at 1500")
    name, pairs, steps, plateau_cell, *_ = rows[2]
    assert name == "DTR+UW − UW, without seed 2 (post hoc)" and pairs == "4"
    fids = scores(COMPLEMENTARITY)
    s, p, _ = convergence_of(fid_curves(fids, "vanilla-uw", (0, 1, 3, 4)), fid_curves(fids, "dtr-uw", (0, 1, 3, 4)))
    interval(steps, *s, "post hoc steps")
    interval(plateau_cell, *p, "post hoc plateau")


def test_early_study_tables_are_its_table_and_csv():
    text = page_section("studies", "Results: 5 paired seeds, 600 steps — early training")
    arms_table_agrees(table(text, "arm | seeds"), generated(EARLY, "arm | seeds"), EARLY_ARMS)
    paired = paired_csv(EARLY)
    rows = table(text, "comparison (b − a) | Δ digits-FID")
    assert len(rows) == 7
    for name, *cells in rows:
        for metric, cell in zip(("fid", "accuracy", *(f"probe_{i}" for i in range(5))), cells):
            interval(cell, *diff(paired[(name, 600, metric)]), f"{name} {metric}")


def test_routing_page_early_table_is_the_study_csv():
    text = page_section("routing", "What they did at this scale")
    paired = paired_csv(EARLY)
    rows = table(text, "comparison (b − a) | FID a → b")
    assert len(rows) == 5
    for name, fids, *cells in rows:
        row = paired[(name, 600, "fid")]
        assert_quotes(numbers(fids), [float(row["a_mean"]), float(row["b_mean"])], f"{name} FID a → b")
        for metric, cell in zip(("fid", "accuracy", *(f"probe_{i}" for i in range(5))), cells):
            interval(cell, *diff(paired[(name, 600, metric)]), f"{name} {metric}")


def test_scaling_table_is_its_csv():
    text = page_section("studies", "Where and when does routing pay? The scaling study (early, superseded)")
    paired = {(r["size"], int(r["step"]), r["metric"]): r for r in csv_rows(f"{SCALING}/paired.csv")}
    rows = table(text, "DTR − vanilla | pairs")
    assert len(rows) == 5
    for label, pairs, fids, *cells in rows:
        size, step = says(label, r"^(DiT-\w+/2), step (\d+)$")
        row = paired[(size, int(step), "fid")]
        assert int(pairs) == int(row["pairs"])
        assert_quotes(numbers(fids), [float(row["a_mean"]), float(row["b_mean"])], f"{label} FID a → b")
        for metric, cell in zip(("fid", "accuracy", "probe_2", "probe_3"), cells):
            interval(cell, *diff(paired[(size, int(step), metric)]), f"{label} {metric}")
