"""What a study's run costs on this machine, in the terms of the studies' time estimate (analysis/study.py:
STEP_S, SAMPLE_S, PROBE_S, START_S), measured on the real thing: `analysis/reproduce.py` itself, one seed of
each arm, at three sizes. Costs are the fits' CPU seconds (done.json), which other load on a shared machine
stretches far less than the wall clock; with one thread a run and as many runs as cores, a quiet machine's
wall clock is close to them.

    run(S steps, N samples) = S · step + P · (N · sample + probe) + start     (P = 6 scoring points)

Steps come from the difference of S = A and B at the same N, samples from N = A and C at the same S; the
rest is start-up and probes. Then the estimate with the studies' constants is set beside each measured run.

    OMP_NUM_THREADS=1 python benchmarks/study_time.py [--arms vanilla-uniform dtr-uniform switch-uniform]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "analysis"))
from study import PROBE_S, SAMPLE_S, START_S, STEP_S, step_cost  # noqa: E402

POINTS = 6


def measure(out: Path, arm: str, steps: int, samples: int) -> dict:
    """One seed of `arm` through reproduce.py: its done.json (seconds, cpu_seconds)."""
    command = [sys.executable, str(REPO / "analysis" / "reproduce.py"), "--out", str(out), "--seeds", "1",
               "--arms", arm, "--max-steps", str(steps), "--num-samples", str(samples), "--jobs", "1",
               "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        sys.exit(f"study_time.py: {' '.join(command[1:])} failed:\n{tail}")
    return json.loads((out / "runs" / arm / "seed0" / "done.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=["vanilla-uniform", "dtr-uniform", "switch-uniform"])
    parser.add_argument("--steps", type=int, nargs=2, default=[150, 450], help="S of runs A and B")
    parser.add_argument("--samples", type=int, nargs=2, default=[100, 400], help="N of runs A and C")
    parser.add_argument("--tiny", action="store_true", help="one run of 6 steps, one arm: the script runs")
    args = parser.parse_args()
    (s_a, s_b), (n_a, n_c) = args.steps, args.samples
    if args.tiny:
        with tempfile.TemporaryDirectory() as tmp:
            cpu = measure(Path(tmp), args.arms[0], POINTS, n_a)["cpu_seconds"]
        print(f"{args.arms[0]}: {POINTS} steps, {n_a} samples: {cpu:.1f} CPU s")
        return
    print(f"CPU seconds of one run, {POINTS} scoring points; A = ({s_a} steps, {n_a} samples), "
          f"B = ({s_b}, {n_a}), C = ({s_a}, {n_c})\n")
    print("| arm | A | B | C | step | sample | start + probes | step / STEP_S | sample / SAMPLE_S "
          "| estimate / run (A, B, C) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            runs = [measure(Path(tmp) / f"{arm}-{i}", arm, s, n)
                    for i, (s, n) in enumerate([(s_a, n_a), (s_b, n_a), (s_a, n_c)])]
            a, b, c = (r["cpu_seconds"] for r in runs)
            step = (b - a) / (s_b - s_a)
            sample = (c - a) / (POINTS * (n_c - n_a))
            rest = a - s_a * step - POINTS * n_a * sample
            cost = step_cost(arm)
            estimates = [s * STEP_S * cost + POINTS * (n * SAMPLE_S * cost + PROBE_S) + START_S
                         for s, n in [(s_a, n_a), (s_b, n_a), (s_a, n_c)]]
            ratio = [e / m for e, m in zip(estimates, (a, b, c), strict=True)]
            ratios += ratio
            print(f"| {arm} | {a:.1f} | {b:.1f} | {c:.1f} | {step:.4f} | {sample:.4f} | {rest:.1f} | "
                  f"{step / (STEP_S * cost):.2f} | {sample / (SAMPLE_S * cost):.2f} | "
                  f"{', '.join(f'{r:.2f}' for r in ratio)} |")
    print(f"estimate / measured: median {statistics.median(ratios):.2f}, "
          f"range {min(ratios):.2f}-{max(ratios):.2f} (calibrated: within 0.75-1.25)")


if __name__ == "__main__":
    main()
