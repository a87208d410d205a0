"""Paired seed studies, shared by reproduce.py and scaling.py: run specs, resumable training two runs at a
time, the pairing check, the table of paired differences with Student-t confidence intervals, and the
skeleton of a study's command line (study_parser, run_study).

Pairing: both arms of a comparison train from the same seed, which fixes the initial weights
(seed_everything; routing adds no parameters), the timesteps, noise and label dropout (model.seed, the
module's own generator) and the data order (data.seed). The per-seed difference b − a then cancels what
the two arms share, and its mean over seeds gets a t interval (dtr_lab.runs.stats). Before training, every
compared pair is built at seed 0 and must have identical network parameters (dtr_lab.pairing), or the
study stops with one error line; a comparison of networks that differ by construction (independent
experts per interval) says so (Comparison.same_weights) and is paired by seed only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import engine
import pandas as pd
import yaml

from dtr_lab.records import read_records
from dtr_lab.runs import config_value, continued, record_key
from dtr_lab.runs.convergence import paired_steps, plateau, steps_to_target
from dtr_lab.runs.markdown import text_table
from dtr_lab.runs.stats import (
    PairedDifference,
    detectable_effect,
    paired_difference,
    pairs_needed,
    sd_of,
    verdict,
)

REPO = Path(__file__).resolve().parents[1]
QUALITY = ("fid", "accuracy", "precision", "recall", "memorised")
PROBE_INTERVALS = 5  # the probe loss is averaged over 5 uniform intervals of t (t // (T/5))
NUM_TIMESTEPS = 1000
MIN_SAMPLES = 100  # SampleQuality's kid_subset_size


@dataclass
class RunSpec:
    """One training run: its arm (folder name), seed, config files, extra overrides and labels."""

    arm: str
    seed: int
    configs: list[Path]
    overrides: list[str] = field(default_factory=list)
    labels: dict = field(default_factory=dict)

    def directory(self, out: Path) -> Path:
        return out / "runs" / self.arm / f"seed{self.seed}"

    def args(self, out: Path) -> list[str]:
        """The `dtr_lab fit` arguments: every source of randomness seeded by the run's seed."""
        seed = str(self.seed)
        args = [a for c in self.configs for a in ("--config", str(c))]
        args += [
            "--seed_everything",
            seed,
            "--model.seed",
            seed,
            "--data.init_args.seed",
            seed,
            "--trainer.logger.init_args.save_dir",
            str(out / "runs"),
            "--trainer.logger.init_args.name",
            self.arm,
            "--trainer.logger.init_args.version",
            f"seed{seed}",
        ]
        if routing_seeded(self.configs):  # R-TR: a fresh table per seed
            args += ["--model.routing.init_args.seed", seed]
        return args + self.overrides

    def command(self, out: Path) -> list[str]:
        return [sys.executable, "-m", "dtr_lab", "fit", *self.args(out)]


def routing_seeded(configs: list[Path]) -> bool:
    """Whether the config files give their routing a seed of its own (``model.routing.init_args.seed``, as
    R-TR's random tables take): a seed study sets it to each run's seed. Read from the files, as the CLI
    merges them: a later file's routing of another class starts afresh."""
    class_path, seeded = None, False
    for path in configs:
        node = config_value(yaml.safe_load(Path(path).read_text()) or {}, "model.routing")
        if not isinstance(node, dict):
            continue
        if node.get("class_path", class_path) != class_path:
            class_path, seeded = node["class_path"], False
        seeded = seeded or "seed" in (node.get("init_args") or {})
    return seeded


@dataclass(frozen=True)
class Comparison:
    """Arm b against arm a (b − a), e.g. DTR − vanilla. `same_weights`: both arms start from the same
    network weights (checked before training); false for arms whose networks differ by construction (e.g.
    independent experts per interval against the unrouted network), paired by seed only: data order,
    timesteps and noise."""

    name: str
    a: str
    b: str
    same_weights: bool = True


