"""Does DTR's gain grow with model size and training length? A paired scaling study on the 8×8 digits.

    python analysis/scaling.py --out runs/scaling                  # the full study, ≈ 64 min on 2 cores
    python analysis/scaling.py --out /tmp/smoke --max-steps 4 --seeds 2 --num-samples 100   # the pipeline

Trains unrouted and DTR (α = 4, β = 0.8) DiT-T/2 (4 blocks × 128) for 4 × S steps and DiT-XS/2
(6 blocks × 256) for S steps (S = 600, the early reproduction's length), paired as in reproduce.py (same
seed: same initial weights, data order and noise), 3 seeds each, the reproduction's settings otherwise
(experiments/repro/base.yaml). Every run is scored every S steps: with a constant learning rate and an
EMA whose warm-up counts updates, nothing in training depends on max_steps (tests/test_analysis_scripts.py
checks that a run's weights at step s equal those of an s-step run), so the long DiT-T runs give the
length axis (S, 2S, 3S, 4S) and their step-S scores the DiT-T point of the width axis. Writes OUT/table.md
and OUT/paired.csv (DTR − vanilla per size and step: digits-FID, accuracy and the EMA probe loss per
5 uniform intervals of t, each a mean with a 95 % t interval over seeds), OUT/scores.csv and
OUT/scaling.png (the gain with its interval against width and against steps). Finished runs are skipped.

Budget (2 CPU cores, 2 runs at a time, one thread each): study.py's DiT-T/2 step and sample times; DiT-XS
costs 4× a DiT-T step and 3.8× a sample (measured at batch 64). At 3 seeds the interval is dominated by
training noise (README: evaluation noise).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import pandas as pd  # noqa: E402
from study import (  # noqa: E402
    PROBE_S,
    SAMPLE_S,
    START_S,
    STEP_S,
    Comparison,
    RunSpec,
    check_args,
    markdown,
    paired_table,
    run_study,
    study_callbacks,
    study_parser,
    write_yaml,
)

REPO = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
BASE = REPO / "experiments/repro/base.yaml"
ROUTING = {r: REPO / f"experiments/routing/{r}.yaml" for r in ("vanilla", "dtr")}
# model size -> (hidden size, training length in units of S)
SIZES = {"DiT-T/2": (128, 4), "DiT-XS/2": (256, 1)}
METRICS = ["fid", "accuracy", *(f"probe_{k}" for k in range(5))]
NUM_SAMPLES = 600
STEPS = 600  # S
# a step's and a sample's cost against DiT-T/2's (measured at batch 64)
COST = {"DiT-T/2": (1.0, 1.0), "DiT-XS/2": (4.0, 3.8)}


def size_tag(size: str) -> str:
    return size.removesuffix("/2")


def plan(seeds: int, steps: int, num_samples: int, out: Path) -> list[RunSpec]:
    """Every run, seed-major; one study config per size (its max_steps, scored every `steps`)."""
    runs = []
    for size, (_, length) in SIZES.items():
        study = write_yaml(
            out / f"study-{size_tag(size)}.yaml",
            {
                "trainer": {"max_steps": length * steps, "callbacks": study_callbacks(steps, num_samples)},
                "checkpoint": {"every_n_train_steps": steps},
                "model": {"net": {"init_args": {"size": size}}},
            },
        )
        for seed in range(seeds):
            for routing in ROUTING:
                runs.append(
                    RunSpec(
                        f"{routing}-{size_tag(size)}",
                        seed,
                        [BASE, ROUTING[routing], study],
                        labels={"routing": routing, "size": size},
                    )
                )
    return sorted(runs, key=lambda r: r.seed)


def gains(scores: pd.DataFrame) -> pd.DataFrame:
    """DTR − vanilla per size and step, every metric (paired, with 95 % t intervals)."""
    frames = []
    for size, (width, _) in SIZES.items():
        tag = size_tag(size)
        comparison = Comparison("DTR − vanilla", f"vanilla-{tag}", f"dtr-{tag}")
        table = paired_table(scores, [comparison], METRICS)
        if not table.empty:  # a size none of whose pairs finished has no rows
            frames.append(table.assign(size=size, width=width))
    return pd.concat(frames, ignore_index=True)


def figure(table: pd.DataFrame, steps: int, out: Path) -> Path:
    """The gain against width (at S steps) and against steps (DiT-T), for digits-FID and the low-t probe."""
    from dtr_lab.plots import paired_gains

    table = table[table["step"] > 0]  # the probe's step-0 row is the shared initialisation
    at_steps = table[table["step"] == steps]
    width = at_steps.assign(axis=f"model width (at {steps} steps)", x=lambda f: f["width"])
    length = table[table["size"] == "DiT-T/2"].assign(axis="training steps (DiT-T/2)", x=lambda f: f["step"])
    fig = paired_gains(
        pd.concat([width, length]),
        {"fid": "Δ digits-FID (DTR − vanilla)", "probe_0": "Δ probe loss t < 200 (%)"},
    )
    path = out / "scaling.png"
    fig.savefig(path)
    return path


def seconds(run: RunSpec, steps: int, num_samples: int) -> float:
    """A run's estimated seconds: training, scoring every S steps, start-up."""
    step_cost, sample_cost = COST[run.labels["size"]]
    length = SIZES[run.labels["size"]][1]
    scoring = length * (num_samples * SAMPLE_S * sample_cost + PROBE_S)
    return length * steps * STEP_S * step_cost + scoring + START_S


def report(scores: pd.DataFrame, out: Path, steps: int) -> tuple[str, list[Path]]:
    table = gains(scores)
    table.to_csv(out / "paired.csv", index=False)
    text = markdown(table[table["step"] > 0], METRICS, key=["size", "step"])
    return text, [out / "paired.csv", figure(table, steps, out)]


def main(argv: list[str] | None = None) -> int:
    steps_help = f"S: DiT-XS's steps and the scoring cadence; DiT-T trains 4 S (default {STEPS})"
    args = study_parser(__doc__, "runs/scaling", NUM_SAMPLES, steps_help).parse_args(argv)
    check_args(args, PROG, 3)
    steps = args.max_steps if args.max_steps is not None else STEPS
    runs = plan(args.seeds, steps, args.num_samples, args.out.resolve())
    comparisons = [Comparison("DTR − vanilla", f"vanilla-{size_tag(s)}", f"dtr-{size_tag(s)}") for s in SIZES]
    return run_study(
        PROG,
        args,
        runs,
        comparisons,
        lambda run: seconds(run, steps, args.num_samples),
        lambda scores, out: report(scores, out, steps),
        f"S = {steps} steps",
    )


if __name__ == "__main__":
    sys.exit(main())
