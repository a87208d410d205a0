"""A run with every analysis on trains bit-identically to the same run with them off; DDP doesn't deadlock."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from dtr_lab.callbacks import GradientConflict, RoutingMaps, TaskAffinity, TimestepLoss
from dtr_lab.data import DigitsDataModule
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.routing import DTRRouting

ROOT = Path(__file__).resolve().parents[1]


class DroppedDiT(DiT):
    """A DiT with output dropout: it draws from the global RNG, which the analyses must not advance."""

    def forward(self, x, t, y=None):
        return F.dropout(super().forward(x, t, y), 0.2, self.training)


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())


def analyses() -> list[L.Callback]:
    return [
        RoutingMaps(intervals=Intervals(num_intervals=4)),
        TimestepLoss(every_n_steps=2, probe_every_n_steps=2, probe_timesteps=5, probe_size=4),
        GradientConflict(every_n_steps=2, intervals=Intervals(num_intervals=4), probe_size=4),
        TaskAffinity(every_n_steps=3, intervals=Intervals(num_intervals=3), probe_size=4),
    ]


def train(tmp_path, callbacks, net, precision, accumulate):
    torch.manual_seed(0)
    module = DiffusionModule(
        net=partial(net, size="DiT-T/2"),
        routing=DTRRouting(),
        num_timesteps=100,
        sample_steps=100,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        ema_decay=0.9,
    )
    recorder = LossRecorder()
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        precision=precision,
        accumulate_grad_batches=accumulate,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        callbacks=[recorder, *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DigitsDataModule(batch_size=16))
    return module, trainer, recorder.losses


@pytest.mark.parametrize(
    "net, precision, accumulate",
    [(DiT, "32-true", 1), (DroppedDiT, "bf16-mixed", 2)],
    ids=["fp32", "bf16-accum-dropout"],
)
def test_analyses_leave_training_bit_identical(tmp_path, net, precision, accumulate):
    off, off_trainer, off_losses = train(tmp_path / "off", [], net, precision, accumulate)
    on, on_trainer, on_losses = train(tmp_path / "on", analyses(), net, precision, accumulate)

    assert on_losses == off_losses and len(on_losses) == 6 * accumulate
    for (name, a), (_, b) in zip(off.state_dict().items(), on.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    off_opt, on_opt = off_trainer.optimizers[0].state_dict(), on_trainer.optimizers[0].state_dict()
    for k, state in off_opt["state"].items():
        assert all(torch.equal(v, on_opt["state"][k][n]) for n, v in state.items())
    assert torch.equal(off.rng.get_state(), on.rng.get_state())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in on.net.parameters())

    # the analyses did run, at their cadences
    records = tmp_path / "on" / "run" / "version_0" / "records"
    conflict = pd.read_csv(records / "conflict.csv")
    assert sorted(conflict[conflict.metric == "cos"].step.unique()) == [0, 2, 4, 6]
    assert sorted(pd.read_csv(records / "affinity.csv").step.unique()) == [0, 3, 6]
    assert set(pd.read_csv(records / "loss_by_t.csv").metric) == {"train", "probe_raw", "probe_ema"}
    iou = pd.read_csv(records / "routing.csv")
    assert len(iou) == 16 and (iou.step == 0).all()


DDP_CONFIG = """
trainer:
  max_steps: {steps}
  strategy: ddp
  accelerator: cpu
  devices: 2
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: {save_dir}
      name: ddp
  callbacks:
{callbacks}
checkpoint:
  every_n_train_steps: {steps}
data:
  init_args:
    batch_size: 16
"""
DDP_CALLBACKS = """    - class_path: dtr_lab.callbacks.RoutingMaps
    - class_path: dtr_lab.callbacks.TimestepLoss
      init_args: {every_n_steps: 2, probe_every_n_steps: 3, probe_size: 4}
    - class_path: dtr_lab.callbacks.GradientConflict
      init_args: {every_n_steps: 2, probe_size: 4}
    - class_path: dtr_lab.callbacks.TaskAffinity
      init_args: {every_n_steps: 3, probe_size: 4}
"""


def ddp_fit(tmp_path: Path, name: str, callbacks: str, steps: int = 6) -> Path:
    config = tmp_path / f"{name}.yaml"
    save_dir = tmp_path / name
    config.write_text(DDP_CONFIG.format(steps=steps, save_dir=save_dir, callbacks=callbacks or "    []"))
    command = [
        sys.executable,
        "-m",
        "dtr_lab",
        "fit",
        "--config",
        str(ROOT / "experiments/digits/base.yaml"),
        "--config",
        str(ROOT / "experiments/routing/dtr.yaml"),
        "--config",
        str(config),
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save_dir / "ddp" / "version_0"


@pytest.mark.slow
def test_ddp_two_cpu_processes_no_deadlock_and_no_interference(tmp_path):
    """Rank 0 measures on the plain network without collectives; the other rank goes on to the next
    all-reduce and waits there. Weights end identical to a DDP run without analyses."""
    on = ddp_fit(tmp_path, "on", DDP_CALLBACKS.rstrip("\n"))
    off = ddp_fit(tmp_path, "off", "")
    conflict = pd.read_csv(on / "records" / "conflict.csv")
    cos = conflict[conflict.metric == "cos"]
    # computed once per step (rank 0 alone writes): exactly K² rows per measurement
    assert cos.groupby("step").size().to_dict() == {0: 25, 2: 25, 4: 25, 6: 25}
    assert sorted(pd.read_csv(on / "records" / "affinity.csv").step.unique()) == [0, 3, 6]
    a = torch.load(on / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(off / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)