def write_yaml(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def check_num_samples(num_samples: int, prog: str) -> None:
    """Refuse (one line, exit 2, nothing written) a sample count the scores cannot be computed from: KID
    draws subsets of MIN_SAMPLES samples, and the t interval of a FID difference needs N in the hundreds."""
    if num_samples < MIN_SAMPLES:
        print(
            f"{prog}: error: --num-samples {num_samples} is below {MIN_SAMPLES}, the KID subset size every "
            "score needs; the studies use 600 or more to keep a FID difference's sample noise small "
            "(README: evaluation noise)",
            file=sys.stderr,
        )
        raise SystemExit(2)


def study_callbacks(
    every_n_steps: int, num_samples: int, probe_every_n_steps: int | None = None
) -> list[dict]:
    """The study's measurements: digits-FID/accuracy of `num_samples` EMA samples every N steps (0: at the
    end only) and the EMA probe loss (64 fixed images × 20 timesteps, fixed noise: ≈ 13 training steps of
    compute) every `probe_every_n_steps` (default N)."""
    return [
        {
            "class_path": "dtr_lab.callbacks.SampleQuality",
            "init_args": {
                "every_n_steps": every_n_steps,
                "num_samples": num_samples,
                "batch_size": min(num_samples, 500),
            },
        },
        {
            "class_path": "dtr_lab.callbacks.TimestepLoss",
            "init_args": {
                "every_n_steps": 50,
                "probe_every_n_steps": probe_every_n_steps or every_n_steps,
                "probe_timesteps": 20,
                "probe_size": 64,
            },
        },
        {"class_path": "dtr_lab.callbacks.SampleGrid", "init_args": {"every_n_steps": 0}},
    ]


def check_pairs(runs: list[RunSpec], comparisons: list[Comparison], out: Path) -> None:
    """Build both arms of every comparison that pairs weights at their first seed; DTRLabError unless their
    networks start identical (same parameter names, shapes and values)."""
    from dtr_lab.pairing import check_paired, instantiate

    first = {}
    for run in runs:
        first.setdefault(run.arm, run)
    nets = {}
    for c in comparisons:
        if not c.same_weights:
            continue
        for arm in (c.a, c.b):
            if arm not in nets:
                nets[arm] = instantiate(first[arm].args(out))[0].net
        check_paired(nets[c.a], nets[c.b], (c.a, c.b))


def is_done(run: RunSpec, out: Path) -> bool:
    """Finished earlier with the same command and config contents (other --max-steps or --num-samples
    train it again; a config file moved, or changed in its comments only, does not)."""
    marker = run.directory(out) / "done.json"
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text())
        return signature(done["command"], done["configs"]) == signature(run.command(out), config_texts(run))
    except (ValueError, KeyError, yaml.YAMLError):
        return False


def signature(command: list[str], configs: dict[str, str]) -> list:
    """A run's command after the interpreter, each config file's path replaced by its parsed content."""
    return [yaml.safe_load(configs[arg]) if arg in configs else arg for arg in command[1:]]


def config_texts(run: RunSpec) -> dict[str, str]:
    return {str(path): path.read_text() for path in run.configs}


def launch_record(run_dir: Path) -> Path:
    """RUN.json beside the run: the command and config contents it was started with (a cut-off run resumes
    only under the same ones)."""
    return run_dir.with_name(run_dir.name + ".json")


def set_aside(run: RunSpec, out: Path) -> None:
    """Prepare a run that is not done: resume it when it was cut off under the same command and configs;
    otherwise (another command or config, or never recorded) move its folders into RUN.outdated (replacing
    an older one) and start clean. Then record the command it starts with."""
    run_dir = run.directory(out)
    record = launch_record(run_dir)
    started = {"command": run.command(out), "configs": config_texts(run)}
    try:
        before = json.loads(record.read_text())
        same = signature(before["command"], before["configs"]) == signature(
            started["command"], started["configs"]
        )
    except (OSError, ValueError, KeyError, yaml.YAMLError):
        same = False
    parts = [folder for folder, _ in engine.run_parts(run_dir)]
    if parts and not same:
        aside = run_dir.with_name(run_dir.name + ".outdated")
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for folder in parts:
            folder.rename(aside / folder.name)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(started))


def mark_done(run: RunSpec, out: Path, took: engine.Took) -> None:
    """Write the run's done.json (in RUN, its first folder): its command, configs, wall and CPU seconds."""
    done = {"command": run.command(out), "configs": config_texts(run), "seconds": round(took.seconds, 1),
            "cpu_seconds": round(took.cpu_seconds, 1)}
    (run.directory(out) / "done.json").write_text(json.dumps(done))


