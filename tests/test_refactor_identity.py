"""Refactors keep training bit-identical: tiny digits runs with every analysis callback on give the same
final weights, per-step losses, logged metrics and records as the code before the refactor of issue 11.

The reference digests were recorded on commit 3306f31 (before the refactor) with this file's
``python tests/test_refactor_identity.py`` and are valid for the torch version they were recorded with
on a CPU (kernels differ across versions and devices).
"""

from __future__ import annotations

import hashlib
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from dtr_lab.callbacks import GradientConflict, RoutingMaps, SampleGrid, TaskAffinity, TimestepLoss
from dtr_lab.callbacks.sample_quality import SampleQuality
from dtr_lab.data import DigitsDataModule
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import NashMTL, PCGrad, UncertaintyWeighting
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.routing import DTRRouting

K = 3  # intervals of every method and analysis
STEPS = 4
TORCH = "2.13"  # the version the digests below were recorded with

# variant -> MTL method (module keyword arguments)
VARIANTS = {
    "plain": {},
    "pcgrad": {"mtl": lambda: PCGrad(intervals=Intervals(num_intervals=K))},
    "nash": {"mtl": lambda: NashMTL(intervals=Intervals(num_intervals=K), update_every=2)},
    "uw": {"mtl": lambda: UncertaintyWeighting(intervals=Intervals(num_intervals=K))},
}

# digests from commit 3306f31: {variant: {"weights", "losses", "metrics", "records", "images"}}
REFERENCE: dict[str, dict[str, str]] = {
    "plain": {
        "weights": "54befccc32a07228",
        "losses": "ee17c01b0494d3f8",
        "metrics": "7e133db3b134a44a",
        "records": "37262d46ead25d44",
        "images": "571341285d97f066",
    },
    "pcgrad": {
        "weights": "2f7c40b8f7958f0c",
        "losses": "403ff0dade00fc4d",
        "metrics": "fce5888cb283c6f8",
        "records": "a056a9b560719bb1",
        "images": "db1a314bb40368c0",
    },
    "nash": {
        "weights": "3b496bd5fa5d8092",
        "losses": "c2c6b472542ad029",
        "metrics": "9098490078a14500",
        "records": "0e6e8f4d76dcd37c",
        "images": "e1075cf9a2d6f4ac",
    },
    "uw": {
        "weights": "3e4466ec2ff32353",
        "losses": "16ca5634e576beb1",
        "metrics": "592ac1ac98f10cc3",
        "records": "b55e42d1bfb05f75",
        "images": "0625931bc9e8db77",
    },
}


class LossTrace(L.Callback):
    """The per-sample training losses of every step, as returned by the training step."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["per_sample_loss"].detach().cpu().clone())


def callbacks() -> list[L.Callback]:
    intervals = Intervals(num_intervals=K)
    return [
        SampleGrid(every_n_steps=2, num_samples=10),
        RoutingMaps(intervals=intervals),
        TimestepLoss(every_n_steps=1, num_bins=5, probe_every_n_steps=2, probe_timesteps=5, probe_size=4),
        GradientConflict(every_n_steps=2, intervals=intervals, probe_size=2),
        TaskAffinity(every_n_steps=2, intervals=intervals, probe_size=2),
        SampleQuality(every_n_steps=2, num_samples=20, kid_subsets=2, kid_subset_size=10, batch_size=10),
    ]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def train(root: Path, variant: str) -> dict[str, str]:
    """Train one variant for STEPS steps and digest what it leaves behind."""
    L.seed_everything(0, verbose=False)
    options = {name: make() for name, make in VARIANTS[variant].items()}
    module = DiffusionModule(
        net=partial(DiT, size="DiT-T/2", hidden_size=32),
        routing=DTRRouting(),
        num_timesteps=100,
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        ema_decay=0.9,
        sampler="ddim",
        sample_steps=4,
        gradient_clip_val=1.0 if "mtl" in options else None,
        **options,
    )
    trace = LossTrace()
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=[TensorBoardLogger(root, name=variant, version=0), CSVLogger(root, name=variant, version=0)],
        callbacks=[*callbacks(), trace],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        val_check_interval=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, DigitsDataModule(batch_size=12))
    run = root / variant / "version_0"
    state = module.state_dict()
    weights = b"".join(k.encode() + state[k].contiguous().numpy().tobytes() for k in sorted(state))
    records = b"".join(p.name.encode() + p.read_bytes() for p in sorted((run / "records").glob("*.csv")))
    images = b"".join(p.name.encode() + p.read_bytes() for p in sorted(run.glob("*/*.png")))
    return {
        "weights": digest(weights),
        "losses": digest(b"".join(v.numpy().tobytes() for v in trace.losses)),
        "metrics": digest((run / "metrics.csv").read_bytes()),
        "records": digest(records),
        "images": digest(images),
    }


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not torch.__version__.startswith(TORCH), reason=f"digests recorded with torch {TORCH}")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_is_bit_identical_to_before_the_refactor(tmp_path, variant):
    assert train(tmp_path, variant) == REFERENCE[variant]


if __name__ == "__main__":  # record the reference digests (on the commit before a refactor)
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = {v: train(Path(tmp), v) for v in (sys.argv[1:] or VARIANTS)}
    print(repr(out))
