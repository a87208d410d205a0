"""The numbers the README and the docs/ pages quote equal those of the files they come from. README: the
quickstart's records and figure index (docs/quickstart/quality.csv, index.md) and the paper-scale plan as
benchmarks/memory_plan.py printed it (docs/paper-scale.md). docs/: the studies' committed tables and CSVs
(docs/repro/core-5seeds, complementarity, docs/repro-early, docs/scaling; recomputed with
dtr_lab.runs.convergence where a page derives a number from them), the shipped configs, the code's
defaults and tables, the tests that state a fault's size or a tolerance, and TensorBoard's own constants.
Cited facts (the papers' FIDs) and measurements whose output was not kept are not quoted as numbers. A
number changed on one side only fails here."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path

import pytest

from dtr_lab.runs.convergence import paired_steps, plateau, steps_to_target
from dtr_lab.runs.stats import paired_difference, sd_of

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return " ".join(text[start:end].split())  # one line: a number's words may wrap


def markdown_rows(text: str, heading: str) -> list[list[str]]:
    """The rows of the first table under `## heading` in an index.md."""
    part = text[text.index(f"## {heading}\n") :]
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
    said = quoted(
        r"mean cosine ([\d.]+) / ([\d.]+) / ([\d.]+) at 200 / 400 / 600 timesteps apart, "
        r"vs ([\d.]+) / ([\d.]+) / ([\d.]+) unrouted"
    )
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
NUMBER = re.compile(r"[+-]?\d+(?:,\d{3})*(?:\.\d+)?(?:e[+-]?\d+)?")


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
    return text[start.end() : end.start() if end else len(text)]


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell.replace("\u2212", "-"))


def agrees(quoted: str, value: float) -> bool:
    mantissa, _, exponent = quoted.lower().partition("e")  # 2.9e-5: the last digit shown is 1e-6
    decimals = len(mantissa.partition(".")[2]) - int(exponent or 0)
    return abs(float(quoted.replace(",", "")) - value) <= 0.5 * 10**-decimals + 1e-9


def assert_quotes(quoted: list[str], values: list[float], where: str) -> None:
    assert len(quoted) == len(values), f"{where}: quotes {quoted}, the source has {len(values)} values"
    wrong = [(q, round(v, 4)) for q, v in zip(quoted, values, strict=True) if not agrees(q, v)]
    assert not wrong, f"{where}: quoted ≠ source: {wrong}"


def says(text: str, pattern: str) -> list[str]:
    found = re.search(pattern.replace("\u2212", "-"), flat(text))
    assert found, f"the page no longer says {pattern!r}"
    return list(found.groups())


def table(text: str, header: str) -> list[list[str]]:
    """The body rows of the markdown table whose header row starts with `| header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header}"))
    rows = []
    for line in lines[start + 2 :]:
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
    "unrouted": "vanilla-uniform",
    "DTR": "dtr-uniform",
    "Switch-DiT": "switch-uniform",
    "R-TR": "rtr-uniform",
    "experts, width-matched (4 × 64)": "experts-uniform",
    "experts, equal width (4 × 128)": "experts_wide-uniform",
}
EARLY_ARMS = {
    "vanilla, uniform": "vanilla-uniform",
    "R-TR, uniform": "rtr-uniform",
    "DTR, uniform": "dtr-uniform",
    "vanilla, Min-SNR": "vanilla-min_snr",
    "DTR, Min-SNR": "dtr-min_snr",
    "vanilla, ANT-UW": "vanilla-uw",
    "DTR, ANT-UW": "dtr-uw",
}


def scores(folder: str) -> list[dict]:
    return [r for r in csv_rows(f"{folder}/scores.csv") if r["metric"] == "fid"]


def fid_curves(rows: list[dict], arm: str, seeds) -> list[tuple[list[int], list[float]]]:
    """Per seed (in `seeds`' order) the digits-FID curve of one arm: steps and values."""
    curves = []
    for seed in seeds:
        points = sorted(
            (int(r["step"]), float(r["value"])) for r in rows if r["arm"] == arm and int(r["seed"]) == seed
        )
        curves.append(([s for s, _ in points], [v for _, v in points]))
    return curves


def convergence_of(a, b, target: float = 50.0) -> tuple[list[float], list[float], list[float]]:
    """Steps to digits-FID ≤ target and plateau, paired b − a, as the study computes them (mean, low,
    high each), and the per-pair plateau differences."""
    steps = paired_steps([steps_to_target(*c, target) for c in a], [steps_to_target(*c, target) for c in b])
    per_pair = [plateau(*cb) - plateau(*ca) for ca, cb in zip(a, b, strict=True)]
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
        interval(
            steps, *(float(c[k]) for k in ("steps_diff", "steps_ci_low", "steps_ci_high")), f"{name} steps"
        )
        interval(
            plateau_cell, *(float(c[k]) for k in ("plateau_diff", "plateau_ci_low", "plateau_ci_high")), name
        )
        for step, cell in zip((500, 1000, 1500), fids, strict=True):
            interval(cell, *diff(paired[(c["comparison"], step, "fid")]), f"{name}, FID at {step}")


def test_complementarity_table_is_the_study_csvs_and_its_post_hoc_row_its_scores():
    text = page_section("studies", "Results: complementarity with Min-SNR and ANT-UW")
    conv, paired = convergence_csv(COMPLEMENTARITY), paired_csv(COMPLEMENTARITY)
    rows = table(text, "comparison (b − a) | pairs")
    for name, pairs, steps, plateau_cell, fid, probe in rows[:2]:
        c = conv[name]
        assert int(pairs) == int(c["pairs"])
        interval(
            steps, *(float(c[k]) for k in ("steps_diff", "steps_ci_low", "steps_ci_high")), f"{name} steps"
        )
        interval(
            plateau_cell, *(float(c[k]) for k in ("plateau_diff", "plateau_ci_low", "plateau_ci_high")), name
        )
        interval(fid, *diff(paired[(name, 1500, "fid")]), f"{name}, FID at 1500")
        interval(probe, *diff(paired[(name, 1500, "probe_3")]), f"{name}, probe at 1500")
    name, pairs, steps, plateau_cell, *_ = rows[2]
    assert name == "DTR+UW − UW, without seed 2 (post hoc)" and pairs == "4"
    fids = scores(COMPLEMENTARITY)
    s, p, _ = convergence_of(
        fid_curves(fids, "vanilla-uw", (0, 1, 3, 4)), fid_curves(fids, "dtr-uw", (0, 1, 3, 4))
    )
    interval(steps, *s, "post hoc steps")
    interval(plateau_cell, *p, "post hoc plateau")


def test_early_study_tables_are_its_table_and_csv():
    text = page_section("studies", "Results: 5 paired seeds, 600 steps — early training")
    arms_table_agrees(table(text, "arm | seeds"), generated(EARLY, "arm | seeds"), EARLY_ARMS)
    paired = paired_csv(EARLY)
    rows = table(text, "comparison (b − a) | Δ digits-FID")
    assert len(rows) == 7
    for name, *cells in rows:
        for metric, cell in zip(("fid", "accuracy", *(f"probe_{i}" for i in range(5))), cells, strict=True):
            interval(cell, *diff(paired[(name, 600, metric)]), f"{name} {metric}")


def test_routing_page_early_table_is_the_study_csv():
    text = page_section("routing", "What they did at this scale")
    paired = paired_csv(EARLY)
    rows = table(text, "comparison (b − a) | FID a → b")
    assert len(rows) == 5
    for name, fids, *cells in rows:
        row = paired[(name, 600, "fid")]
        assert_quotes(numbers(fids), [float(row["a_mean"]), float(row["b_mean"])], f"{name} FID a → b")
        for metric, cell in zip(("fid", "accuracy", *(f"probe_{i}" for i in range(5))), cells, strict=True):
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
        for metric, cell in zip(("fid", "accuracy", "probe_2", "probe_3"), cells, strict=True):
            interval(cell, *diff(paired[(size, int(step), metric)]), f"{label} {metric}")


N = r"([+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?)"  # a quoted number, as a regex group
IV = rf"{N} \[{N}, {N}\]"  # mean [low, high]


def steps_of(c: dict) -> list[float]:
    return [float(c[k]) for k in ("steps_diff", "steps_ci_low", "steps_ci_high")]


def plateau_of(c: dict) -> list[float]:
    return [float(c[k]) for k in ("plateau_diff", "plateau_ci_low", "plateau_ci_high")]


def runs_in(folder: str) -> int:
    return len({(r["arm"], r["seed"]) for r in csv_rows(f"{folder}/scores.csv")})


def held_out_memorised() -> float:
    """The memorised share of the 180 held-out digits against the training split, as SampleQuality
    scores it."""
    from dtr_lab.digits import digits_split, load_digits_tensors
    from dtr_lab.metrics.memorisation import Memorisation

    images, _ = load_digits_tensors()
    train, held_out = digits_split()
    return Memorisation(images[train])(images[held_out])


def test_five_seed_prose_is_the_study_files():
    text = page_section("studies", "The 5-seed study of 2026-12-02 (superseded)")
    conv, paired, fids = convergence_csv(FIVE_SEEDS), paired_csv(FIVE_SEEDS), scores(FIVE_SEEDS)
    assert int(says(text, r"trained (\d+) runs")[0]) == runs_in(FIVE_SEEDS)
    medians = says(
        text,
        r"at 1000 / 1250 / 1500: "
        + r" / ".join([N] * 3)
        + " unrouted, "
        + " / ".join([N] * 3)
        + " DTR, "
        + " / ".join([N] * 3)
        + r" Switch\)\. R-TR \("
        + " / ".join([N] * 3)
        + r"\) and both expert arms \("
        + " / ".join([N] * 3)
        + " and "
        + " / ".join([N] * 3),
    )
    arms = (
        "vanilla-uniform",
        "dtr-uniform",
        "switch-uniform",
        "rtr-uniform",
        "experts-uniform",
        "experts_wide-uniform",
    )
    assert_quotes(
        medians,
        [
            statistics.median(float(r["value"]) for r in fids if r["arm"] == arm and int(r["step"]) == step)
            for arm in arms
            for step in (1000, 1250, 1500)
        ],
        "median FID",
    )
    memorised = {
        arm: statistics.mean(
            float(r["value"])
            for r in csv_rows(f"{FIVE_SEEDS}/scores.csv")
            if r["arm"] == arm and r["metric"] == "memorised" and r["step"] == "1500"
        )
        for arm in arms
    }
    low, high, real = says(
        text,
        rf"memorised share at step 1500 is {N}–{N} in every arm, below held-out real "
        rf"digits' {N}",
    )
    assert_quotes(
        [low, high, real],
        [min(memorised.values()), max(memorised.values()), held_out_memorised()],
        "memorised",
    )
    unrouted = says(text, rf"Unrouted gets there at step {N} on average")
    assert_quotes(unrouted, [float(numbers(conv["DTR − vanilla"]["a_steps"])[0])], "steps to FID ≤ 50")
    dtr = says(
        text,
        rf"persists to the plateau: {N} % \[{N}, {N}\] at 600 ≤ t < 800; below t = 600 the fifths "
        rf"are within ±1 % \({N}, {N}, {N} %\), and at t ≥ 800 the mean is {N} % with an interval, "
        rf"\[{N}, {N}\]",
    )
    at = {i: diff(paired[("DTR − vanilla", 1500, f"probe_{i}")]) for i in range(5)}
    assert_quotes(dtr, at[3] + [at[i][0] for i in range(3)] + at[4], "DTR's probe at 1500")
    assert all(abs(at[i][0]) <= 1 for i in range(3))
    switch = says(
        text,
        rf"high-noise gain also persists: {N} % \[{N}, {N}\] at t ≥ 800 against unrouted, "
        rf"and {N} % against DTR",
    )
    assert_quotes(
        switch,
        diff(paired[("Switch − vanilla", 1500, "probe_4")])
        + diff(paired[("Switch − DTR", 1500, "probe_4")])[:1],
        "Switch's probe at 1500",
    )
    experts = says(text, rf"\({N} % against unrouted, width-matched; {N} % at equal width\)")
    assert_quotes(
        experts,
        [
            float(paired[(c, 1500, "probe_4")]["diff"])
            for c in ("experts − vanilla", "wide experts − vanilla")
        ],
        "experts' probe at 1500",
    )


def test_complementarity_prose_is_its_scores():
    text = page_section("studies", "Results: complementarity with Min-SNR and ANT-UW")
    assert int(says(text, r"trained (\d+) runs")[0]) == runs_in(COMPLEMENTARITY)
    fids = scores(COMPLEMENTARITY)
    fid = {(r["arm"], int(r["seed"]), int(r["step"])): float(r["value"]) for r in fids}
    collapse = says(
        text,
        rf"seed 2 collapsed between steps 750 and 1000 \(FID {N} → {N}, still {N} at step 1500\), "
        rf"and DTR\+UW's seed 1 spiked to {N} at step 500",
    )
    assert_quotes(
        collapse,
        [
            fid[("vanilla-uw", 2, 750)],
            fid[("vanilla-uw", 2, 1000)],
            fid[("vanilla-uw", 2, 1500)],
            fid[("dtr-uw", 1, 500)],
        ],
        "ANT-UW's seeds",
    )
    four = (0, 1, 3, 4)
    _, _, per_pair = convergence_of(fid_curves(fids, "vanilla-uw", four), fid_curves(fids, "dtr-uw", four))
    assert_quotes(
        says(text, rf"higher in all 4 pairs \({N} to {N}\)"), [min(per_pair), max(per_pair)], "pairs"
    )
    assert min(per_pair) > 0
    uniform = scores(FIVE_SEEDS)
    for pattern, arm, seeds in [
        (rf"Min-SNR − uniform: {IV} steps to FID ≤ 50, plateau {IV}", "vanilla-min_snr", range(5)),
        (rf"ANT-UW − uniform \(4 pairs, without seed 2\): {IV} steps, plateau {IV}", "vanilla-uw", four),
    ]:
        steps, flat_plateau, _ = convergence_of(
            fid_curves(uniform, "vanilla-uniform", seeds), fid_curves(fids, arm, seeds)
        )
        assert_quotes(says(text, pattern), steps + flat_plateau, arm)


def paper_fids() -> dict[str, float]:
    """The DTR paper's Table 1 FIDs as the early study's generated table carries them, by arm."""
    return {arm: float(row[-1]) for arm, row in generated(EARLY, "arm | seeds").items() if row[-1] != "–"}


def test_five_seed_claims_are_the_study_files():
    text = page_section(
        "studies", "What the 5-seed study showed, claim by claim (withdrawn: see the powered study)"
    )
    conv, paired, comp = convergence_csv(FIVE_SEEDS), paired_csv(FIVE_SEEDS), convergence_csv(COMPLEMENTARITY)
    paper = paper_fids()
    dtr, switch = conv["DTR − vanilla"], conv["Switch − DTR"]
    a_steps = float(numbers(dtr["a_steps"])[0])

    said = says(
        text, rf"\(FID {N} → {N}, {N} %\) \| .* \| plateau {IV} on {N}: a gain beyond {N} % is excluded"
    )
    gain = 100 * (paper["dtr-uniform"] / paper["vanilla-uniform"] - 1)
    assert_quotes(
        said,
        [
            paper["vanilla-uniform"],
            paper["dtr-uniform"],
            gain,
            *plateau_of(dtr),
            float(dtr["a_plateau"]),
            -100 * float(dtr["plateau_ci_low"]) / float(dtr["a_plateau"]),
        ],
        "DTR improves sample quality",
    )
    said = says(text, rf"steps to FID ≤ 50: {IV} of {N} \(a speed-up beyond {N} % excluded\)")
    assert_quotes(
        said, [*steps_of(dtr), a_steps, -100 * float(dtr["steps_ci_low"]) / a_steps], "DTR accelerates"
    )
    minsnr = comp["DTR+MinSNR − MinSNR"]
    said = says(text, rf"\({N} → {N}\) \| .* \| plateau {IV} on {N}; steps {IV} \|")
    assert_quotes(
        said,
        [
            paper["vanilla-min_snr"],
            paper["dtr-min_snr"],
            *plateau_of(minsnr),
            float(minsnr["a_plateau"]),
            *steps_of(minsnr),
        ],
        "complementary to Min-SNR",
    )
    uw = comp["DTR+UW − UW"]
    said = says(
        text,
        rf"ANT-UW \({N} → {N}\) \| .* collapses in {N} of {N} seeds\) \| {N} pairs: {IV}; 4 pairs, "
        rf"post hoc: {IV}, higher in all 4",
    )
    fids = scores(COMPLEMENTARITY)
    collapsed = sum(float(r["value"]) > 100 for r in fids if r["arm"] == "vanilla-uw" and r["step"] == "1500")
    four = (0, 1, 3, 4)
    _, post_hoc, _ = convergence_of(fid_curves(fids, "vanilla-uw", four), fid_curves(fids, "dtr-uw", four))
    assert_quotes(
        said,
        [
            paper["vanilla-uw"],
            paper["dtr-uw"],
            collapsed,
            float(uw["pairs"]),
            float(uw["pairs"]),
            *plateau_of(uw),
            *post_hoc,
        ],
        "ANT-UW",
    )
    said = says(text, rf"\({N} → {N}\) \| \*\*reproduced in speed; .* steps {IV}\*; at 1500 {IV} \|")
    assert_quotes(
        said,
        [
            paper["vanilla-uniform"],
            paper["rtr-uniform"],
            *steps_of(conv["R-TR − vanilla"]),
            *diff(paired[("R-TR − vanilla", 1500, "fid")]),
        ],
        "R-TR",
    )
    said = says(text, rf"DTR beats R-TR \| \*\*reproduced\*\* \| steps {IV}\*; at 1500 {IV}\* \|")
    assert_quotes(
        said, [*steps_of(conv["DTR − R-TR"]), *diff(paired[("DTR − R-TR", 1500, "fid")])], "DTR − R-TR"
    )
    said = says(
        text,
        rf"\(Switch-DiT-S {N} vs DTR-S {N}, {N} %\) \| .* \| plateau {IV} on {N} \(a gain beyond {N} % "
        rf"excluded\); at step 1500 {IV}\* \|",
    )
    assert_quotes(
        said[3:],
        [
            *plateau_of(switch),
            float(switch["a_plateau"]),
            -100 * float(switch["plateau_ci_low"]) / float(switch["a_plateau"]),
            *diff(paired[("Switch − DTR", 1500, "fid")]),
        ],
        "Switch − DTR",
    )
    assert_quotes(said[2:3], [100 * (float(said[0]) / float(said[1]) - 1)], "the Switch-DiT paper's gain")
    said = says(
        text,
        rf"experts − unrouted at 1500: {IV}\* width-matched, {IV} at 4× the parameters; steps to FID "
        rf"≤ 50: {IV}\* and {IV}\*",
    )
    assert_quotes(
        said,
        [
            *diff(paired[("experts − vanilla", 1500, "fid")]),
            *diff(paired[("wide experts − vanilla", 1500, "fid")]),
            *steps_of(conv["experts − vanilla"]),
            *steps_of(conv["wide experts − vanilla"]),
        ],
        "experts",
    )
    said = says(text, rf"It costs {N} % of probe loss at 600 ≤ t < 800 \({N} % with Min-SNR\)")
    assert_quotes(
        said,
        [
            float(paired[("DTR − vanilla", 1500, "probe_3")]["diff"]),
            float(paired_csv(COMPLEMENTARITY)[("DTR+MinSNR − MinSNR", 1500, "probe_3")]["diff"]),
        ],
        "DTR's mid-noise cost",
    )
    said = says(text, rf"Switch's is a {N} % lower high-noise probe loss .* \({N} FID at step 500\)")
    assert_quotes(
        said,
        [
            -float(paired[("Switch − vanilla", 1500, "probe_4")]["diff"]),
            float(paired[("Switch − vanilla", 500, "fid")]["diff"]),
        ],
        "Switch along the way",
    )
    said = says(text, rf"own high-noise interval best of all \(probe {N} %\)")
    assert_quotes(said, [float(paired[("experts − vanilla", 1500, "probe_4")]["diff"])], "experts' probe")
    said = says(text, rf"scores, {N} and {N}\)")
    seed0 = {
        r["arm"]: float(r["value"]) for r in scores(FIVE_SEEDS) if r["step"] == "1500" and r["seed"] == "0"
    }
    assert_quotes(said, [seed0["vanilla-uniform"], seed0["dtr-uniform"]], "sample seed 0's scores")
    sd = sd_of(paired_difference_of(paired[("DTR − vanilla", 1500, "fid")]))
    assert_quotes(says(text, rf"of DTR − vanilla at step 1500, {N} \(from the interval above"), [sd], "sd")


def paired_difference_of(row: dict):
    """The PairedDifference a paired.csv row states (its mean, half-width and pairs)."""
    from dtr_lab.runs.stats import PairedDifference

    return PairedDifference(float(row["diff"]), float(row["ci_high"]) - float(row["diff"]), int(row["pairs"]))


def ema_decay(decay: float, n: int) -> float:
    """dtr_lab/optim/ema.py's warm-up: decay_n = min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1 + n) / (10 + n))


def test_pilot_numbers_follow_from_the_data_the_ema_and_the_memorisation_test():
    import yaml

    from dtr_lab.digits import digits_split

    text = page_section("studies", "The pilot: a protocol that converges")
    assert "min(self.decay, (1 + n) / (10 + n))" in (REPO / "dtr_lab/optim/ema.py").read_text()
    base = yaml.safe_load((REPO / "experiments/repro/base.yaml").read_text())
    steps, batch = base["trainer"]["max_steps"], base["data"]["init_args"]["batch_size"]
    decay = base["model"]["ema_decay"]
    train, held_out = digits_split()
    said = says(
        text,
        rf"held-out real digits \({N}: `Memorisation` of the training split scoring the {N} held-out "
        rf"digits\) by step 2000\. The {N} training images are {N} epochs at {N} steps of batch {N} "
        rf"\({N} full batches an epoch\)",
    )
    per_epoch = len(train) // batch  # drop_last
    assert_quotes(
        said,
        [held_out_memorised(), len(held_out), len(train), steps / per_epoch, steps, batch, per_epoch],
        "the pilot's data",
    )
    said = says(
        text,
        rf"decay min\({N}, \(1 \+ n\)/\(10 \+ n\)\), `dtr_lab/optim/ema.py`\) makes its horizon "
        rf"1/\(1 − decay\) ≈ {N}–{N} steps here \(decay {N} at step {N}, {N} at {N}\); a nominal {N} would "
        rf"change nothing before step ≈ {N}",
    )
    horizon = [1 / (1 - ema_decay(decay, n)) for n in (900, 1500)]
    reach = next(n for n in range(100_000) if (1 + n) / (10 + n) >= decay)  # where 0.9999 starts to differ
    assert_quotes(
        said[:1] + said[3:],
        [decay, ema_decay(decay, 900), 900, ema_decay(decay, 1500), 1500, 0.9999, round(reach, -3)],
        "the EMA's warm-up",
    )
    assert float(said[1]) <= min(horizon) and max(horizon) <= float(said[2]) + 5, (said, horizon)
    assert f"the **training split**, all {len(train):,} images" in page("studies")  # the study's real set


def test_early_prose_is_its_csv():
    text = flat(page_section("studies", "Results: 5 paired seeds, 600 steps — early training"))
    paired = paired_csv(EARLY)
    arms = generated(EARLY, "arm | seeds")
    assert_quotes(
        says(text, rf"digits-FID is still {N} \(≈ {N} by step 1200\)"),
        [
            float(numbers(arms["vanilla-uniform"][3])[0]),
            float(paired_csv_scaling()[("DiT-T/2", 1200, "fid")]["a_mean"]),
        ],
        "unrouted FID",
    )
    assert int(says(text, r"trained (\d+) runs \(the first 7 arms")[0]) == sum(
        int(row[1]) for row in list(arms.values())[:7]
    )

    def at(comparison: str, metric: str) -> list[float]:
        return diff(paired[(comparison, 600, metric)])

    rtr = [at("R-TR − vanilla", f"probe_{i}")[0] for i in range(5)]
    said = says(
        text,
        rf"decisively: {N} digits-FID, {N} accuracy, and a higher probe loss in every fifth of t "
        rf"\({N} % to {N} %\)\. The paper finds the same direction \({N} vs {N}\)",
    )
    paper = paper_fids()
    assert_quotes(
        said,
        [
            at("R-TR − vanilla", "fid")[0],
            at("R-TR − vanilla", "accuracy")[0],
            min(rtr),
            max(rtr),
            paper["rtr-uniform"],
            paper["vanilla-uniform"],
        ],
        "R-TR − vanilla",
    )
    said = says(
        text,
        rf"DTR is \*worse\*, {IV} FID and {N} accuracy, decided by all 5 pairs\. The probe loss says "
        rf"where: equal at t < 400 \(±{N} %\), higher by {N}–{N} % at 400 ≤ t < 800",
    )
    bounds = max(abs(v) for i in (0, 1) for v in at("DTR − vanilla", f"probe_{i}")[1:])
    assert_quotes(
        said,
        [
            *at("DTR − vanilla", "fid"),
            at("DTR − vanilla", "accuracy")[0],
            bounds,
            at("DTR − vanilla", "probe_2")[0],
            at("DTR − vanilla", "probe_3")[0],
        ],
        "DTR − vanilla",
    )
    said = says(text, rf"holds \({N} FID; lower probe loss everywhere\), as in the paper \({N} vs {N}\)")
    assert_quotes(
        said, [at("DTR − R-TR", "fid")[0], paper["dtr-uniform"], paper["rtr-uniform"]], "DTR − R-TR"
    )
    assert all(at("DTR − R-TR", f"probe_{i}")[0] < 0 for i in range(5))
    said = says(text, rf"not shown: {IV} FID, .* repeats the mid-t cost \({N} %, {N} %\)")
    assert_quotes(
        said,
        [
            *at("DTR+MinSNR − MinSNR", "fid"),
            at("DTR+MinSNR − MinSNR", "probe_2")[0],
            at("DTR+MinSNR − MinSNR", "probe_3")[0],
        ],
        "DTR+MinSNR",
    )
    said = says(
        text, rf"its sd over the 5 seeds is {N} unrouted and {N} with DTR; .* the interval \({N}, {N}\)"
    )
    assert_quotes(
        said,
        [
            float(numbers(arms["vanilla-uw"][3])[1]),
            float(numbers(arms["dtr-uw"][3])[1]),
            *at("DTR+UW − UW", "fid")[1:],
        ],
        "DTR+UW",
    )
    said = says(text, rf"holds \({N} FID, {N} accuracy\); \*\*ANT-UW helps\*\* — holds in accuracy \({N}\)")
    assert_quotes(
        said,
        [
            at("MinSNR − uniform", "fid")[0],
            at("MinSNR − uniform", "accuracy")[0],
            at("UW − uniform", "accuracy")[0],
        ],
        "the weightings",
    )


def paired_csv_scaling() -> dict[tuple[str, int, str], dict]:
    return {(r["size"], int(r["step"]), r["metric"]): r for r in csv_rows(f"{SCALING}/paired.csv")}


def test_scaling_prose_is_its_csv():
    from scipy import stats

    text = flat(
        page_section("studies", "Where and when does routing pay? The scaling study (early, superseded)")
    )
    paired = paired_csv_scaling()
    sizes = sorted({k[0] for k in paired})
    pairs = int(paired[("DiT-T/2", 600, "fid")]["pairs"])
    said = says(text, rf"`make scaling`, {N} paired seeds \({N} runs\), .* \({N} dof, t = {N}\)")
    assert_quotes(
        said, [pairs, 2 * len(sizes) * pairs, pairs - 1, stats.t.ppf(0.975, pairs - 1)], "the design"
    )
    fid = {
        (size, step): diff(paired[(size, step, "fid")]) for size, step, metric in paired if metric == "fid"
    }
    said = says(text, rf"DTR's cost at step 600 \({N} FID\) is gone by step 1200")
    assert_quotes(said, [fid[("DiT-T/2", 600)][0]], "the cost at 600")
    later = [fid[("DiT-T/2", s)] for s in (1200, 1800, 2400)]
    assert all(m < 0 for m, _, _ in later) and later[0][2] < 0 and all(h > 0 for _, _, h in later[1:])
    low, high = says(text, rf"measured small: {N}–{N} FID")
    assert_quotes([low, high], [-max(m for m, _, _ in later), -min(m for m, _, _ in later)], "2–4 FID")
    mid = [float(paired[("DiT-T/2", s, "probe_3")]["diff"]) for s in (600, 1200, 1800, 2400)]
    assert_quotes(says(text, rf"stays {N}–{N} % higher"), [min(mid), max(mid)], "the mid-noise cost")
    said = says(text, rf"the gap is {N} FID at {N} channels and {N} at {N} \(DiT-XS, .* cost {N} % vs {N} %")
    widths = {size: paired[(size, 600, "fid")]["width"] for size in sizes}
    assert_quotes(
        said,
        [
            fid[("DiT-T/2", 600)][0],
            float(widths["DiT-T/2"]),
            fid[("DiT-XS/2", 600)][0],
            float(widths["DiT-XS/2"]),
            float(paired[("DiT-T/2", 600, "probe_3")]["diff"]),
            float(paired[("DiT-XS/2", 600, "probe_3")]["diff"]),
        ],
        "width",
    )


def test_evaluation_noise_is_weighed_against_the_early_studys_seed_spread():
    text = page_section("studies", "How noisy is one evaluation?")
    said = says(text, rf"over its 5 training seeds, {N} FID and {N} accuracy")
    paired = paired_csv(EARLY)
    assert_quotes(
        said,
        [sd_of(paired_difference_of(paired[("DTR − vanilla", 600, m)])) for m in ("fid", "accuracy")],
        "seed-to-seed sd",
    )


def test_small_beta_facts_follow_from_the_routing_tables():
    from dtr_lab.models.dit import SIZES, sincos_pos_embed_2d
    from dtr_lab.routing import DTRRouting

    text = flat(page_section("studies", "Why β = 0.5 fails"))
    width = SIZES["T"].hidden_size  # the digits DiT-T/2
    said = says(
        text,
        rf"no block of a task with t ≥ {N} sees a token's column, none with t ≤ {N} its row "
        rf"\(β = 0\.7: only t ≥ {N}; β = 0\.8: none",
    )

    grid = 4  # 8×8 digits, patch 2
    pe = sincos_pos_embed_2d(width, grid).view(grid, grid, width)  # (row, col, C)
    # a channel carries an axis when it varies along it by more than 0.1, as tests/test_dit.py counts it
    by_row, by_col = ((pe.amax(0) - pe.amin(0)).amax(0) > 0.1), ((pe.amax(1) - pe.amin(1)).amax(0) > 0.1)

    def blind(beta: float) -> tuple[list[int], list[int]]:
        """The timesteps whose window holds no column channel, and those that hold no row channel."""
        table = DTRRouting(alpha=4.0, beta=beta).table(1000, width)
        return (
            ((table & by_col).sum(1) == 0).nonzero().flatten().tolist(),
            ((table & by_row).sum(1) == 0).nonzero().flatten().tolist(),
        )

    column, row = blind(0.5)
    assert column == list(range(column[0], 1000)) and row == list(range(row[-1] + 1))
    column7, row7 = blind(0.7)
    assert_quotes(said, [column[0], row[-1], column7[0]], "position axes at small β")
    assert row7 == [] and blind(0.8) == ([], [])
    assert_quotes(
        says(text, rf"only {N} wide \(`--model\.net\.init_args\.hidden_size {N}`, = int\(βC\)\)"),
        [int(0.5 * width)] * 2,
        "the 64-wide model",
    )


def test_digits_model_size_is_the_models():
    from dtr_lab.models import DiT

    params = sum(p.numel() for p in DiT(8, 1, 10, 1000, size="DiT-T/2").parameters())
    for heading in (
        "What the 5-seed study showed, claim by claim (withdrawn: see the powered study)",
        "Results: 5 paired seeds, 600 steps — early training",
    ):
        quoted = says(page_section("studies", heading), rf"\({N}M parameters")
        assert_quotes(quoted, [params / 1e6], f"DiT-T/2's parameters ({heading})")


# --- docs/mtl.md and docs/configs.md: the options their tables quote are the shipped configs'
def config(path: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "experiments" / path).read_text())


def init_args(path: str, *keys: str) -> dict:
    """The init_args of the class at `keys` of a config (e.g. model, mtl)."""
    node = config(path)
    for key in keys:
        node = node[key]
    return node.get("init_args", {})


def test_mtl_page_quotes_the_configs_and_the_clustering():
    import torch

    from dtr_lab.diffusion import GaussianDiffusion
    from dtr_lab.mtl.clustering import snr_intervals

    text = flat(page("mtl"))
    said = says(
        text,
        rf"`s_k` with its own lr \({N}\), .* K: {N} uniform in DTR's code \(`experiments/mtl/uw8\.yaml`, "
        rf"`repro/uw\.yaml`\), {N} in ANT's \(`mtl/uw\.yaml`\)",
    )
    k = {p: config(p)["model"]["intervals"]["num_intervals"] for p in ("mtl/uw8.yaml", "mtl/uw.yaml")}
    assert init_args("repro/uw.yaml", "model", "mtl")["intervals"]["num_intervals"] == k["mtl/uw8.yaml"]
    assert_quotes(
        said, [init_args("mtl/uw.yaml", "model", "mtl")["lr"], k["mtl/uw8.yaml"], k["mtl/uw.yaml"]], "UW"
    )
    assert init_args("mtl/uw8.yaml", "model", "mtl")["lr"] == init_args("mtl/uw.yaml", "model", "mtl")["lr"]
    said = says(text, rf"c = {N} \(official NYUv2 runs")
    assert_quotes(said, [init_args("mtl/cagrad.yaml", "model", "mtl")["c"]], "CAGrad's c")
    snr = GaussianDiffusion(1000, "linear").snr(torch.arange(1000))
    for objective, pattern in (
        ("ant_snr", r"\(linear schedule, k = 4: `\[([\d, ]+)\]`\)"),
        ("log_snr_variance", r"log-SNR instead \(k = 4: `\[([\d, ]+)\]`\)"),
    ):
        quoted = [int(v) for v in says(text, pattern)[0].split(", ")]
        assert quoted == snr_intervals(snr, 4, objective), objective
    said = says(
        text,
        rf"digits, batch {N}, K = {N}, the three variants alternated over {N} rounds of {N} steps, "
        rf"medians; target for PCGrad ≤ {N}×.* solves its weights every {N} steps",
    )
    bench = (REPO / "benchmarks/mtl_overhead.py").read_text()
    rounds, steps = (
        re.search(rf'"--{o}", type=int, default=(\d+)', bench).group(1) for o in ("rounds", "steps")
    )
    nash = init_args("mtl/nash.yaml", "model", "mtl")["update_every"]
    assert_quotes(
        said,
        [
            init_args("digits/stratified.yaml", "data")["batch_size"],
            5,
            float(rounds),
            float(steps),
            2.5,
            nash,
        ],
        "the MTL benchmark",
    )
    assert "PCGrad ≤ 2.5×" in bench and re.search(r"\bK = 5\b", bench)


def test_configs_page_quotes_the_configs():
    text = flat(page("configs"))
    batch = init_args("digits/stratified.yaml", "data")["batch_size"]
    assert_quotes(says(text, rf"the digits batch for 5 intervals: {N}\)"), [batch], "stratified batch")
    assert_quotes(
        says(text, rf"`digits/stratified\.yaml`: the batch of {N} that 5 intervals split"), [batch], ""
    )
    assert batch % 5 == 0
    dtr, switch = (
        init_args("routing/dtr.yaml", "model", "routing"),
        init_args("routing/switch.yaml", "model", "routing"),
    )
    min_snr, p2 = (
        init_args("weighting/min_snr.yaml", "model", "weighting"),
        init_args("weighting/p2.yaml", "model", "weighting"),
    )
    said = says(
        text,
        rf"`dtr\.yaml` \(DTR α = {N}, β = {N}\), `switch\.yaml` \(Switch-DiT, E = {N}, k = {N}, "
        rf"w_JSD = {N}\).* `min_snr\.yaml` \(γ = {N}\), `p2\.yaml` \(k = {N}, γ = {N}\).* `uw\.yaml` "
        rf"\(ANT-UW, K = {N}\), `uw8\.yaml` \(ANT-UW as DTR's code, K = {N}\)",
    )
    assert_quotes(
        said,
        [
            dtr["alpha"],
            dtr["beta"],
            switch["num_experts"],
            switch["k"],
            switch["w_jsd"],
            min_snr["gamma"],
            p2["k"],
            p2["gamma"],
            config("mtl/uw.yaml")["model"]["intervals"]["num_intervals"],
            config("mtl/uw8.yaml")["model"]["intervals"]["num_intervals"],
        ],
        "the routing table",
    )


# --- docs/routing.md
def digits_dit_parameters(routing=None, **kwargs) -> int:
    from dtr_lab.models import DiT

    return sum(p.numel() for p in DiT(8, 1, 10, 1000, routing, size="DiT-T/2", **kwargs).parameters())


def test_routing_page_switch_numbers_are_the_config_the_code_and_a_count():
    from dtr_lab.models.dit import SIZES
    from dtr_lab.routing import DTRRouting, SwitchRouting

    text = flat(page("routing"))
    switch = init_args("routing/switch.yaml", "model", "routing")
    said = says(text, rf"defaults \*\*E = {N}, k = {N}, w_JSD = {N}\*\*\)")
    assert_quotes(said, [switch["num_experts"], switch["k"], switch["w_jsd"]], "Switch's defaults")

    def prior_width(depth: int, experts: int, k: int) -> int:
        """The prior's window: DTR's table over depth·E slots at β = k/E, as switch.py builds it."""
        return int(DTRRouting(4.0, k / experts).table(2, depth * experts)[0].sum())

    depth, experts, k, slots = (
        int(v)
        for v in says(
            text,
            rf"e\.g\. depth {N}, E = {N}, k = {N}: {N}; never at "
            rf"E = 3, k = 2",
        )
    )
    assert slots == prior_width(depth, experts, k) == depth * k - 1
    assert all(prior_width(d, 3, 2) == 2 * d for d in range(1, 60))
    assert "atol=1e-6" in (REPO / "tests/test_routing_switch.py").read_text()
    assert_quotes(says(text, rf"checks the outputs agree to {N}\)"), [1e-6], "")
    width = SIZES["T"].hidden_size
    said = says(
        text, rf"rounds × {N} steps, medians; .* \(E = {N} experts of {N} × {N} a block, {N} % parameters\)"
    )
    bench = (REPO / "benchmarks/switch_overhead.py").read_text()
    steps = re.search(r'"--steps", type=int, default=(\d+)', bench).group(1)
    extra = digits_dit_parameters(SwitchRouting(seed=0)) / digits_dit_parameters() - 1
    assert_quotes(said, [float(steps), switch["num_experts"], width, width, 100 * extra], "the experts' cost")
    assert_quotes(
        says(text, rf"batch {N}, 1 thread, {N} alternated rounds"),
        [
            float(re.search(r"CLASSES, BATCH, TINY_BATCH = \d+, \d+, \d+, (\d+)", bench).group(1)),
            float(re.search(r'"--rounds", type=int, default=(\d+)', bench).group(1)),
        ],
        "the benchmark",
    )
    said = says(
        text,
        rf"apply k = {N} C×C maps to every token, {N}C² multiply-adds beside the block's {N}C² "
        rf"\(attention projections {N}C², MLP {N}C²\), ≈ {N}× in the linear layers alone",
    )
    attention, mlp = 4, 2 * 4  # q, k, v, out; two maps of mlp_ratio 4
    assert_quotes(
        said,
        [
            switch["k"],
            switch["k"],
            attention + mlp,
            attention,
            mlp,
            (attention + mlp + switch["k"]) / (attention + mlp),
        ],
        "the experts' FLOPs",
    )


def test_routing_page_early_prose_is_the_study_csv_and_the_dtr_table():
    from dtr_lab.models.dit import SIZES
    from dtr_lab.routing import DTRRouting

    text = flat(page_section("routing", "What they did at this scale"))
    paired, arms = paired_csv(EARLY), generated(EARLY, "arm | seeds")
    dtr = init_args("routing/dtr.yaml", "model", "routing")
    table_ = DTRRouting(**dtr).table(1000, SIZES["T"].hidden_size)
    start = table_.int().argmax(1)  # the first active channel of each t's window
    said = says(text, rf"DTR's window starts at channel {N}–{N} for all t < 600 and reaches {N} by t = 800")
    assert_quotes(said, [start[:600].min(), start[:600].max(), start[800]], "DTR's window")
    said = says(text, rf"The {N} new runs were trained on 2026-12-02 beside the {N} runs of `make reproduce`")
    seeds = {arm: int(row[1]) for arm, row in arms.items()}
    assert_quotes(
        said, [seeds["switch-uniform"] + seeds["affinity-uniform"], sum(list(seeds.values())[:7])], "runs"
    )

    def at(comparison: str, metric: str) -> float:
        return float(paired[(comparison, 600, metric)]["diff"])

    said = says(text, rf"{N} % against unrouted and {N} % against DTR \(decided by all 5 pairs")
    assert_quotes(said, [at("Switch − vanilla", "probe_4"), at("Switch − DTR", "probe_4")], "Switch's probe")
    assert all(
        float(paired[(c, 600, "probe_4")]["ci_high"]) < 0 for c in ("Switch − vanilla", "Switch − DTR")
    )
    said = says(
        text, rf"\({N} FID against unrouted, {N} against DTR\), .* {N}–{N} % probe loss at 200 ≤ t < 600"
    )
    assert_quotes(
        said,
        [
            at("Affinity − vanilla", "fid"),
            at("Affinity − DTR", "fid"),
            at("Affinity − vanilla", "probe_1"),
            at("Affinity − vanilla", "probe_2"),
        ],
        "affinity",
    )


def test_routing_page_quickstart_and_sharing_numbers_are_the_configs_and_the_models():
    from dtr_lab.models.experts import matched_width

    text = flat(page("routing"))
    quickstart = config("quickstart.yaml")
    said = says(text, rf"`experiments/quickstart\.yaml`: {N} steps at lr {N}, batch {N}\)")
    assert_quotes(
        said,
        [
            quickstart["trainer"]["max_steps"],
            quickstart["model"]["optimizer"]["init_args"]["lr"],
            quickstart["data"]["init_args"]["batch_size"],
        ],
        "the quickstart",
    )
    k = quickstart["model"].get("intervals", {}).get("num_intervals", 5)  # the module's default split: 5
    assert_quotes(
        says(text, rf"K\(K − 1\) = {N} off-diagonal pairs of the quickstart's {N} intervals"),
        [k * (k - 1), k],
        "pairs",
    )
    assert_quotes(says(text, rf"every `every_n_steps` \({N}\)"), [200], "RoutingMaps' cadence")
    assert "every_n_steps: int = 200" in (REPO / "dtr_lab/callbacks/routing_maps.py").read_text()
    experts, width, ratio, full = says(text, rf"\({N} DiT-T/2 experts at width {N}: {N} × one at {N}\)")

    def build(hidden_size=None):
        from dtr_lab.models import DiT

        return DiT(
            8, 1, 10, 1000, size="DiT-T/2", **({} if hidden_size is None else {"hidden_size": hidden_size})
        )

    assert int(width) == matched_width(build, int(experts))
    one = digits_dit_parameters()
    assert_quotes(
        [ratio, full], [int(experts) * digits_dit_parameters(hidden_size=int(width)) / one, 128], "sizes"
    )


# --- docs/paper-scale.md: the plan's prose is its pasted output; sizes and settings the code's and configs'
def plan_rows() -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in page("paper-scale").splitlines():
        cells = line.split()
        if len(cells) == 14 and cells[0].startswith("DiT-") and cells[1] in ("unrouted", "dtr", "rtr"):
            rows[(cells[0], cells[1])] = cells
    return rows


def test_paper_scale_prose_is_the_plan_output():
    source = (REPO / "benchmarks/memory_plan.py").read_text()  # the published counts it compares with
    published = re.search(r"PUBLISHED_GMACS = (\{.*\})", source).group(1)
    published = {k: float(v) for k, v in re.findall(r'"(DiT-\w+/2)": ([\d.]+)', published)}
    text = flat(page("paper-scale"))
    plan = plan_rows()
    xl = says(text, rf"DiT-XL/2 forward: {N} GMAC/img counted, {N} published \({N}%\)")
    said = says(text, rf"agree with DiT's published {N} / {N} / {N} Gflops to {N} %")
    counted = [float(plan[(s, "unrouted")][9]) for s in ("DiT-B/2", "DiT-L/2")] + [float(xl[0])]
    assert_quotes(said[:3], [published[s] for s in ("DiT-B/2", "DiT-L/2", "DiT-XL/2")], "published Gflops")
    worst = max(
        abs(c / published[s] - 1) for c, s in zip(counted, ("DiT-B/2", "DiT-L/2", "DiT-XL/2"), strict=True)
    )
    assert worst * 100 <= float(said[3])
    said = says(
        text,
        rf"\*\*{N} for DiT-B/2, {N} for DiT-L/2\*\* \({N} and {N} with R-TR's per-block tables\); "
        rf"the configs' {N} use {N} and {N} GB",
    )
    assert_quotes(
        said,
        [
            float(plan[("DiT-B/2", "dtr")][13]),
            float(plan[("DiT-L/2", "dtr")][13]),
            float(plan[("DiT-B/2", "rtr")][13]),
            float(plan[("DiT-L/2", "rtr")][13]),
            float(plan[("DiT-B/2", "dtr")][2]),
            float(plan[("DiT-B/2", "dtr")][8]),
            float(plan[("DiT-L/2", "dtr")][8]),
        ],
        "largest batches",
    )
    said = says(text, rf"one more fp32 copy of the gradients, {N} / {N} GB\)")
    assert_quotes(
        said,
        [4 * float(plan[(s, "dtr")][3].rstrip("M")) * 1e6 / 1e9 for s in ("DiT-B/2", "DiT-L/2")],
        "DDP's buckets",
    )
    assert "rel=0.05" in (REPO / "tests/test_memory_plan.py").read_text()
    assert_quotes(says(text, r"checks DiT-B/2 within (\d+) %"), [5], "the plan test's tolerance")


def test_paper_scale_sizes_and_settings_are_the_models_and_configs():
    import torch

    from dtr_lab.diffusion import respaced_timesteps
    from dtr_lab.models import DiT, UNet

    text = flat(page("paper-scale"))
    with torch.device("meta"):
        dit_s = DiT(32, 4, 1000, 1000, size="DiT-S/2", learn_sigma=True)
        small = (
            sum(p.numel() for p in dit_s.parameters()) + dit_s.pos_embed.numel()
        )  # official: a frozen parameter
        adm = sum(p.numel() for p in UNet(64, 3, 1000, 1000, size="UNet-ADM64").parameters())
    assert_quotes(says(text, rf"DiT-S/2 has the paper's {N}M parameters"), [small / 1e6], "DiT-S/2")
    assert_quotes(says(text, rf"`UNet-ADM64` \({N}M parameters\)"), [adm / 1e6], "UNet-ADM64")
    base = config("imagenet256/base.yaml")
    said = says(
        text,
        rf"AdamW {N}, global batch {N}, EMA {N}, {N}K steps, bf16, DDP on every visible GPU, "
        rf"{N}-step sampling, guidance {N}\)",
    )
    assert base["trainer"]["precision"] == "bf16-mixed" and base["trainer"]["devices"] == -1
    assert_quotes(
        said,
        [
            base["model"]["optimizer"]["init_args"]["lr"],
            8 * base["data"]["init_args"]["batch_size"],
            base["model"]["ema_decay"],
            base["trainer"]["max_steps"] / 1000,
            base["model"]["sample_steps"],
            base["model"]["guidance_scale"],
        ],
        "the imagenet256 settings (global batch on 8 GPUs)",
    )
    changed = {}
    for steps in range(1, 1001):  # the respacing before issue 21: a rounded linspace
        old = set(torch.linspace(0, 999, steps, dtype=torch.float64).round().long().tolist())
        new = set(respaced_timesteps(1000, steps))
        if old != new:
            changed[steps] = len(new - old)
    said = says(
        text,
        rf"`respacing: even` takes {N}–{N} other timesteps for {N} of N = 1…1000 \(not for the step "
        rf"counts the configs use: {N}, {N}, {N}, {N} are unchanged\)",
    )
    assert_quotes(said[:3], [min(changed.values()), max(changed.values()), len(changed)], "respacing")
    assert not {int(n) for n in said[3:]} & set(changed)


# --- docs/official.md
def test_official_page_numbers_are_the_fixture_the_tolerance_and_the_analysis_cost():
    import inspect

    from dtr_lab.callbacks import TimestepLoss
    from dtr_lab.digits import digits_split

    text = flat(page("official"))
    fixture = sum(f.stat().st_size for f in (REPO / "tests/data/official").iterdir() if f.is_file())
    assert_quotes(says(text, rf"\(`tests/data/official/`, {N} kB"), [fixture / 1000], "the fixture's size")
    assert_quotes(
        says(text, rf"reproduced within {N}, and"),
        [float(re.search(r"^ATOL = (\S+)$", (REPO / "tests/test_official.py").read_text(), re.M).group(1))],
        "the official outputs' tolerance",
    )
    defaults = inspect.signature(TimestepLoss).parameters
    quickstart = config("quickstart.yaml")
    batch, k = quickstart["data"]["init_args"]["batch_size"], 5  # the module's default split
    said = says(
        text,
        rf"It costs {N} × {N} × {N} = {N} probe forwards .* {N} probe samples forward and backward "
        rf"\(one training batch, K = {N} × B/K = {N}, .* and {N} × {N} = {N} lookahead forwards .* "
        rf"validation set \({N} × {N}\): about {N} × 10³ sample passes",
    )
    probe = 2 * defaults["probe_timesteps"].default * defaults["probe_size"].default
    sub_batch = batch // k
    held_out = len(digits_split()[1])
    total = probe + k * sub_batch + (k + 1) * k * sub_batch + 2 * held_out
    assert_quotes(
        said,
        [
            2,
            defaults["probe_timesteps"].default,
            defaults["probe_size"].default,
            probe,
            k * sub_batch,
            k,
            sub_batch,
            k + 1,
            k * sub_batch,
            (k + 1) * k * sub_batch,
            2,
            held_out,
            total / 1000,
        ],
        "the analysis' cost",
    )


# --- docs/analyses.md
def test_analyses_page_numbers_are_the_configs_the_code_and_tensorboards():
    import inspect

    import tensorboard
    from tensorboard.backend.event_processing.data_ingester import DEFAULT_TENSOR_SIZE_GUIDANCE

    from dtr_lab import plots
    from dtr_lab.metrics.memorisation import Memorisation
    from dtr_lab.runs import convergence

    text = flat(page("analyses"))
    quickstart = config("quickstart.yaml")
    callbacks = {
        c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in quickstart["trainer"]["callbacks"]
    }
    steps, every = quickstart["trainer"]["max_steps"], callbacks["GradientConflict"]["every_n_steps"]
    said = says(
        text,
        rf"TensorBoard keeps {N} images per tag by default\*\* \(and {N} points per scalar; its "
        rf"`DEFAULT_TENSOR_SIZE_GUIDANCE`\), a random sample of them: the quickstart measures conflict "
        rf"{N} times \(every {N} of {N} steps and step 0\), so the Images tab shows {N} of its {N}",
    )
    measured = steps // every + 1
    kept = DEFAULT_TENSOR_SIZE_GUIDANCE["images"]
    assert_quotes(
        said,
        [kept, DEFAULT_TENSOR_SIZE_GUIDANCE["scalars"], measured, every, steps, kept, measured],
        "TensorBoard's sampling",
    )
    assert says(text, r"TensorBoard (\d+\.\d+) then keeps")[0] == ".".join(
        tensorboard.__version__.split(".")[:2]
    )
    said = says(
        text,
        rf"cosines on \[{N}, {N}\], mask IoU on \[{N}, {N}\], the lookahead affinity Z on a symmetric "
        rf"log scale over \[{N}, {N}\] \(linear within ±{N};",
    )
    scales = [plots.colour_scale(kind)[0] for kind in ("cos", "iou", "tag")]
    assert_quotes(
        said, [v for norm in scales for v in (norm.vmin, norm.vmax)] + [plots.AFFINITY_LINEAR], "scales"
    )
    memorisation = inspect.signature(Memorisation).parameters["quantile"].default
    said = says(
        text,
        rf"at most the {N}th percentile .* Fresh draws from the data score about {N} \(the held-out "
        rf"digits: {N}\)",
    )
    assert_quotes(said, [100 * memorisation, memorisation, held_out_memorised()], "memorisation")
    plateau_points = inspect.signature(convergence.plateau).parameters["last"].default
    assert_quotes(
        says(text, rf"`plateau` is the mean of the last {N} scoring points"), [plateau_points], "plateau"
    )
    assert_quotes(
        says(text, rf"with its {N} % t interval"),
        [100 * inspect.signature(convergence.paired_steps).parameters["level"].default],
        "level",
    )
    assert_quotes(
        says(text, rf"under its {N}-log moving average"),
        [inspect.signature(plots.training_curves).parameters["smooth"].default],
        "smoothing",
    )
    said = says(text, rf"`FID, N = {N}` \(end of fit\), `test FID, N = {N}`")
    module = inspect.signature(__import__("dtr_lab.module", fromlist=["DiffusionModule"]).DiffusionModule)
    assert_quotes(
        said, [callbacks["SampleQuality"]["num_samples"], module.parameters["num_samples"].default], "N"
    )
    assert (
        says(text, r"The dashboard shows (\w+) columns at first")[0]
        in (REPO / "dtr_lab/callbacks/tensorboard_layout.py").read_text().split("dashboard shows ")[1]
    )
    metrics = (REPO / "tests/test_metrics.py").read_text()
    for asserted in (
        'held_out["accuracy"] >= 0.95',
        "quality.kid_scale > 5",
        'abs(held_out["kid_mean"]) < 0.1',
        'held_out["kid_std"] < 0.2',
        'blurred["kid_mean"] > 0.5',
        '> 3 * blurred["kid_std"]',
    ):
        assert asserted in metrics, f"docs/analyses.md quotes tests/test_metrics.py's bound {asserted!r}"
    said = says(
        text,
        rf"at least {N} % accuracy .* an RMS above {N} per dimension.* held-out digits score \|KID\| < "
        rf"{N} with a spread below {N}, and 3×3-blurred ones above {N} and above {N} spreads",
    )
    assert_quotes(said, [95, 5, 0.1, 0.2, 0.5, 3], "tests/test_metrics.py's bounds")


# --- docs/reliability.md: each fault's size and count is the one its test uses
def test_reliability_page_numbers_are_the_fault_tests():
    text = flat(page("reliability"))
    faults, official = (
        (REPO / "tests/test_faults.py").read_text(),
        (REPO / "tests/test_official.py").read_text(),
    )
    scripts = (REPO / "tests/test_analysis_scripts.py").read_text()
    said = says(
        text, rf"real: a {N} MB tmpfs that fills at the step-4 save \(and a {N} MB one under the save alone\)"
    )
    assert f'"{said[0]}m") as disk' in faults and f'"{said[1]}m") as disk' in faults
    trials = says(text, rf"held for a second, {N} trials \(and {N} trials of the claim alone\)")
    assert (
        faults.count(f"for trial in range({trials[0]}):") + faults.count(f"for trial in range({trials[1]}):")
        >= 2
    )
    export = says(text, rf"real: a read-only and a {N} kB tmpfs \| \| `make_figures")[0]
    assert f'"{export}k") as full' in official
    figures = says(text, rf"the half-written one removed \| real: a read-only and a {N} kB tmpfs")[0]
    assert f'"{figures}k") as full' in scripts
    lr = says(text, rf"\| real: lr {N} \|")[0]
    assert re.search(rf'"--model\.optimizer\.init_args\.lr",\s*"{lr}"', faults), "the divergence test's lr"
    md5 = says(text, r"against the published ([0-9a-f]{32})")[0]
    assert f'ARCHIVE_MD5 = "{md5}"' in (REPO / "dtr_lab/data/cifar10.py").read_text()