def executor_for(args: argparse.Namespace, out: Path, minutes: float, prog: str):
    """submitit's executor for --cluster: a job's time limit is 3 × its estimate (at least an hour)."""
    slurm = {k: v for k, v in (("partition", args.slurm_partition), ("gpus_per_node", args.gpus)) if v}
    timeout = max(60, int(3 * minutes) + 1)
    try:
        return engine.make_executor(args.cluster, out / "jobs", args.threads, args.jobs, timeout, slurm)
    except RuntimeError as err:  # submitit finds no SLURM here
        if "srun" not in str(err):
            raise
        fail(prog, f"--cluster {args.cluster}: no `srun` on this machine; start the study on "
             "a machine of the cluster (its login node), or leave --cluster out to train here")


def train(
    runs: list[RunSpec], out: Path, args: argparse.Namespace, minutes: float, prog: str
) -> list[str]:
    """Train the runs as jobs (analysis/engine.py), `args.jobs` at a time here, each with `args.threads`
    CPU threads, a failed one retried `args.retries` times from its last checkpoint; the failures' names.

    Ctrl-C or SIGTERM stops the study: its jobs are cancelled, each fit saves its last.ckpt and stops
    (the study waits until they have); then one line, exit 128 + the first signal's number. A study
    killed outright (SIGKILL) stops its local fits too: each job watches the study's process.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    busy = engine.wait_unlocked([r.directory(out) for r in runs], engine.LOCK_WAIT_S)
    if busy:
        print(
            f"{prog}: error: {busy[0]} is still being trained by an earlier start of this study (its lock "
            f"{engine.lock_path(busy[0]).name} is held): stop that process first, then run this again",
            file=sys.stderr,
        )
        raise SystemExit(2)
    work = []
    for run in runs:
        log = out / "logs" / f"{run.arm}-seed{run.seed}.log"
        name, prepare = f"{run.arm} seed {run.seed}", lambda run=run: set_aside(run, out)
        work.append(engine.Work(name, run.directory(out), run.command(out), log, prepare))
    by_name = {w.name: r for w, r in zip(work, runs, strict=True)}
    stopped: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _: stopped.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        executor = executor_for(args, out, minutes, prog)
        runner = engine.Engine(executor, args.jobs, args.retries, env, REPO, args.cluster == "local")
        failed = runner.run(work, lambda w, took: mark_done(by_name[w.name], out, took), stopped)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopped:
        print(
            f"{prog}: interrupted by {signal.Signals(stopped[0]).name}: the active runs saved their "
            "last.ckpt and stopped; run the same command again to train the unfinished runs (finished ones "
            "are kept, a cut-off one continues from its last.ckpt)",
            file=sys.stderr,
        )
        raise SystemExit(128 + stopped[0])
    return failed


def check_and_train(
    runs: list[RunSpec],
    todo: list[RunSpec],
    comparisons: list[Comparison],
    out: Path,
    args: argparse.Namespace,
    minutes: float,
    prog: str,
) -> list[str]:
    """Refuse a study whose compared arms' networks differ (one line, exit 2), then train `todo`;
    return the failures' names."""
    from dtr_lab.errors import DTRLabError
    from dtr_lab.metrics import load_digits_classifier

    try:
        check_pairs(runs, comparisons, out)
    except DTRLabError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    load_digits_classifier()  # train and cache it once here, not in two runs at the same time
    return train(todo, out, args, minutes, prog)


def run_records(run_dir: Path, name: str) -> pd.DataFrame:
    """One record of a run, its continuations joined as load_runs joins them (dtr_lab.runs.continued): a
    later part's rows replace an earlier part's from the step the later part resumed at. A damaged row is
    left out and said on stderr (records.read_records)."""
    joined = None
    for folder, start in engine.run_parts(run_dir):
        rows, problems = read_records(folder / "records" / name)
        for problem in problems:
            print(f"note: {problem}", file=sys.stderr)
        joined = rows if joined is None else continued(joined, rows, start, record_key(rows))
    return pd.DataFrame() if joined is None or joined.empty else joined


