"""The convergence study of the DTR paper's claims on the 8×8 digits: paired seed curves to a plateau.

    python analysis/reproduce.py --out runs/repro                    # the powered core (make reproduce)
    python analysis/reproduce.py --out runs/repro --long             # R-TR and the experts, 3000 steps
    python analysis/reproduce.py --out runs/repro --complementarity  # Min-SNR / ANT-UW ± DTR
    python analysis/reproduce.py --out runs/repro --no-train         # tables from the runs finished so far
    python analysis/reproduce.py --out /tmp/smoke --max-steps 12 --seeds 2 --arms vanilla-uniform dtr-uniform

Arms (experiments/repro/base.yaml's protocol, chosen by the pilot in docs/studies.md):
- core: unrouted, DTR and Switch-DiT with uniform weights, RULES.planned_pairs seeds: the powered
  comparisons, sized and judged by the rules fixed before the runs (docs/repro/core/PLAN.md);
- --long: R-TR (random tables) and the sharing spectrum, K = 4 independent experts per interval, each
  trained only on its interval's timesteps (the no-sharing end), width-matched to one unrouted network's
  parameters and at equal width, beside unrouted and DTR, LONG_STEPS steps (they were still falling at 1500);
- --complementarity: unrouted / DTR with Min-SNR and with ANT-UW (K = 8, as in DTR's scripts).
Arms of one seed see the same data order, timesteps and noise; routed arms also start from the unrouted
arm's weights (analysis/study.py checks it before training), the experts are paired by seed only.

Every run is scored every 250 steps: digits-FID, class accuracy and memorisation of N EMA samples (DDIM
25, guidance 1.5, the same x_T for every arm; the FID's reference statistics are the training split, all
1,797 images) and the EMA probe loss per fifth of t. Per comparison b − a: the verdict on the plateau
(mean of the last 3 points) by RULES, with its interval, half-width, the pairs the target needs and the
minimum detectable effect; per scoring point the paired difference with its 95 % t interval; the steps to
reach TARGET_FID (fixed from the pilot before the study). Writes, into OUT/core, OUT/long or
OUT/complementarity (OUT with --arms), table.md, verdicts.csv, paired.csv, convergence.csv, scores.csv and
curves.png; the runs live in OUT/runs (OUT/long/runs). The runs are jobs of submitit (analysis/engine.py):
finished runs with an identical config are reused, a failed or cut-off one continues from its last.ckpt.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window

import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from study import (  # noqa: E402
    PROBE_S,
    SAMPLE_S,
    START_S,
    STEP_S,
    Comparison,
    Precision,
    RunSpec,
    check_args,
    convergence_markdown,
    convergence_table,
    curves,
    markdown,
    paired_table,
    plateau_check,
    plateau_markdown,
    precision_note,
    run_study,
    step_cost,
    study_callbacks,
    study_parser,
    verdict_markdown,
    verdict_table,
    write_yaml,
)

from dtr_lab.runs.convergence import plateau  # noqa: E402
from dtr_lab.runs.markdown import text_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROG = Path(__file__).name
BASE = REPO / "experiments/repro/base.yaml"
CONFIGS = REPO / "experiments"


@dataclass(frozen=True)
class Arm:
    """One arm of the study: its routing and weighting labels, the config files after the base, extra
    overrides, and a cap on its seeds (R-TR)."""

    routing: str
    weighting: str
    configs: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    max_seeds: int | None = None

    @property
    def name(self) -> str:
        return f"{self.routing}-{self.weighting}"


UNIFORM, MIN_SNR, UW = "weighting/uniform.yaml", "weighting/min_snr.yaml", "repro/uw.yaml"
EXPERTS = ("routing/vanilla.yaml", UNIFORM, "sharing/experts.yaml", "repro/experts.yaml")
ARMS = {
    arm.name: arm
    for arm in (
        Arm("vanilla", "uniform", ("routing/vanilla.yaml", UNIFORM)),
        Arm("dtr", "uniform", ("routing/dtr.yaml", UNIFORM)),
        Arm("switch", "uniform", ("routing/switch.yaml", UNIFORM)),
        Arm("rtr", "uniform", ("routing/rtr.yaml", UNIFORM), max_seeds=3),
        Arm("experts", "uniform", EXPERTS),
        Arm("experts_wide", "uniform", EXPERTS, ("--model.net.init_args.width_matched", "false")),
        Arm("vanilla", "min_snr", ("routing/vanilla.yaml", MIN_SNR)),
        Arm("dtr", "min_snr", ("routing/dtr.yaml", MIN_SNR)),
        Arm("vanilla", "uw", ("routing/vanilla.yaml", UW)),
        Arm("dtr", "uw", ("routing/dtr.yaml", UW)),
    )
}
STUDIES = {  # core: the powered comparisons (RULES); long: R-TR and the sharing spectrum to their plateau
    "core": ["vanilla-uniform", "dtr-uniform", "switch-uniform"],
    "complementarity": ["vanilla-min_snr", "dtr-min_snr", "vanilla-uw", "dtr-uw"],
    # the arms still falling at step 1500, trained to LONG_STEPS beside unrouted and DTR (PLAN.md)
    "long": ["vanilla-uniform", "dtr-uniform", "rtr-uniform", "experts-uniform", "experts_wide-uniform"],
}
COMPARISONS = [
    Comparison("DTR − vanilla", "vanilla-uniform", "dtr-uniform"),
    Comparison("Switch − vanilla", "vanilla-uniform", "switch-uniform"),
    Comparison("Switch − DTR", "dtr-uniform", "switch-uniform"),
    Comparison("R-TR − vanilla", "vanilla-uniform", "rtr-uniform"),
    Comparison("DTR − R-TR", "rtr-uniform", "dtr-uniform"),
    Comparison("experts − vanilla", "vanilla-uniform", "experts-uniform", same_weights=False),
    Comparison("experts − DTR", "dtr-uniform", "experts-uniform", same_weights=False),
    Comparison("wide experts − vanilla", "vanilla-uniform", "experts_wide-uniform", same_weights=False),
    Comparison("DTR+MinSNR − MinSNR", "vanilla-min_snr", "dtr-min_snr"),
    Comparison("DTR+UW − UW", "vanilla-uw", "dtr-uw"),
]
METRICS = ["fid", "accuracy", "memorised", *(f"probe_{k}" for k in range(5))]
POINTS = 6  # scoring points, evenly spaced; the plateau is the mean of the last 3
LONG_STEPS, LONG_POINTS, LONG_SEEDS = 3000, 12, 5  # --long: every 250 steps as the core study, 5 seeds
NUM_SAMPLES = 600  # FID is biased upwards at small N: scores compare only at equal N (README)
# digits-FID ≤ 50, fixed from the pilot before the study (README, "The pilot"): the unrouted model falls
# from ≈ 110 at step 600 to its plateau (≈ 30 at N = 400) by step 900, so 50 is crossed in the steepest
# stretch of its curve, where an arm that learns faster gets there first
TARGET_FID = 50.0
# the powered study's rules, fixed before its runs (docs/repro/core/PLAN.md): verdicts on the plateau in % of
# arm a, equivalence within ±10 %, a 95 % half-width ≤ 6 % of the unrouted plateau: 24 pairs, at most 32
RULES = Precision(margin=10.0, half_width=6.0, reference="vanilla-uniform", planned_pairs=24, most_pairs=32)
POWERED = ("DTR − vanilla", "Switch − vanilla", "Switch − DTR")  # the comparisons the rules size


def spec(arm: Arm, seed: int, study: Path) -> RunSpec:
    configs = [BASE, *(CONFIGS / c for c in arm.configs), study]
    labels = {"routing": arm.routing, "weighting": arm.weighting}
    return RunSpec(arm.name, seed, configs, list(arm.overrides), labels)


def plan(arms: list[str], seeds: int, study: Path, capped: bool = True) -> list[RunSpec]:
    """Every run, seed-major so a study cut short still has whole seeds of every arm (`capped`: an arm's
    max_seeds applies)."""
    cap = {a: (ARMS[a].max_seeds if capped else None) or seeds for a in arms}
    return [spec(ARMS[a], s, study) for s in range(seeds) for a in arms if s < cap[a]]


def write_study_config(out: Path, max_steps: int, num_samples: int, points: int = POINTS) -> Path:
    """OUT/study.yaml: max_steps and the study's callbacks (they replace the base config's list)."""
    every = max(1, max_steps // points)
    config = {"trainer": {"max_steps": max_steps, "callbacks": study_callbacks(every, num_samples)}}
    if max_steps < yaml.safe_load(BASE.read_text())["checkpoint"]["every_n_train_steps"]:
        config["checkpoint"] = {"every_n_train_steps": max_steps}
    return write_yaml(out / "study.yaml", config)


def arm_table(scores: pd.DataFrame) -> str:
    """Each arm at its last scoring point: digits-FID, accuracy and memorised share, mean ± sd over seeds,
    and the plateau FID (mean of the last 3 points)."""
    head = ["arm", "seeds", "steps", "digits-FID ↓", "plateau FID ↓", "accuracy ↑", "memorised"]
    rows = []
    for arm, runs in scores.groupby("arm", sort=False):
        last = runs[runs["step"] == runs["step"].max()]
        fid, acc, mem = (last[last["metric"] == m]["value"] for m in ("fid", "accuracy", "memorised"))
        level = pd.Series([plateau(c.index, c.values) for c in curves(scores, arm, "fid").values()])
        rows.append([
            arm, str(len(fid)), str(int(runs["step"].max())), f"{fid.mean():.2f} ± {fid.std():.2f}",
            f"{level.mean():.2f} ± {level.std():.2f}", f"{acc.mean():.3f} ± {acc.std():.3f}",
            f"{mem.mean():.4f} ± {mem.std():.4f}",
        ])
    return text_table(head, rows)


def report(
    scores: pd.DataFrame, out: Path, comparisons: list[Comparison], target: float, long: bool = False
) -> tuple[str, list[Path]]:
    """table.md's text; paired.csv, convergence.csv and curves.png beside it. The core study: the powered
    comparisons' verdicts by RULES. --long: whether each arm reached its plateau, and the verdicts of every
    comparison, "not converged within the budget" where an arm is still falling."""
    from dtr_lab.plots import convergence_curves

    arms = list(dict.fromkeys(scores["arm"]))
    checks = [plateau_check(scores, a) for a in arms] if long else []
    powered = comparisons if long else [c for c in comparisons if c.name in POWERED]
    verdicts = verdict_table(scores, powered, RULES) if RULES.reference in arms else None
    if long and verdicts is not None and not verdicts.empty:
        falling = {c["arm"] for c in checks if not c["on_plateau"]}
        for i, row in verdicts.iterrows():
            still = [arm for arm in (row["a"], row["b"]) if arm in falling]
            if still:
                falling_arms = ", ".join(still)
                verdicts.loc[i, "verdict"] = f"not converged within the budget ({falling_arms} still falling)"
    paired = paired_table(scores, comparisons, METRICS)
    paired.to_csv(out / "paired.csv", index=False)
    convergence = convergence_table(scores, comparisons, target)
    convergence.to_csv(out / "convergence.csv", index=False)
    convergence_curves(scores, paired, target=target).savefig(out / "curves.png")
    text = ""
    if verdicts is not None and not verdicts.empty:
        verdicts.to_csv(out / "verdicts.csv", index=False)
        note = "" if long else precision_note(verdicts, RULES) + "\n"
        text = (
            "## Verdicts on the plateau, by the rules fixed before the runs (docs/repro/core/PLAN.md)\n\n"
            + verdict_markdown(verdicts, RULES) + "\n" + note + "\n"
        )
    if checks:
        text += "## Has each arm reached its plateau?\n\n" + plateau_markdown(checks) + "\n"
    text += "## Arms at the last scoring point\n\n" + arm_table(scores)
    if comparisons:  # a study of one arm (benchmarks/study_time.py) has nothing to pair
        text += (
            f"\n## Convergence: steps to digits-FID ≤ {target:g}, and the plateau\n\n"
            + convergence_markdown(convergence)
            + "\n## Paired differences at each scoring point\n\n" + markdown(paired, METRICS, key=["step"])
        )
    return text, [out / "paired.csv", out / "convergence.csv", out / "curves.png"]


def main(argv: list[str] | None = None) -> int:
    steps_help = "training steps (default: the base config's)"
    parser = study_parser(__doc__, "runs/repro", NUM_SAMPLES, steps_help)
    parser.add_argument("--target", type=float, default=TARGET_FID, help="digits-FID of steps-to-target")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--complementarity", action="store_true", help="Min-SNR and ANT-UW with and without DTR"
    )
    group.add_argument(
        "--long", action="store_true",
        help=f"R-TR and the experts to their plateau: {LONG_STEPS} steps beside unrouted and DTR (OUT/long)",
    )
    group.add_argument("--arms", nargs="+", choices=list(ARMS), help="these arms only")
    args = parser.parse_args(argv)
    check_args(args, PROG, LONG_SEEDS if args.long else 5 if args.complementarity else RULES.planned_pairs)
    points, base_steps = POINTS, yaml.safe_load(BASE.read_text())["trainer"]["max_steps"]
    if args.long:  # its own folder: its runs are longer than the core study's of the same arm and seed
        args.out, points, base_steps = args.out / "long", LONG_POINTS, LONG_STEPS
    max_steps = args.max_steps if args.max_steps is not None else base_steps
    study = write_study_config(args.out.resolve(), max_steps, args.num_samples, points)
    study_name = "complementarity" if args.complementarity else "long" if args.long else "core"
    arms = args.arms or STUDIES[study_name]
    comparisons = [c for c in COMPARISONS if c.a in arms and c.b in arms]

    def per_run(run: RunSpec) -> float:
        cost = step_cost(run.arm)
        return max_steps * STEP_S * cost + points * (args.num_samples * SAMPLE_S * cost + PROBE_S) + START_S

    return run_study(
        PROG,
        args,
        plan(arms, args.seeds, study, capped=not args.long),
        comparisons,
        per_run,
        lambda scores, out: report(scores, out, comparisons, args.target, args.long),
        f"{max_steps} steps each, scored {points} times",
        "" if args.arms or args.long else study_name,  # core and complementarity share runs, not tables
    )


if __name__ == "__main__":
    sys.exit(main())