# --- docs/benchmarks.md: the refactor reference's tolerance and the spread behind it, as its test file states
def test_benchmarks_page_tolerance_is_the_refactor_tests():
    text = flat(page("benchmarks"))
    source = (REPO / "tests/test_refactor_identity.py").read_text()
    comment = flat(
        source[source.index("# The largest difference from the reference") : source.index("TOLERANCE =")]
    )
    said = says(
        text,
        rf"`tests/data/refactor_reference\.json` \({N} digits steps .* within a tolerance of {N} of each "
        rf"quantity's scale .* at most {N} of its scale \(Nash-MTL; {N} without an MTL method\); a 0\.1 % "
        rf"change of the learning rate moves it by {N}",
    )
    stated = [
        re.search(r"^STEPS = (\d+)$", source, re.M).group(1),
        re.search(r"^TOLERANCE = (\S+)$", source, re.M).group(1),
        *says(comment, rf"at most {N} of the scale \(Nash-MTL"),
        *says(comment, rf"{N} plain"),
        *says(comment, rf"lr × 1\.001 moves some quantity by {N}"),
    ]
    assert said == stated


def test_paper_scale_dense_switch_cost_is_its_config():
    switch = init_args("routing/switch.yaml", "model", "routing")
    said = says(flat(page("paper-scale")), rf"\(E·C², {N}× at E = {N}, k = {N}\)")
    assert_quotes(
        said, [switch["num_experts"] / switch["k"], switch["num_experts"], switch["k"]], "dense experts"
    )


