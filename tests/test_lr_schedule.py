"""The lr schedule: WarmupCosine's factors worked by hand, applied at every optimizer step (automatic and
manual optimisation), and resumed from a checkpoint where it stopped."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import tiny_module

from dtr_lab.data import DigitsDataModule
from dtr_lab.errors import DTRLabError
from dtr_lab.lr_schedule import WarmupCosine
from dtr_lab.mtl import Intervals, PCGrad

BASE_LR = 1e-3


def test_warmup_then_half_a_cosine_to_the_final_ratio():
    factor = WarmupCosine(warmup_steps=4, final_ratio=0.1).bind(10)
    # warm-up: (n + 1) / 4; then the cosine over steps 4 … 9 (5 intervals): cos(0.4π) = 0.309017
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, None, 0.1 + 0.9 * 0.5 * 1.309017, None, None, 0.1]
    for step, value in enumerate(expected):
        if value is not None:
            assert factor(step) == pytest.approx(value, abs=1e-6), step
    assert factor(6) > factor(7) > factor(8) > factor(9)  # monotone decay after the warm-up
    assert WarmupCosine().bind(3)(0) == 1.0  # no warm-up: the full lr at the first step


@pytest.mark.parametrize(
    "kwargs, max_steps, needle",
    [({"warmup_steps": 5}, 5, "below trainer.max_steps=5"), ({}, -1, "set trainer.max_steps")],
)
def test_a_schedule_that_does_not_fit_the_run_is_refused(kwargs, max_steps, needle):
    with pytest.raises(DTRLabError, match=needle.replace(".", r"\.")):
        WarmupCosine(**kwargs).bind(max_steps)


class LearningRates(L.Callback):
    """The lr of the network's parameter group at each optimizer step, and a stop after `stop_at` steps."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.lrs: dict[int, float] = {}
        self.stop_at = stop_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def fit(module, root, callback: L.Callback, ckpt_path=None, steps: int = 6) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(module, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer


def scheduled(**kwargs):
    optimizer = lambda params: torch.optim.AdamW(params, lr=BASE_LR)  # noqa: E731
    schedule = WarmupCosine(warmup_steps=2, final_ratio=0.2)
    return tiny_module(lr_schedule=schedule, optimizer=optimizer, **kwargs)


@pytest.mark.parametrize("mtl", [None, PCGrad(Intervals(4))], ids=["automatic", "manual (PCGrad)"])
def test_every_optimizer_step_uses_its_scheduled_lr(tmp_path, mtl):
    recorder = LearningRates()
    fit(scheduled(mtl=mtl), tmp_path, recorder)
    factor = WarmupCosine(warmup_steps=2, final_ratio=0.2).bind(6)
    assert recorder.lrs == pytest.approx({n: BASE_LR * factor(n) for n in range(6)})
    assert recorder.lrs[1] == pytest.approx(BASE_LR) and recorder.lrs[5] == pytest.approx(0.2 * BASE_LR)


def test_a_resumed_run_continues_the_schedule(tmp_path):
    whole = LearningRates()
    torch.manual_seed(0)
    fit(scheduled(), tmp_path / "whole", whole)
    first = LearningRates(stop_at=3)
    torch.manual_seed(0)
    trainer = fit(scheduled(), tmp_path / "first", first)
    assert trainer.global_step == 3
    path = tmp_path / "half.ckpt"
    trainer.save_checkpoint(path)
    rest = LearningRates()
    fit(scheduled(), tmp_path / "rest", rest, ckpt_path=path)
    assert sorted(rest.lrs) == [3, 4, 5]
    assert {**first.lrs, **rest.lrs} == whole.lrs  # the same lr at every step as the uninterrupted run
