"""Cost of the MTL analysis callbacks on the digits config, measured side by side in one process.

One `fit` of the digits DTR config (experiments/digits/base.yaml + routing/dtr.yaml) carries every analysis
callback, each wrapped in a timer, with its measurement cadence shortened so that many measurements
interleave with ordinary training steps. Reported (medians):

1. the training step alone (time between batch starts minus the time spent in callbacks);
2. one measurement of each callback, in training steps, including a GradientConflict at K=8
   (target ≤ 2 steps);
3. the amortised overhead of each callback and of all together at the cadences the shipped config
   sets, over its 1500 steps (target ≤ 5 %).

    python benchmarks/callback_overhead.py [--steps 200] [--every 10] [--threads 1] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from timing import add_tiny

from dtr_lab.callbacks import GradientConflict, RoutingMaps, TaskAffinity, TimestepLoss
from dtr_lab.cli import build_cli
from dtr_lab.data import ImageDataModule
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl.intervals import Intervals

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "experiments/digits/base.yaml", ROOT / "experiments/routing/dtr.yaml"]
HOOKS = ("setup", "on_fit_start", "on_train_batch_start", "on_train_batch_end", "on_train_end")
ONCE = ("setup", "on_fit_start", "on_train_end")  # probes, records, routing maps; labelled figures


class Timed(L.Callback):
    """Forwards the analysis hooks to a callback and records (step, hook, seconds) of each call."""

    def __init__(self, inner: L.Callback, name: str) -> None:
        self.inner, self.name = inner, name
        self.calls: list[tuple[int, str, float]] = []

    def _timed(self, hook: str, trainer: L.Trainer, *args, **kwargs) -> None:
        start = time.perf_counter()
        getattr(self.inner, hook)(trainer, *args, **kwargs)
        self.calls.append((trainer.global_step, hook, time.perf_counter() - start))


for _hook in HOOKS:
    setattr(Timed, _hook, lambda self, trainer, *args, _h=_hook, **kw: self._timed(_h, trainer, *args, **kw))


class StepClock(L.Callback):
    """Time stamps of every batch start (runs first, so callbacks' time falls inside the interval)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append((trainer.global_step, time.perf_counter()))


def digits_config(overrides: list[str]) -> tuple[DiffusionModule, ImageDataModule, dict[type, L.Callback]]:
    """The shipped digits DTR model, data and analysis callbacks (for their default cadences)."""
    args = [a for c in CONFIGS for a in ("--config", str(c))] + overrides
    cli = build_cli(args, run=False)
    shipped = {
        type(cb): cb
        for cb in cli.trainer.callbacks
        if isinstance(cb, (TimestepLoss, GradientConflict, TaskAffinity))
    }
    return cli.model, cli.datamodule, shipped


def events(cadence: int, steps: int) -> int:
    """Measurements in a run of `steps` steps: step 0, every multiple of the cadence, the last if one."""
    return steps // cadence + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps of the measuring run")
    parser.add_argument("--every", type=int, default=10, help="measurement cadence during the benchmark")
    parser.add_argument("--run-steps", type=int, default=1500, help="steps of the run to amortise over")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 avoids OpenMP stalls on a busy CPU",
    )
    add_tiny(parser)
    opts = parser.parse_args()
    sys.argv = sys.argv[:1]  # the options above are not LightningCLI's
    if opts.tiny:
        opts.steps, opts.every, opts.threads = 2, 1, 1
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    module, data, shipped = digits_config(["--data.init_args.batch_size", "8"] if opts.tiny else [])
    every = opts.every
    cadence = {
        "TimestepLoss probe": shipped[TimestepLoss].probe_every_n_steps,
        "GradientConflict K=5": shipped[GradientConflict].every_n_steps,
        "TaskAffinity K=5": shipped[TaskAffinity].every_n_steps,
    }
    timed = {
        "TimestepLoss": Timed(
            TimestepLoss(every_n_steps=shipped[TimestepLoss].every_n_steps, probe_every_n_steps=every),
            "TimestepLoss",
        ),
        "GradientConflict K=5": Timed(
            GradientConflict(every_n_steps=every, intervals=shipped[GradientConflict].intervals), "conflict5"
        ),
        "TaskAffinity K=5": Timed(
            TaskAffinity(every_n_steps=every, intervals=shipped[TaskAffinity].intervals), "tag"
        ),
        # after TaskAffinity, so that one reuses the K=5 gradients as at the shipped cadences
        "GradientConflict K=8": Timed(
            GradientConflict(every_n_steps=every, intervals=Intervals(num_intervals=8)), "conflict8"
        ),
        "RoutingMaps": Timed(RoutingMaps(), "routing"),
    }
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=opts.steps + 1,  # not a multiple of the cadence: on_train_end only draws figures
            accelerator="cpu",
            logger=TensorBoardLogger(tmp, name="bench"),
            callbacks=[clock, *timed.values()],
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, data)

    # from batch start s to the next: the timed hooks at start (step s) and at end (step s + 1) are excluded
    steps = []
    for (s0, a), (_, b) in zip(clock.stamps[1:], clock.stamps[2:], strict=False):  # the first step warms up
        spent = sum(
            sec
            for t in timed.values()
            for st, h, sec in t.calls
            if (h == "on_train_batch_start" and st == s0) or (h == "on_train_batch_end" and st == s0 + 1)
        )
        steps.append(b - a - spent)
    step = statistics.median(steps)

    def event_cost(name: str) -> float:
        costs = [
            sec
            for st, h, sec in timed[name].calls
            if h == "on_train_batch_start" and st % every == 0 and st > 0
        ]
        print(f"  {name}: {' '.join(f'{c / step:.2f}' for c in costs)} steps")
        return statistics.median(costs)

    print(
        f"digits DTR config, {opts.steps} steps, measurements every {every} steps, torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"training step alone: median {step * 1000:.1f} ms over {len(steps)} steps")
    print()
    print("each measurement, in training steps:")
    rows = [
        ("GradientConflict K=8", event_cost("GradientConflict K=8"), None),
        ("GradientConflict K=5", event_cost("GradientConflict K=5"), cadence["GradientConflict K=5"]),
        ("TaskAffinity K=5 *", event_cost("TaskAffinity K=5"), cadence["TaskAffinity K=5"]),
        ("TimestepLoss probe", event_cost("TimestepLoss"), cadence["TimestepLoss probe"]),
    ]
    print()
    print(f"{'callback':<24}{'one measurement':>18}{'cadence':>10}{'amortised':>12}")
    total = 0.0
    for name, cost, c in rows:
        if c is None:
            print(f"{name:<24}{cost / step:>12.2f} steps{'':>10}{'(target ≤ 2 steps)':>12}")
            continue
        share = cost * events(c, opts.run_steps) / (step * opts.run_steps)
        total += share
        print(f"{name:<24}{cost / step:>12.2f} steps{c:>10}{share * 100:>11.2f}%")
    per_step = [sec for st, h, sec in timed["TimestepLoss"].calls if h == "on_train_batch_end"]
    binned = statistics.mean(per_step) / step  # every step pays it: mean, not median
    total += binned
    print(f"{'TimestepLoss binned':<24}{binned:>12.4f} steps{'1':>10}{binned * 100:>11.2f}%")
    once = sum(sec for t in timed.values() for _, h, sec in t.calls if h in ONCE) / step
    total += once / opts.run_steps
    print(
        f"{'start-up, end figures':<24}{once:>12.2f} steps{'once':>10}{once / opts.run_steps * 100:>11.2f}%"
    )
    print(f"{'all together':<24}{'':>18}{'':>10}{total * 100:>11.2f}%   (target ≤ 5 %)")
    print("* reuses GradientConflict's interval gradients (same probe, cadence a multiple of its own)")


if __name__ == "__main__":
    main()