def test_benchmark_table_settings_are_the_scripts_defaults():
    text = flat(page("benchmarks"))
    routing = (REPO / "benchmarks/routing_overhead.py").read_text()
    said = says(text, rf"DTR / unrouted training step, DiT-S/2, {N}×{N}, batch {N}")
    image, square, batch = said
    assert image == square and f"image: int = {image}" in routing and f"batch: int = {batch}" in routing
    k = says(text, rf"one GradientConflict measurement, K = {N}")[0]
    assert f"Intervals(num_intervals={k})" in (REPO / "benchmarks/callback_overhead.py").read_text()
    steps, repeats = says(
        text, rf"`benchmarks/checkpoint_overhead\.py --repeats {N}`.* per {N}-step digits fit"
    )[::-1]
    checkpoint = (REPO / "benchmarks/checkpoint_overhead.py").read_text()
    assert (
        f'"--steps", type=int, default={steps})' in checkpoint
        and f'"--repeats", type=int, default={repeats})' in (checkpoint)
    )
    batch = says(text, rf"`model\.compile` / eager training step, digits DiT-T/2 DTR, batch {N}, 1 thread")[0]
    assert f'"--batch-size", type=int, default={batch})' in (REPO / "benchmarks/compile_cpu.py").read_text()


def test_study_engine_defaults_are_the_codes():
    text = flat(page_section("studies", "Running a study's runs: submitit, here and on a cluster"))
    retries = says(text, rf"\(`--retries`, default {N}\)")[0]
    assert f'"--retries", type=int, default={retries},' in flat((REPO / "analysis/study.py").read_text())
    assert "waits a minute for a stopping fit" in text
    assert re.search(r"^LOCK_WAIT_S = 60\.0 ", (REPO / "analysis/engine.py").read_text(), re.M)


# --- docs/repro/study_time.md
def test_the_study_time_estimate_is_the_one_measured_within_25_percent():
    """The constants the last measurement of benchmarks/study_time.py names are analysis/study.py's, and
    every run of it lies within ±25 % of their estimate."""
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    import study

    text = (REPO / "docs/repro/study_time.md").read_text()
    after = text[text.index("## After"):]
    head = re.search(r"STEP_S ([\d.]+), SAMPLE_S ([\d.]+), START_S ([\d.]+), Switch-DiT ([\d.]+)×", after)
    assert head, "study_time.md no longer names the constants it measured"
    assert [float(g) for g in head.groups()] == [
        study.STEP_S, study.SAMPLE_S, study.START_S, study.ARM_COST["switch"]
    ]
    ratios = [float(r) for row in re.findall(r"^\| \S+-uniform \|.*\| ([\d., ]+) \|$", after, re.M)
              for r in row.split(",")]
    assert len(ratios) == 9 and all(0.75 <= r <= 1.25 for r in ratios), ratios
