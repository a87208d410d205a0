"""Shared helpers for the benchmarks: a seeded DiT module, per-step wall times inside a real Lightning fit,
the `--tiny` option every benchmark takes."""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import Routing


def add_tiny(parser: argparse.ArgumentParser) -> None:
    """`--tiny`: the run tests/test_benchmarks.py makes of every benchmark, so that an API change cannot
    break one unseen. Seconds long, the smallest model, one round of one or two steps: its numbers mean
    nothing."""
    parser.add_argument(
        "--tiny", action="store_true", help="a seconds-long smoke run (the suite's); its numbers mean nothing"
    )


def dit_module(
    routing: Routing, size: str, image_size: int, in_channels: int, num_classes: int
) -> DiffusionModule:
    """A DiffusionModule around a class-conditional DiT, built after manual_seed(0): every variant of a
    benchmark starts from the same weights."""

    def net(*args):
        return DiT(*args, size=size)

    torch.manual_seed(0)
    return DiffusionModule(
        net=net, routing=routing, image_size=image_size, in_channels=in_channels, num_classes=num_classes
    )


class StepTimer(L.Callback):
    """Times between consecutive batch starts: everything Lightning does per step is inside."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args) -> None:
        self.stamps.append(time.perf_counter())


def lightning_step_times(
    module: L.LightningModule, loader: DataLoader, steps: int, callbacks: list[L.Callback] | None = None
) -> list[float]:
    """Per-step seconds of `steps` training steps after one warm-up step (no logger, no validation)."""
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps + 1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, *(callbacks or [])],
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    return [b - a for a, b in zip(timer.stamps[1:], timer.stamps[2:], strict=False)]