def probe_by_interval(loss_by_t: pd.DataFrame) -> pd.DataFrame:
    """EMA probe loss averaged over each uniform interval's grid timesteps: step, metric probe_k, value."""
    rows = loss_by_t[loss_by_t["metric"] == "probe_ema"].copy()
    rows["k"] = (rows["i"].astype(int) * PROBE_INTERVALS // NUM_TIMESTEPS).astype(int)
    means = rows.groupby(["step", "k"], as_index=False)["value"].mean()
    return means.assign(metric="probe_" + means["k"].astype(str))[["step", "metric", "value"]]


def read_scores(runs: list[RunSpec], out: Path) -> pd.DataFrame:
    """Every finished run's quality and per-interval probe scores at every evaluated step, long format
    (arm, seed, step, metric, value and the run's labels)."""
    frames = []
    for run in runs:
        if not is_done(run, out):
            continue
        parts = []
        quality = run_records(run.directory(out), "quality.csv")
        if not quality.empty:
            parts.append(quality[quality["metric"].isin(QUALITY)][["step", "metric", "value"]])
        loss_by_t = run_records(run.directory(out), "loss_by_t.csv")
        if not loss_by_t.empty:
            parts.append(probe_by_interval(loss_by_t))
        if parts:
            frames.append(pd.concat(parts).assign(arm=run.arm, seed=run.seed, **run.labels))
    if not frames:
        raise SystemExit("study: no finished run has records; see the logs in OUT/logs")
    return pd.concat(frames, ignore_index=True)


def relative(metric: str) -> bool:
    """Probe losses compare as a relative change (%): they span orders of magnitude over t."""
    return metric.startswith("probe_")


def paired_table(scores: pd.DataFrame, comparisons: list[Comparison], metrics: list[str]) -> pd.DataFrame:
    """Per comparison, step and metric: each arm's mean and sd over seeds and the paired difference
    b − a (in % of a for probe losses) with its 95 % t interval over the seeds both arms finished."""
    rows = []
    for c in comparisons:
        a = scores[scores["arm"] == c.a].set_index(["step", "metric", "seed"])["value"]
        b = scores[scores["arm"] == c.b].set_index(["step", "metric", "seed"])["value"]
        both = pd.concat({"a": a, "b": b}, axis=1).dropna()
        for (step, metric), pair in both.groupby(level=["step", "metric"]):
            if metric not in metrics:
                continue
            diff = pair["b"] - pair["a"]
            if relative(metric):
                diff = 100 * diff / pair["a"]
            d = paired_difference(diff.tolist())
            rows.append(
                {
                    "comparison": c.name,
                    "a": c.a,
                    "b": c.b,
                    "step": step,
                    "metric": metric,
                    "pairs": d.n,
                    "a_mean": pair["a"].mean(),
                    "a_sd": pair["a"].std(ddof=1),
                    "b_mean": pair["b"].mean(),
                    "b_sd": pair["b"].std(ddof=1),
                    "diff": d.mean,
                    "ci_low": d.low,
                    "ci_high": d.high,
                    "unit": "%" if relative(metric) else "",
                }
            )
    return pd.DataFrame(rows)


def metric_title(metric: str) -> str:
    if relative(metric):
        k, width = int(metric.removeprefix("probe_")), NUM_TIMESTEPS // PROBE_INTERVALS
        return f"Δ probe t∈[{k * width},{(k + 1) * width})"
    return {"fid": "Δ digits-FID", "accuracy": "Δ accuracy"}.get(metric, f"Δ {metric}")


def markdown(table: pd.DataFrame, metrics: list[str], key: list[str]) -> str:
    """One row per comparison (and `key` values): arms' FID/accuracy 'a → b' (mean ± sd), then every
    metric's paired difference 'mean [low, high]' (probe: % of a); '*' marks an interval excluding 0."""

    def arms(rows: pd.DataFrame, metric: str, digits: int) -> str:
        r = rows[rows["metric"] == metric]
        if r.empty:
            return "–"
        r = r.iloc[0]

        def cell(mean: float, sd: float) -> str:
            return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"

        return f"{cell(r.a_mean, r.a_sd)} → {cell(r.b_mean, r.b_sd)}"

    def diff(rows: pd.DataFrame, metric: str) -> str:
        r = rows[rows["metric"] == metric]
        if r.empty:
            return "–"
        r = r.iloc[0]
        digits = 3 if metric in ("accuracy", "memorised") else 1 if relative(metric) else 2
        if r.pairs < 2:
            return f"{r['diff']:+.{digits}f}{r.unit}"
        star = "*" if r.ci_low > 0 or r.ci_high < 0 else ""
        return f"{r['diff']:+.{digits}f}{r.unit} [{r.ci_low:+.{digits}f}, {r.ci_high:+.{digits}f}]{star}"

    head = ["comparison (b − a)", *key, "pairs", "FID a → b", "accuracy a → b", *map(metric_title, metrics)]
    lines = []
    for values, rows in table.groupby(["comparison", *key], sort=False):
        values = values if isinstance(values, tuple) else (values,)
        cells = [
            *(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values),
            str(int(rows["pairs"].max())),
            arms(rows, "fid", 2),
            arms(rows, "accuracy", 3),
        ]
        lines.append(cells + [diff(rows, m) for m in metrics])
    return text_table(head, lines)


def curves(scores: pd.DataFrame, arm: str, metric: str) -> dict[int, pd.Series]:
    """Per seed, the arm's `metric` against step (value indexed by step; the step-0 row dropped)."""
    rows = scores[(scores["arm"] == arm) & (scores["metric"] == metric) & (scores["step"] > 0)]
    return {int(seed): r.set_index("step")["value"].sort_index() for seed, r in rows.groupby("seed")}


def convergence_table(
    scores: pd.DataFrame, comparisons: list[Comparison], target: float, metric: str = "fid", last: int = 3
) -> pd.DataFrame:
    """Per comparison, over the seeds both arms finished: steps to reach `target` (chosen before looking)
    and the plateau (mean of the last `last` scoring points) of each arm's `metric` curve, and their paired
    differences b − a with 95 % t intervals (dtr_lab.runs.convergence: interpolation, censoring,
    "not reached")."""
    rows = []
    for c in comparisons:
        a, b = curves(scores, c.a, metric), curves(scores, c.b, metric)
        seeds = sorted(set(a) & set(b))
        if not seeds:
            continue
        reach_a = [steps_to_target(a[s].index, a[s].values, target) for s in seeds]
        reach_b = [steps_to_target(b[s].index, b[s].values, target) for s in seeds]
        level_a = [plateau(a[s].index, a[s].values, last) for s in seeds]
        level_b = [plateau(b[s].index, b[s].values, last) for s in seeds]
        steps = paired_steps(reach_a, reach_b)
        level = paired_difference([y - x for x, y in zip(level_a, level_b, strict=True)])
        rows.append(
            {
                "comparison": c.name,
                "a": c.a,
                "b": c.b,
                "metric": metric,
                "target": target,
                "pairs": len(seeds),
                "a_steps": arm_steps(reach_a),
                "b_steps": arm_steps(reach_b),
                "steps_diff": steps.difference.mean,
                "steps_ci_low": steps.difference.low,
                "steps_ci_high": steps.difference.high,
                "steps_censored": steps.censored,
                "steps_neither": steps.neither,
                "steps_entry": steps.entry(),
                "a_plateau": sum(level_a) / len(level_a),
                "b_plateau": sum(level_b) / len(level_b),
                "plateau_diff": level.mean,
                "plateau_ci_low": level.low,
                "plateau_ci_high": level.high,
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Precision:
    """A study's rules, fixed before its runs (docs/repro/core/PLAN.md): differences in % of arm a's mean
    plateau, the equivalence `margin` (%), the target half-width (% of the `reference` arm's plateau) and
    the pairs the plan starts with and the most the adding rule may reach."""

    margin: float
    half_width: float
    reference: str
    planned_pairs: int
    most_pairs: int


def plateaus(scores: pd.DataFrame, arm: str, last: int = 3) -> pd.Series:
    """Each seed's plateau (mean of the last `last` scoring points) of the arm's digits-FID."""
    return pd.Series({s: plateau(c.index, c.values, last) for s, c in curves(scores, arm, "fid").items()})


def verdict_table(scores: pd.DataFrame, comparisons: list[Comparison], rules: Precision) -> pd.DataFrame:
    """Per comparison, over the seeds both arms finished: the paired plateau difference b − a in FID and in
    % of a's mean plateau with its 95 % interval, the per-seed sd, the half-width against the target,
    the pairs that target needs at this sd, the minimum detectable effect (80 % power) at the pairs run,
    the verdict by the rules, and the verdicts of the even and the odd seeds alone (a contradiction: a
    half that excludes 0 on the other side)."""
    reference = plateaus(scores, rules.reference).mean()
    rows = []
    for c in comparisons:
        a, b = plateaus(scores, c.a), plateaus(scores, c.b)
        seeds = sorted(set(a.index) & set(b.index))
        if not seeds:
            continue
        scale = 100 / a[seeds].mean()
        diff = [(b[s] - a[s]) * scale for s in seeds]
        d = paired_difference(diff)
        fid = PairedDifference(d.mean / scale, d.half_width / scale, d.n)
        sd = sd_of(d)
        said = verdict(d, rules.margin, " %")
        halves = [verdict(paired_difference(diff[k::2]), rules.margin, " %") for k in (0, 1)]
        opposite = {"better": "worse", "worse": "better"}.get(said)
        width = 100 * fid.half_width / reference  # % of the reference plateau: the precision target's unit
        sd_reference = 100 * (sd / scale) / reference
        rows.append({
            "comparison": c.name, "a": c.a, "b": c.b, "pairs": d.n,
            "a_plateau": a[seeds].mean(), "b_plateau": b[seeds].mean(),
            "diff": fid.mean, "ci_low": fid.low, "ci_high": fid.high,
            "diff_pct": d.mean, "ci_low_pct": d.low, "ci_high_pct": d.high,
            "sd_pct": sd, "half_width_ref_pct": width, "target_met": width <= rules.half_width,
            "pairs_needed": pairs_needed(sd_reference, rules.half_width) if d.n > 1 else None,
            "detectable_pct": detectable_effect(sd, d.n) if d.n > 1 else float("nan"),
            "verdict": said, "even_seeds": halves[0], "odd_seeds": halves[1],
            "contradiction": opposite is not None and opposite in halves,
        })
    return pd.DataFrame(rows)


def plateau_check(scores: pd.DataFrame, arm: str, last: int = 3) -> dict:
    """Has the arm's digits-FID curve reached its plateau? Over seeds, FID at the last scoring point minus
    FID at the `last`-th from the end, with its 95 % interval: on the plateau when the interval contains 0
    or lies above it (not still falling)."""
    ends = []
    for c in curves(scores, arm, "fid").values():
        c = c.dropna()
        if len(c) >= last:
            ends.append((c.index[-last], c.index[-1], c.iloc[-last], c.iloc[-1]))
    d = paired_difference([e[3] - e[2] for e in ends])
    first, final = (ends[0][0], ends[0][1]) if ends else (0, 0)
    return {
        "arm": arm, "seeds": d.n, "from_step": first, "to_step": final,
        "from_fid": sum(e[2] for e in ends) / max(len(ends), 1),
        "to_fid": sum(e[3] for e in ends) / max(len(ends), 1),
        "change": d.mean, "ci_low": d.low, "ci_high": d.high, "on_plateau": d.n > 1 and not d.high < 0,
    }


def plateau_markdown(checks: list[dict]) -> str:
    head = ["arm", "seeds", "steps", "FID", "change [95 %]", "on its plateau"]
    lines = [[
        c["arm"], str(c["seeds"]), f"{c['from_step']} → {c['to_step']}",
        f"{c['from_fid']:.2f} → {c['to_fid']:.2f}",
        f"{c['change']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]",
        "yes" if c["on_plateau"] else "no: still falling",
    ] for c in checks]
    return text_table(head, lines)


def verdict_markdown(table: pd.DataFrame, rules: Precision) -> str:
    """The verdict table as markdown: every word in it written by the rules, none by hand."""
    head = [
        "comparison (b − a)", "pairs", "plateau a → b", "Δ plateau FID", "Δ % of a", "half-width",
        "pairs for the target", "min. detectable", "verdict", "even / odd seeds",
    ]
    lines = []
    for r in table.itertuples():
        met = "" if r.target_met else f" (> {rules.half_width:g} %: target missed)"
        halves = f"{r.even_seeds} / {r.odd_seeds}" + (" — contradiction" if r.contradiction else "")
        lines.append([
            r.comparison, str(r.pairs), f"{r.a_plateau:.2f} → {r.b_plateau:.2f}",
            f"{r.diff:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
            f"{r.diff_pct:+.1f} % [{r.ci_low_pct:+.1f}, {r.ci_high_pct:+.1f}]",
            f"{r.half_width_ref_pct:.1f} %{met}", str(r.pairs_needed), f"{r.detectable_pct:.1f} %", r.verdict,
            halves,
        ])
    return text_table(head, lines)


def precision_note(table: pd.DataFrame, rules: Precision) -> str:
    """What the adding rule says next, from half-widths only: done, or how many seeds to train."""
    if table.empty:
        return ""
    pairs = int(table["pairs"].min())
    missed = table[~table["target_met"]]
    unit = f"% of the {rules.reference} plateau"
    if pairs < rules.planned_pairs:
        n = rules.planned_pairs
        return f"{pairs} pairs so far; the plan starts at {n} (--seeds {n})."
    if missed.empty:
        return f"Every half-width is ≤ {rules.half_width:g} {unit} at {pairs} pairs: the rule stops here."
    if pairs >= rules.most_pairs:
        return (f"{', '.join(missed['comparison'])}: half-width above {rules.half_width:g} {unit} at the "
                f"maximum of {rules.most_pairs} pairs; the verdicts stand at this precision.")
    return (f"{', '.join(missed['comparison'])}: half-width above {rules.half_width:g} {unit} at {pairs} "
            f"pairs; the rule adds 4 seeds: --seeds {min(pairs + 4, rules.most_pairs)}.")


def arm_steps(reached: list) -> str:
    """One arm's steps to the target over its seeds: the mean over the seeds that reached it, with how many
    did, or "not reached by step N" when none did."""
    steps = [r.step for r in reached if r.reached]
    if not steps:
        return f"not reached by step {max(r.last_step for r in reached)}"
    return f"{sum(steps) / len(steps):.0f} ({len(steps)}/{len(reached)} seeds)"


def convergence_markdown(table: pd.DataFrame) -> str:
    """One row per comparison: each arm's steps to the target, their paired difference (censored pairs
    named), each arm's plateau and its paired difference 'mean [low, high]'; '*' marks an interval
    excluding 0."""
    head = ["comparison (b − a)", "pairs", "target", "steps a → b", "Δ steps", "plateau a → b", "Δ plateau"]
    lines = []
    for r in table.itertuples():
        if r.pairs < 2:
            plateau_diff = f"{r.plateau_diff:+.2f}"
        else:
            star = "*" if r.plateau_ci_low > 0 or r.plateau_ci_high < 0 else ""
            plateau_diff = f"{r.plateau_diff:+.2f} [{r.plateau_ci_low:+.2f}, {r.plateau_ci_high:+.2f}]{star}"
        cells = [
            r.comparison, str(r.pairs), f"{r.metric} ≤ {r.target:g}", f"{r.a_steps} → {r.b_steps}",
            r.steps_entry, f"{r.a_plateau:.2f} → {r.b_plateau:.2f}", plateau_diff,
        ]
        lines.append(cells)
    return text_table(head, lines)


# ----------------------------------------------------------------------------------------- the skeleton
# CPU seconds of one run on these 2-core machines, one thread a run (a quiet machine's wall clock with as
# many runs at a time as cores), measured by benchmarks/study_time.py (docs/repro/study_time.md): an
# unrouted DiT-T/2 step at batch 64, one EMA sample (DDIM 25 with guidance), one probe, a run's start-up.
STEP_S, SAMPLE_S, PROBE_S, START_S = 0.092, 0.038, 1.0, 10.0
# An arm's step and sample cost against the unrouted DiT's, by its routing (the arm name's first part):
# Switch-DiT's gates and experts, 1.35x a step and 1.16x a sample there; DTR's masks: as unrouted (its CPU
# seconds in the powered study equal the unrouted runs').
ARM_COST: dict[str, float] = {"switch": 1.3}


def step_cost(arm: str) -> float:
    """How much an arm's steps and samples cost against the unrouted DiT's (benchmarks/study_time.py)."""
    return ARM_COST.get(arm.split("-")[0], 1.0)


def study_parser(
    doc: str, out: str, num_samples: int, steps_help: str
) -> argparse.ArgumentParser:
    """The options every study takes; a study adds its own."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=REPO / out, help="study folder")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm: pairs (default: the study's)")
    parser.add_argument("--max-steps", type=int, default=None, help=steps_help)
    parser.add_argument("--num-samples", type=int, default=num_samples, help="samples per scoring point")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument(
        "--retries", type=int, default=1, help="attempts after a run fails (from its last.ckpt)"
    )
    parser.add_argument(
        "--cluster", choices=engine.CLUSTERS, default="local",
        help="where the runs go: this machine, or SLURM through submitit (the same command on a cluster)",
    )
    parser.add_argument("--slurm-partition", default=None, help="SLURM partition (--cluster slurm)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per run (--cluster slurm)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and the commands, train nothing"
    )
    parser.add_argument("--no-train", action="store_true", help="only tabulate the runs already finished")
    return parser


def check_args(args: argparse.Namespace, prog: str, seeds: int) -> None:
    """Refuse, before anything starts or is written, options no study can run with: one line, exit 2.
    `seeds`: the study's default number of seeds, where --seeds is not given."""
    args.seeds = seeds if args.seeds is None else args.seeds
    bad = [
        (args.seeds < 1, f"--seeds {args.seeds}: a study needs at least 1 seed (2 for an interval)"),
        (args.jobs < 1, f"--jobs {args.jobs}: at least 1 run at a time"),
        (args.threads < 1, f"--threads {args.threads}: at least 1 thread a run"),
        (args.retries < 0, f"--retries {args.retries}: 0 or more"),
        (args.gpus < 0, f"--gpus {args.gpus}: 0 or more"),
        (args.max_steps is not None and args.max_steps < 1,
         f"--max-steps {args.max_steps}: at least 1 (leave it out for the base config's length)"),
    ]
    for wrong, message in bad:
        if wrong:
            fail(prog, message)
    check_num_samples(args.num_samples, prog)
    out = args.out
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                fail(prog, f"--out {out}: {folder} is a file, not a folder; name a folder")
            if not os.access(folder, os.W_OK | os.X_OK) and not args.dry_run:
                fail(prog, f"--out {out}: {folder} is not writable (read-only or forbidden); name another")
            break


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_study(
    prog: str,
    args: argparse.Namespace,
    runs: list[RunSpec],
    comparisons: list[Comparison],
    seconds: Callable[[RunSpec], float],
    report: Callable[[pd.DataFrame, Path], tuple[str, list[Path]]],
    what: str,
    results: str = "",
) -> int:
    """Train what is not done (after the pairing check), read every finished run's scores, write
    scores.csv and table.md into OUT/`results` (`report` writes its other files there, and returns the
    table's text and their paths) and say what was written; the exit status (1 if a run failed)."""
    started = time.time()
    out = args.out.resolve()
    todo = [r for r in runs if not is_done(r, out)]
    estimate = sum(seconds(r) for r in todo) / args.jobs / 60
    print(
        f"{prog}: {len(runs)} runs ({len(runs) - len(todo)} already done), {what}; "
        f"{args.jobs} at a time ({args.cluster}); estimate {estimate:.0f} min"
    )
    if args.dry_run:
        if args.cluster != "local":
            print(engine.sbatch_text(executor_for(args, out, max(map(seconds, runs)) / 60, prog)))
        for run in todo:
            print(" ".join(run.command(out)))
        return 0
    failed = []
    if not args.no_train and todo:
        try:
            failed = check_and_train(
                runs, todo, comparisons, out, args, max(map(seconds, todo)) / 60, prog
            )
        except OSError as err:  # the study folder itself: full, read-only, vanished
            reason = err.strerror or err
            fail(prog, f"cannot write the study folder {out}: {reason}; free space or name another --out")
    scores = read_scores(runs, out)
    folder = out / results
    folder.mkdir(parents=True, exist_ok=True)
    scores.to_csv(folder / "scores.csv", index=False)
    text, written = report(scores, folder)
    (folder / "table.md").write_text(text)
    print()
    print(text)
    for path in [folder / "table.md", folder / "scores.csv", *written]:
        print(f"wrote {path}")
    if failed:
        print(f"{prog}: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    print(f"{prog}: wall time {(time.time() - started) / 60:.1f} min")
    return 1 if failed else 0
