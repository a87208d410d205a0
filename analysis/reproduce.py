"""The small-scale reproduction of the DTR paper's claims on the 8×8 digits, as a paired seed study.

    python analysis/reproduce.py --out runs/repro                  # the full study, ≈ 60 min on 2 cores
    python analysis/reproduce.py --out runs/repro --learned-routing  # + Switch and affinity arms, ≈ 20 min
    python analysis/reproduce.py --out /tmp/smoke --max-steps 30 --seeds 2 --core-only   # the pipeline

Trains 7 arms — unrouted / R-TR / DTR with uniform weights, and unrouted / DTR with Min-SNR and with
ANT-UW — for 5 seeds each. Arms of one seed share initial weights, data order, timesteps and noise
(analysis/study.py checks it before training), so every comparison (R-TR − vanilla, DTR − vanilla,
DTR − R-TR, DTR+MinSNR − MinSNR, DTR+UW − UW, MinSNR − uniform, UW − uniform) is a per-seed paired
difference, reported as its mean with a 95 % Student-t interval (n − 1 dof) beside each arm's mean ± sd:
for digits-FID, class accuracy, and the EMA probe loss (fixed images and noise) averaged over 5 uniform
intervals of t, in % of arm a. Writes OUT/table.md, OUT/paired.csv (every comparison × metric × step),
OUT/scores.csv (every run's scores) and probe-loss-vs-step figures; with --ablation also a one-seed α/β
ablation of DTR. Finished runs are skipped on a re-run; a run cut off half-way is trained again.

--learned-routing adds two routed arms to the core comparison, paired against vanilla and DTR: Switch-DiT's
timestep-gated experts (experiments/routing/switch.yaml; its gates and experts are its own parameters,
the rest starts as vanilla's) and AffinityRouting, whose masks are derived from the task affinity that a
unrouted run of a third of the steps (OUT/runs/affinity-measure, trained first) measured 8 times.

Settings: DiT-T/2, AdamW 3e-3, EMA 0.999, 600 steps, batch 64 for every arm — ANT-UW with K = 8
uniform intervals as in the official DTR + ANT-UW scripts (8 samples per interval), and one batch for
all arms so the weighting comparisons are paired too. Scored at the end on N = 1000 EMA samples
(DDIM 25, guidance 1.5, the same x_T for every arm; analysis/eval_noise.py measures what that leaves of
evaluation noise in a paired difference, README), the probe every 120 steps.

Budget (2 CPU cores, 2 runs at a time, one thread each; measured on DiT-T/2 at batch 64: 0.195 s a
step, 0.056 s a sample (25 steps × 2 for guidance), ≈ 15 s start-up): a run is 600 × 0.195 = 117 s of
training + 1000 × 0.056 = 56 s of scoring + 6 probes ≈ 9 s + 15 s ≈ 197 s; 7 arms × 5 seeds = 35 runs
over 2 lanes ≈ 58 min. --ablation adds 5 one-seed runs (≈ 8 min).
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
    train,
    write_yaml,
)

REPO = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
BASE = REPO / "experiments/repro/base.yaml"
ROUTING = {
    r: REPO / f"experiments/routing/{r}.yaml" for r in ("vanilla", "rtr", "dtr", "switch", "affinity")
}
WEIGHTING = {
    "uniform": REPO / "experiments/weighting/uniform.yaml",
    "min_snr": REPO / "experiments/weighting/min_snr.yaml",
    "uw": REPO / "experiments/repro/uw.yaml",
}
CORE = [("vanilla", "uniform"), ("rtr", "uniform"), ("dtr", "uniform")]
WEIGHTINGS = [("vanilla", "min_snr"), ("dtr", "min_snr"), ("vanilla", "uw"), ("dtr", "uw")]
LEARNED = [("switch", "uniform"), ("affinity", "uniform")]
# the affinity arm's masks come from this unrouted run's TaskAffinity records (seed 0, the study's
# settings, a third of its steps, measured 8 times: 200 steps every 25): one table for every seed, as
# DTR's is one for every seed
MEASURE = "affinity-measure"
COMPARISONS = [
    Comparison("R-TR − vanilla", "vanilla-uniform", "rtr-uniform"),
    Comparison("DTR − vanilla", "vanilla-uniform", "dtr-uniform"),
    Comparison("DTR − R-TR", "rtr-uniform", "dtr-uniform"),
    Comparison("DTR+MinSNR − MinSNR", "vanilla-min_snr", "dtr-min_snr"),
    Comparison("DTR+UW − UW", "vanilla-uw", "dtr-uw"),
    Comparison("MinSNR − uniform", "vanilla-uniform", "vanilla-min_snr"),
    Comparison("UW − uniform", "vanilla-uniform", "vanilla-uw"),
    Comparison("Switch − vanilla", "vanilla-uniform", "switch-uniform"),
    Comparison("Affinity − vanilla", "vanilla-uniform", "affinity-uniform"),
    Comparison("Switch − DTR", "dtr-uniform", "switch-uniform"),
    Comparison("Affinity − DTR", "dtr-uniform", "affinity-uniform"),
]
METRICS = ["fid", "accuracy", *(f"probe_{k}" for k in range(5))]
# DTR's α (window speed) and β (sharing ratio), one seed; α = 4, β = 0.8 and β = 1 (unrouted) are seed 0
ALPHAS = (1.0, 2.0, 8.0)
BETAS = (0.5, 0.7)
DEFAULT_ALPHA, DEFAULT_BETA = 4.0, 0.8
DIFFERENCE_LABELS = {
    "fid": "Δ digits-FID",
    "accuracy": "Δ accuracy",
    "probe_0": "Δ probe loss t < 200 (%)",
    "probe_2": "Δ probe loss 400 ≤ t < 600 (%)",
    "probe_4": "Δ probe loss t ≥ 800 (%)",
}
PROBES = 5  # probe loss every max_steps/5 steps (and at step 0); sample quality at the end only
NUM_SAMPLES = 1000
# Seconds on these 2-core machines with one thread a run (module docstring).
STEP_S, SAMPLE_S, PROBE_S, START_S = 0.195, 0.056, 1.5, 15.0
PAPER_FID = {  # DiT-L/2, ImageNet 256, 400K iterations (DESIGN.md §1)
    "vanilla-uniform": 12.59,
    "rtr-uniform": 16.18,
    "dtr-uniform": 8.90,
    "vanilla-min_snr": 9.58,
    "dtr-min_snr": 8.24,
    "vanilla-uw": 5.85,
    "dtr-uw": 4.61,
}


def spec(
    routing: str,
    weighting: str,
    seed: int,
    study: Path,
    overrides: list[str] | None = None,
    param: str = "",
    value: float = float("nan"),
) -> RunSpec:
    tag = f"-{param}{value:g}" if param else ""
    return RunSpec(
        f"{routing}-{weighting}{tag}",
        seed,
        [BASE, ROUTING[routing], WEIGHTING[weighting], study],
        overrides or [],
        {"routing": routing, "weighting": weighting, "param": param, "param_value": value},
    )


def measure_spec(out: Path, max_steps: int) -> RunSpec:
    """The unrouted run whose measured task affinity the affinity arm routes by."""
    steps = max(1, max_steps // 3)
    every = max(1, steps // 8)
    callbacks = [{"class_path": "dtr_lab.callbacks.TaskAffinity", "init_args": {"every_n_steps": every}}]
    config = write_yaml(out / "measure.yaml", {"trainer": {"max_steps": steps, "callbacks": callbacks}})
    configs = [BASE, ROUTING["vanilla"], WEIGHTING["uniform"], config]
    labels = {"routing": "vanilla", "weighting": "uniform", "param": "measure"}
    return RunSpec(MEASURE, 0, configs, [], labels)


def plan(
    seeds: int, core_only: bool, ablation: bool, learned: bool, study: Path, max_steps: int
) -> list[RunSpec]:
    """Every run, seed-major so a study cut short still has whole seeds of every arm."""
    arms = (CORE if core_only else CORE + WEIGHTINGS) + (LEARNED if learned else [])
    measure = measure_spec(study.parent, max_steps).directory(study.parent)
    source = ["--model.routing.init_args.source", str(measure)]
    runs = [
        spec(r, w, s, study, source if r == "affinity" else None) for s in range(seeds) for r, w in arms
    ]
    if ablation:
        flag = "--model.routing.init_args."
        runs += [spec("dtr", "uniform", 0, study, [flag + "alpha", str(a)], "alpha", a) for a in ALPHAS]
        runs += [spec("dtr", "uniform", 0, study, [flag + "beta", str(b)], "beta", b) for b in BETAS]
    return runs


def write_study_config(out: Path, max_steps: int, num_samples: int) -> Path:
    """OUT/study.yaml: max_steps and the study's callbacks (they replace the base config's list)."""
    callbacks = study_callbacks(0, num_samples, probe_every_n_steps=max(1, max_steps // PROBES))
    config = {"trainer": {"max_steps": max_steps, "callbacks": callbacks}}
    if max_steps < yaml.safe_load(BASE.read_text())["checkpoint"]["every_n_train_steps"]:
        config["checkpoint"] = {"every_n_train_steps": max_steps}
    return write_yaml(out / "study.yaml", config)


def arm_table(scores: pd.DataFrame) -> str:
    """Each main arm's final digits-FID and accuracy, mean ± sd over seeds, beside the paper's FID."""
    main = scores[scores["param"] == ""]
    last = main[main["step"] == main["step"].max()]
    lines = [
        "| arm | seeds | steps | digits-FID ↓ | accuracy ↑ | paper FID (ImageNet) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, rows in last.groupby("arm", sort=False):
        fid, acc = (rows[rows["metric"] == m]["value"] for m in ("fid", "accuracy"))
        lines.append(
            f"| {arm} | {len(fid)} | {int(rows['step'].max())} | {fid.mean():.2f} ± {fid.std():.2f} "
            f"| {acc.mean():.3f} ± {acc.std():.3f} | {PAPER_FID.get(arm, '–')} |"
        )
    return "\n".join(lines) + "\n"


def figures(scores: pd.DataFrame, final: pd.DataFrame, out: Path) -> list[Path]:
    """Every comparison's final paired differences at a glance; the EMA probe loss of the lowest- and
    highest-noise fifth of t against step (routing panel, weighting × routing panel; sample quality is
    scored at the end only) and the α/β ablation."""
    from dtr_lab.plots import ablation, paired_differences, quality_curves

    main = scores[scores["param"] == ""]
    panels = pd.concat(
        [
            main[main["weighting"] == "uniform"].assign(panel="routing (uniform weighting)"),
            main[main["routing"].isin(["vanilla", "dtr"])].assign(panel="weighting × routing"),
        ]
    )
    fig = paired_differences(final, DIFFERENCE_LABELS)
    written = [out / "paired_differences.png"]
    fig.savefig(written[0])
    for metric in ("probe_0", "probe_4"):
        fig = quality_curves(panels, metric, hue="routing", line_style="weighting", col="panel")
        fig.axes[0].set_yscale("log")
        written.append(out / f"{metric}_vs_step.png")
        fig.savefig(written[-1])
    swept = scores[(scores["param"] != "") & (scores["step"] == scores["step"].max())]
    if not swept.empty:
        last = scores[scores["step"] == scores["step"].max()]
        wide = last.pivot_table(index=["arm", "seed"], columns="metric", values="value").reset_index()
        # labels merged back: main-study rows have param_value NaN, which a pivot index would drop
        final = (
            last[["arm", "seed", "param", "param_value"]].drop_duplicates().merge(wide, on=["arm", "seed"])
        )
        seed0 = final[final["seed"] == 0]
        default = seed0[seed0["arm"] == "dtr-uniform"]
        sweep = pd.concat(
            [
                seed0[seed0["param"] == "alpha"],
                default.assign(param="alpha", param_value=DEFAULT_ALPHA),
                seed0[seed0["param"] == "beta"],
                default.assign(param="beta", param_value=DEFAULT_BETA),
                seed0[seed0["arm"] == "vanilla-uniform"].assign(param="beta", param_value=1.0),
            ]
        )
        sweep.to_csv(out / "ablation.csv", index=False)
        fig = ablation(sweep, {"alpha": "α (window speed)", "beta": "β (sharing ratio)"})
        written.append(out / "ablation.png")
        fig.savefig(written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/repro", help="study folder")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per arm")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="training steps (default: the base config's)"
    )
    parser.add_argument("--num-samples", type=int, default=NUM_SAMPLES, help="samples per evaluation")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument(
        "--core-only", action="store_true", help="only vanilla / R-TR / DTR (uniform weights)"
    )
    parser.add_argument("--ablation", action="store_true", help="add the one-seed α/β ablation of DTR")
    parser.add_argument(
        "--learned-routing",
        action="store_true",
        help="add Switch-DiT and affinity-derived routing to the core arms (after an affinity measurement)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands, train nothing"
    )
    parser.add_argument("--no-train", action="store_true", help="only tabulate the runs already finished")
    args = parser.parse_args(argv)
    check_num_samples(args.num_samples, PROG)
    started = time.time()
    out = args.out.resolve()
    max_steps = args.max_steps or yaml.safe_load(BASE.read_text())["trainer"]["max_steps"]
    study = write_study_config(out, max_steps, args.num_samples)
    runs = plan(args.seeds, args.core_only, args.ablation, args.learned_routing, study, max_steps)
    arms = {r.arm for r in runs}
    comparisons = [c for c in COMPARISONS if c.a in arms and c.b in arms]
    measure = [measure_spec(out, max_steps)] if args.learned_routing else []
    todo = [r for r in measure + runs if not is_done(r, out)]
    per_run = max_steps * STEP_S + args.num_samples * SAMPLE_S + (PROBES + 1) * PROBE_S + START_S
    print(
        f"{PROG}: {len(runs)} runs ({sum(r not in todo for r in runs)} already done)"
        + (" and the affinity measurement" if measure else "")
        + f", {max_steps} steps each, "
        f"{args.jobs} at a time; estimate {len(todo) * per_run / args.jobs / 60:.0f} min"
    )
    if args.dry_run:
        for run in todo:
            print(" ".join(run.command(out)))
        return 0
    failed = []
    if not args.no_train:
        first = [r for r in measure if r in todo]  # the affinity arm's masks are read from it
        failed = train(first, out, 1, args.threads * args.jobs, PROG) if first else []
        if not failed:
            rest = [r for r in todo if r not in first]
            failed = check_and_train(runs, rest, comparisons, out, args.jobs, args.threads, PROG)

    scores = read_scores(runs, out)
    scores.to_csv(out / "scores.csv", index=False)
    paired = paired_table(scores[scores["param"] == ""], comparisons, METRICS)
    paired.to_csv(out / "paired.csv", index=False)
    final = paired[paired["step"] == paired["step"].max()]
    text = arm_table(scores) + "\n" + markdown(final, METRICS, key=[])
    (out / "table.md").write_text(text)
    written = figures(scores, final, out)
    print()
    print(text)
    for path in [out / "table.md", out / "paired.csv", out / "scores.csv", *written]:
        print(f"wrote {path}")
    if failed:
        print(f"{PROG}: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    print(f"{PROG}: wall time {(time.time() - started) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
