"""Does DTR's gain grow with model size and training length? A paired scaling study on the 8×8 digits.

    python analysis/scaling.py --out runs/scaling                  # the full study, ≈ 64 min on 2 cores
    python analysis/scaling.py --out /tmp/smoke --max-steps 4 --seeds 2 --num-samples 100   # the pipeline

Trains unrouted and DTR (α = 4, β = 0.8) DiT-T/2 (4 blocks × 128) for 4 × S steps and DiT-XS/2
(6 blocks × 256) for S steps (S = 600, the reproduction's length), paired as in reproduce.py (same
seed: same initial weights, data order and noise), 3 seeds each, the reproduction's settings otherwise
(experiments/repro/base.yaml). Every run is scored every S steps: with a constant learning rate and an
EMA whose warm-up counts updates, nothing in training depends on max_steps (tests/test_analysis_scripts.py
checks that a run's weights at step s equal those of an s-step run), so the long DiT-T runs give the
length axis (S, 2S, 3S, 4S) and their step-S scores the DiT-T point of the width axis. Writes OUT/table.md
and OUT/paired.csv (DTR − vanilla per size and step: digits-FID, accuracy and the EMA probe loss per
5 uniform intervals of t, each a mean with a 95 % t interval over seeds), OUT/scores.csv and
OUT/scaling.png (the gain with its interval against width and against steps). Finished runs are skipped.

Budget (2 CPU cores, 2 runs at a time, one thread each; measured at batch 64: DiT-T 0.195 s a step and
0.056 s a sample, DiT-XS ≈ 0.78 s a step (4×) and 0.215 s a sample (3.8×), ≈ 15 s start-up): a DiT-T run
is 2400 × 0.195 = 468 s + 4 scorings × 600 samples × 0.056 = 134 s + ≈ 24 s of probes and start-up
≈ 626 s; a DiT-XS run 600 × 0.78 = 468 s + 600 × 0.215 = 129 s + ≈ 51 s ≈ 648 s. 3 seeds × 2 arms ×
(626 + 648) s over 2 lanes ≈ 64 min. N = 600 samples (not the reproduction's 1000) keeps it in budget:
at 3 seeds the interval is dominated by training noise (README: evaluation noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from study import (  # noqa: E402
    Comparison,
    RunSpec,
    check_and_train,
    check_num_samples,
    is_done,
    markdown,
    paired_table,
    read_scores,
    study_callbacks,
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
# Seconds on these 2-core machines with one thread a run (module docstring).
STEP_S = {"DiT-T/2": 0.195, "DiT-XS/2": 0.78}
SAMPLE_S = {"DiT-T/2": 0.056, "DiT-XS/2": 0.215}
START_S = 15.0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/scaling", help="study folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="S: DiT-XS's steps and the scoring cadence; DiT-T trains 4 S (default: base config's)",
    )
    parser.add_argument("--num-samples", type=int, default=NUM_SAMPLES, help="samples per evaluation")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands, train nothing"
    )
    parser.add_argument("--no-train", action="store_true", help="only tabulate the runs already finished")
    args = parser.parse_args(argv)
    check_num_samples(args.num_samples, PROG)
    started = time.time()
    out = args.out.resolve()
    steps = args.max_steps or yaml.safe_load(BASE.read_text())["trainer"]["max_steps"]
    runs = plan(args.seeds, steps, args.num_samples, out)
    todo = [r for r in runs if not is_done(r, out)]
    seconds = sum(
        SIZES[r.labels["size"]][1] * steps * STEP_S[r.labels["size"]]
        + SIZES[r.labels["size"]][1] * args.num_samples * SAMPLE_S[r.labels["size"]]
        + START_S
        for r in todo
    )
    print(
        f"{PROG}: {len(runs)} runs ({len(runs) - len(todo)} already done), S = {steps} steps, "
        f"{args.jobs} at a time; estimate {seconds / args.jobs / 60:.0f} min"
    )
    if args.dry_run:
        for run in todo:
            print(" ".join(run.command(out)))
        return 0
    comparisons = [Comparison("DTR − vanilla", f"vanilla-{size_tag(s)}", f"dtr-{size_tag(s)}") for s in SIZES]
    failed = (
        [] if args.no_train else check_and_train(runs, todo, comparisons, out, args.jobs, args.threads, PROG)
    )

    scores = read_scores(runs, out)
    scores.to_csv(out / "scores.csv", index=False)
    table = gains(scores)
    table.to_csv(out / "paired.csv", index=False)
    text = markdown(table[table["step"] > 0], METRICS, key=["size", "step"])
    (out / "table.md").write_text(text)
    written = figure(table, steps, out)
    print()
    print(text)
    for path in [out / "table.md", out / "paired.csv", out / "scores.csv", written]:
        print(f"wrote {path}")
    if failed:
        print(f"{PROG}: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    print(f"{PROG}: wall time {(time.time() - started) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
