"""Cost of the fault-proof checkpoint path on a digits fit (target ≤ 2 % of fit time).

Two variants of the same digits DTR fit, alternated in one process, medians reported:
- dtr_lab: the CLI's RunCheckpoint (same-directory temporary file, fsync, rename; the final step saved
  before end-of-fit analyses; the divergence guard);
- lightning: a plain ModelCheckpoint with the same cadence writing through Lightning's TorchCheckpointIO.

Checkpoints go to a directory on the run disk (not tmpfs, where fsync costs nothing). The checkpoint
cadence is denser than the shipped config's (every 100 steps instead of 500) so the difference is
easier to see.

    python benchmarks/checkpoint_overhead.py [--steps 300] [--every 100] [--repeats 3] [--threads 1] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from timing import add_tiny

from dtr_lab.cli import build_cli
from dtr_lab.storage.checkpointing import RunCheckpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "experiments/digits/base.yaml", ROOT / "experiments/routing/dtr.yaml"]


def timed_fit(
    variant: str, steps: int, every: int, save_dir: Path, overrides: list[str]
) -> tuple[float, list[float]]:
    """Seconds of trainer.fit and of each checkpoint write, for one variant."""
    args = [a for c in CONFIGS for a in ("--config", str(c))] + overrides
    args += ["--trainer.max_steps", str(steps), "--checkpoint.every_n_train_steps", str(every)]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(save_dir)]
    cli = build_cli(args, run=False)
    trainer = cli.trainer
    if variant == "lightning":
        i, own = next((i, c) for i, c in enumerate(trainer.callbacks) if isinstance(c, RunCheckpoint))
        trainer.callbacks[i] = ModelCheckpoint(every_n_train_steps=own._every_n_train_steps, save_last=True)
    writes: list[float] = []
    original = trainer.strategy.save_checkpoint

    def save_checkpoint(*a, **kw) -> None:
        start = time.perf_counter()
        original(*a, **kw)
        writes.append(time.perf_counter() - start)

    trainer.strategy.save_checkpoint = save_checkpoint
    start = time.perf_counter()
    trainer.fit(cli.model, cli.datamodule)
    return time.perf_counter() - start, writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    add_tiny(parser)
    args = parser.parse_args()
    # tiny: two writes a fit, a small batch, no analyses (the shipped callbacks are not what is timed)
    overrides = ["--data.init_args.batch_size", "8", "--trainer.callbacks", "[]"] if args.tiny else []
    if args.tiny:
        args.steps, args.every, args.repeats = 2, 1, 1
    torch.set_num_threads(args.threads)
    fits: dict[str, list[float]] = {"dtr_lab": [], "lightning": []}
    writes: dict[str, list[float]] = {"dtr_lab": [], "lightning": []}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for r in range(args.repeats):
            for variant in ("dtr_lab", "lightning") if r % 2 == 0 else ("lightning", "dtr_lab"):
                save_dir = Path(tmp) / f"{variant}{r}"
                seconds, saves = timed_fit(variant, args.steps, args.every, save_dir, overrides)
                fits[variant].append(seconds)
                writes[variant].extend(saves)
                print(
                    f"{variant:9s} fit {seconds:6.1f} s, {len(saves)} writes, "
                    f"median {statistics.median(saves):.3f} s"
                )
    fit = {v: statistics.median(t) for v, t in fits.items()}
    write = {v: statistics.median(t) for v, t in writes.items()}
    print(
        f"\nmedian fit: dtr_lab {fit['dtr_lab']:.1f} s, lightning {fit['lightning']:.1f} s, "
        f"ratio {fit['dtr_lab'] / fit['lightning']:.3f}"
    )
    print(
        f"median write: dtr_lab {write['dtr_lab'] * 1e3:.1f} ms, "
        f"lightning {write['lightning'] * 1e3:.1f} ms; "
        f"writes per fit {len(writes['dtr_lab']) / len(fits['dtr_lab']):.0f} vs "
        f"{len(writes['lightning']) / len(fits['lightning']):.0f}"
    )
    extra = sum(writes["dtr_lab"]) / len(fits["dtr_lab"]) - sum(writes["lightning"]) / len(fits["lightning"])
    print(
        f"checkpoint time per fit, dtr_lab minus lightning: {extra:.2f} s "
        f"= {100 * extra / fit['lightning']:.2f} % of the fit"
    )


if __name__ == "__main__":
    main()
