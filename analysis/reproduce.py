"""The small-scale reproduction of the DTR paper's claims on the 8×8 digits (issue 6).

    python analysis/reproduce.py --out runs/repro            # the full study, ≈ 46 min on 2 cores
    python analysis/reproduce.py --out /tmp/smoke --max-steps 30 --seeds 1   # the pipeline in ~2 min

Trains, with equal steps and ≥ 3 seeds each, unrouted vs R-TR vs DTR (uniform weighting) and
uniform vs Min-SNR vs ANT-UW crossed with unrouted/DTR, plus a one-seed α/β ablation of DTR; then
writes the table of final digits-FID and class accuracy (mean ± sd over seeds, markdown + CSV),
the FID-vs-iteration figure and the ablation figure. Runs already finished with the same command
are skipped, so a re-run after a crash only trains what is missing; a run cut off half-way is moved
aside (RUN.incomplete) and trained again. Prints its wall time.

Budget (2 CPU cores, 2 runs at a time with one thread each): DiT-T/2, batch 65, 1500 steps at
≈ 0.11 s = 165 s; 5 evaluations of 400 samples (25 DDIM steps, guidance 1.5) at ≈ 7 s = 35 s; ≈ 12 s
start-up: ≈ 212 s a run. 21 main runs + 5 ablation runs = 26 runs over 2 lanes ≈ 13 × 212 s ≈ 46 min.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments/repro/base.yaml"
ROUTING = {r: REPO / f"experiments/digits/{r}.yaml" for r in ("vanilla", "rtr", "dtr")}
WEIGHTING = {
    "uniform": REPO / "experiments/digits/uniform.yaml",
    "min_snr": REPO / "experiments/digits/min_snr.yaml",
    "uw": REPO / "experiments/repro/uw.yaml",
}
# (routing, weighting) pairs of the main table: Table 1 of the DTR paper at digits scale
MAIN = [("vanilla", "uniform"), ("rtr", "uniform"), ("dtr", "uniform"),
        ("vanilla", "min_snr"), ("dtr", "min_snr"), ("vanilla", "uw"), ("dtr", "uw")]
# DTR's α (window speed) and β (sharing ratio); the defaults α=4, β=0.8 and β=1 (= unrouted) are
# the seed-0 runs of the main study
ALPHAS = (1.0, 2.0, 8.0)
BETAS = (0.5, 0.7)
DEFAULT_ALPHA, DEFAULT_BETA = 4.0, 0.8
EVALUATIONS = 5  # SampleQuality evaluations per run
# Seconds, measured on these 2-core machines with one thread a run (see the module docstring).
STEP_S, SAMPLE_S, START_S = 0.11, 0.0175, 12.0
PAPER_FID = {  # DiT-L/2, ImageNet 256, 400K iterations (DESIGN.md §1)
    ("vanilla", "uniform"): 12.59, ("rtr", "uniform"): 16.18, ("dtr", "uniform"): 8.90,
    ("vanilla", "min_snr"): 9.58, ("dtr", "min_snr"): 8.24, ("vanilla", "uw"): 5.85, ("dtr", "uw"): 4.61,
}


@dataclass
class RunSpec:
    """One training run of the study: its folder name, seed, config files and extra overrides."""

    routing: str
    weighting: str
    seed: int
    overrides: list[str] = field(default_factory=list)
    param: str = ""  # the ablated parameter ('alpha' / 'beta'), empty for main-study runs
    param_value: float = float("nan")

    @property
    def name(self) -> str:
        tag = f"-{self.param}{self.param_value:g}" if self.param else ""
        return f"{self.routing}-{self.weighting}{tag}"

    def directory(self, out: Path) -> Path:
        return out / "runs" / self.name / f"seed{self.seed}"

    def command(self, out: Path) -> list[str]:
        seed = str(self.seed)
        args = [sys.executable, "-m", "dtr_lab", "fit", "--config", str(BASE),
                "--config", str(ROUTING[self.routing]), "--config", str(WEIGHTING[self.weighting]),
                "--config", str(out / "study.yaml"),
                "--seed_everything", seed, "--model.seed", seed,
                "--trainer.logger.init_args.save_dir", str(out / "runs"),
                "--trainer.logger.init_args.name", self.name,
                "--trainer.logger.init_args.version", f"seed{seed}"]
        if self.routing == "rtr":  # a fresh random routing per seed: R-TR's variance is part of it
            args += ["--model.routing.init_args.seed", seed]
        return args + self.overrides


def study(seeds: int, ablation: bool) -> list[RunSpec]:
    """Every run, seed-major so a study cut short still has whole seeds of every variant."""
    runs = [RunSpec(r, w, s) for s in range(seeds) for r, w in MAIN]
    if ablation:
        flag = "--model.routing.init_args."
        runs += [RunSpec("dtr", "uniform", 0, [flag + "alpha", str(a)], "alpha", a) for a in ALPHAS]
        runs += [RunSpec("dtr", "uniform", 0, [flag + "beta", str(b)], "beta", b) for b in BETAS]
    return runs


def write_study_config(out: Path, max_steps: int, num_samples: int | None) -> Path:
    """OUT/study.yaml: max_steps and the callbacks of the base config with SampleQuality's cadence
    scaled to EVALUATIONS evaluations per run (it replaces the base's callback list)."""
    base = yaml.safe_load(BASE.read_text())
    callbacks = base["trainer"]["callbacks"]
    for cb in callbacks:
        if cb["class_path"].endswith("SampleQuality"):
            cb["init_args"]["every_n_steps"] = max(1, max_steps // EVALUATIONS)
            if num_samples is not None:
                cb["init_args"]["num_samples"] = cb["init_args"]["batch_size"] = num_samples
    config = {"trainer": {"max_steps": max_steps, "callbacks": callbacks}}
    if max_steps < base["checkpoint"]["every_n_train_steps"]:
        config["checkpoint"] = {"every_n_train_steps": max_steps}
    path = out / "study.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def is_done(run: RunSpec, out: Path) -> bool:
    """Finished earlier with the same command (a different --max-steps trains it again)."""
    marker = run.directory(out) / "done.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text())["command"][1:] == run.command(out)[1:]
    except (ValueError, KeyError):
        return False


def set_aside(run_dir: Path) -> None:
    """Keep a cut-off or outdated run as RUN.incomplete (replacing an older one) and start clean."""
    if run_dir.exists():
        aside = run_dir.with_name(run_dir.name + ".incomplete")
        shutil.rmtree(aside, ignore_errors=True)
        run_dir.rename(aside)


def train(runs: list[RunSpec], out: Path, jobs: int, threads: int) -> list[str]:
    """Train the runs `jobs` at a time, each with `threads` CPU threads; the failures' names."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending, active, failed = list(runs), [], []
    total, finished = len(runs), 0
    while pending or active:
        while pending and len(active) < jobs:
            run = pending.pop(0)
            set_aside(run.directory(out))
            log = (out / "logs" / f"{run.name}-seed{run.seed}.log").open("w")
            proc = subprocess.Popen(run.command(out), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            active.append((run, proc, log, time.time()))
        time.sleep(1.0)
        for item in [a for a in active if a[1].poll() is not None]:
            run, proc, log, start = item
            active.remove(item)
            log.close()
            finished += 1
            took = time.time() - start
            if proc.returncode == 0:
                marker = run.directory(out) / "done.json"
                marker.write_text(json.dumps({"command": run.command(out), "seconds": round(took, 1)}))
                print(f"[{finished}/{total}] {run.name} seed {run.seed}: {took:.0f} s", flush=True)
            else:
                failed.append(f"{run.name} seed {run.seed}")
                print(f"[{finished}/{total}] {run.name} seed {run.seed}: FAILED (exit {proc.returncode}), "
                      f"see {log.name}", flush=True)
    return failed


def read_quality(runs: list[RunSpec], out: Path) -> pd.DataFrame:
    """records/quality.csv of every finished run, with routing, weighting, seed and ablation columns."""
    frames = []
    for run in runs:
        path = run.directory(out) / "records" / "quality.csv"
        if not is_done(run, out) or not path.is_file():
            continue
        frame = pd.read_csv(path, usecols=["step", "metric", "value"])
        frame = frame[~frame["metric"].str.startswith("test/")]
        frames.append(frame.assign(variant=run.name, routing=run.routing, weighting=run.weighting,
                                   seed=run.seed, param=run.param, param_value=run.param_value))
    if not frames:
        raise SystemExit("reproduce.py: no finished run has records/quality.csv; see the logs in OUT/logs")
    return pd.concat(frames, ignore_index=True)


def final_scores(quality: pd.DataFrame) -> pd.DataFrame:
    """One row per run: every metric at the run's last evaluated step."""
    last = quality[quality["step"] == quality.groupby(["variant", "seed"])["step"].transform("max")]
    scores = last.pivot_table(index=["variant", "seed", "step"], columns="metric", values="value")
    scores = scores.reset_index()
    labels = last[["variant", "seed", "routing", "weighting", "param", "param_value"]].drop_duplicates()
    return labels.merge(scores, on=["variant", "seed"])


def summary_table(final: pd.DataFrame) -> pd.DataFrame:
    """Main-study rows: FID, accuracy, precision, recall as mean ± sd over seeds, beside the paper's FID."""
    main = final[final["param"] == ""]
    rows = []
    for routing, weighting in MAIN:
        group = main[(main["routing"] == routing) & (main["weighting"] == weighting)]
        if group.empty:
            continue
        row = {"routing": routing, "weighting": weighting, "seeds": len(group),
               "steps": int(group["step"].max())}
        for metric in ("fid", "accuracy", "precision", "recall"):
            row[f"{metric}_mean"] = group[metric].mean()
            row[f"{metric}_sd"] = group[metric].std(ddof=1) if len(group) > 1 else float("nan")
        row["paper_fid"] = PAPER_FID[(routing, weighting)]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The summary as a GitHub table, 'mean ± sd' cells."""

    def cell(mean: float, sd: float, digits: int) -> str:
        return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"

    head = "| routing | weighting | seeds | steps | digits-FID ↓ | accuracy ↑ | precision ↑ | recall ↑ "
    lines = [head + "| paper FID (ImageNet) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(
            f"| {r.routing} | {r.weighting} | {r.seeds} | {r.steps} | {cell(r.fid_mean, r.fid_sd, 2)} "
            f"| {cell(r.accuracy_mean, r.accuracy_sd, 3)} | {cell(r.precision_mean, r.precision_sd, 3)} "
            f"| {cell(r.recall_mean, r.recall_sd, 3)} | {r.paper_fid} |"
        )
    return "\n".join(lines) + "\n"


def ablation_rows(final: pd.DataFrame) -> pd.DataFrame:
    """α and β sweeps of DTR at seed 0, each including the default run and (for β = 1) the unrouted one."""
    seed0 = final[final["seed"] == 0]
    default = seed0[(seed0["variant"] == "dtr-uniform")]
    vanilla = seed0[(seed0["variant"] == "vanilla-uniform")]
    alpha = pd.concat([seed0[seed0["param"] == "alpha"],
                       default.assign(param="alpha", param_value=DEFAULT_ALPHA)])
    beta = pd.concat([seed0[seed0["param"] == "beta"], default.assign(param="beta", param_value=DEFAULT_BETA),
                      vanilla.assign(param="beta", param_value=1.0)])
    return pd.concat([alpha, beta], ignore_index=True)[["param", "param_value", "fid", "accuracy", "step"]]


def figures(quality: pd.DataFrame, final: pd.DataFrame, out: Path) -> list[Path]:
    """The FID-vs-iteration figure (routing panel, weighting × routing panel) and the α/β ablation."""
    from dtr_lab.plots import ablation, quality_curves

    main = quality[quality["param"] == ""]
    panels = pd.concat([
        main[main["weighting"] == "uniform"].assign(panel="routing (uniform weighting)"),
        main[main["routing"].isin(["vanilla", "dtr"])].assign(panel="weighting × routing"),
    ])
    written = []
    for metric in ("fid", "accuracy"):
        fig = quality_curves(panels, metric, hue="routing", line_style="weighting", col="panel")
        written.append(out / f"{metric}_vs_step.png")
        fig.savefig(written[-1])
    sweep = ablation_rows(final)
    if sweep["param"].nunique() and (sweep.groupby("param").size() > 1).any():
        sweep.to_csv(out / "ablation.csv", index=False)
        fig = ablation(sweep, {"alpha": "α (window speed)", "beta": "β (sharing ratio)"})
        written.append(out / "ablation.png")
        fig.savefig(written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs/repro", help="study folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per main-study variant")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="training steps (default: the base config's)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="samples per SampleQuality evaluation (default: the base config's)")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--no-ablation", action="store_true", help="skip the α/β ablation")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and the commands, train nothing")
    args = parser.parse_args(argv)
    started = time.time()
    out = args.out.resolve()
    max_steps = args.max_steps or yaml.safe_load(BASE.read_text())["trainer"]["max_steps"]
    write_study_config(out, max_steps, args.num_samples)
    runs = study(args.seeds, not args.no_ablation)
    todo = [r for r in runs if not is_done(r, out)]
    per_run = max_steps * STEP_S + EVALUATIONS * 400 * SAMPLE_S + START_S
    print(f"reproduce: {len(runs)} runs ({len(runs) - len(todo)} already done), {max_steps} steps each, "
          f"{args.jobs} at a time; estimate {len(todo) * per_run / args.jobs / 60:.0f} min")
    if args.dry_run:
        for run in todo:
            print(" ".join(run.command(out)))
        return 0

    from dtr_lab.metrics import load_digits_classifier

    load_digits_classifier()  # train and cache it once here, not in two runs at the same time
    failed = train(todo, out, args.jobs, args.threads)

    quality = read_quality(runs, out)
    final = final_scores(quality)
    final.to_csv(out / "final_scores.csv", index=False)
    table = summary_table(final)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown(table))
    written = figures(quality, final, out)
    print()
    print(markdown(table))
    for path in [out / "table.md", out / "table.csv", out / "final_scores.csv", *written]:
        print(f"wrote {path}")
    if failed:
        print(f"reproduce: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    print(f"reproduce: wall time {(time.time() - started) / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
