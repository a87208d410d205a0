"""The lr schedule: WarmupCosine's factors worked by hand, applied at every optimizer step (automatic and
manual optimisation), and resumed from a checkpoint where it stopped; any torch scheduler from a config;
ANT-UW's own lr following the schedule or not, as chosen; the optimizer check touching nothing."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from helpers import DIGITS, tiny_module

from dtr_lab.cli import build_cli
from dtr_lab.data import DigitsDataModule
from dtr_lab.errors import DTRLabError
from dtr_lab.model_checks import check_optimizer
from dtr_lab.mtl import Intervals, PCGrad, UncertaintyWeighting
from dtr_lab.optim.lr_schedule import WarmupCosine

BASE_LR = 1e-3


def probe() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)


def test_warmup_then_half_a_cosine_to_the_final_ratio():
    factor = WarmupCosine(probe(), total_steps=10, warmup_steps=4, final_ratio=0.1).factor
    # warm-up: (n + 1) / 4; then the cosine over steps 4 … 9 (5 intervals): cos(0.4π) = 0.309017
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, None, 0.1 + 0.9 * 0.5 * 1.309017, None, None, 0.1]
    for step, value in enumerate(expected):
        if value is not None:
            assert factor(step) == pytest.approx(value, abs=1e-6), step
    assert factor(6) > factor(7) > factor(8) > factor(9)  # monotone decay after the warm-up
    assert WarmupCosine(probe(), total_steps=3).factor(0) == 1.0  # no warm-up: the full lr at the first step


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"total_steps": 5, "warmup_steps": 5}, "warmup_steps=5 must be below total_steps=5"),
        ({"total_steps": 0}, "total_steps=0 must be an integer ≥ 1"),
        ({"total_steps": 5, "warmup_steps": -1}, "warmup_steps=-1 must be an integer ≥ 0"),
    ],
)
def test_a_schedule_that_does_not_fit_is_refused(kwargs, needle):
    with pytest.raises(DTRLabError, match=needle):
        WarmupCosine(probe(), **kwargs)


class LearningRates(L.Callback):
    """The lr of the network's parameter group at each optimizer step, and a stop after `stop_at` steps."""

    def __init__(self, stop_at: int | None = None, group: int = 0) -> None:
        self.lrs: dict[int, float] = {}
        self.stop_at, self.group = stop_at, group

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[self.group]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.stop_at:
            trainer.should_stop = True


def fit(module, root, callback: L.Callback | list[L.Callback], ckpt_path=None, steps: int = 6) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=callback if isinstance(callback, list) else [callback],
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
    schedule = partial(WarmupCosine, total_steps=6, warmup_steps=2, final_ratio=0.2)
    return tiny_module(lr_schedule=schedule, optimizer=optimizer, **kwargs)


@pytest.mark.parametrize("mtl", [None, PCGrad(Intervals(4))], ids=["automatic", "manual (PCGrad)"])
def test_every_optimizer_step_uses_its_scheduled_lr(tmp_path, mtl):
    recorder = LearningRates()
    fit(scheduled(mtl=mtl), tmp_path, recorder)
    factor = WarmupCosine(probe(), total_steps=6, warmup_steps=2, final_ratio=0.2).factor
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


def test_any_torch_scheduler_works_from_a_config(tmp_path):
    """model.lr_schedule is a factory, optimizer -> scheduler: a torch class with its options as YAML."""
    config = tmp_path / "step.yaml"
    config.write_text(
        "model:\n  lr_schedule:\n    class_path: torch.optim.lr_scheduler.StepLR\n"
        "    init_args:\n      step_size: 2\n      gamma: 0.5\n"
    )
    cli = build_cli([*DIGITS, "--config", str(config), "--trainer.logger", "false"], run=False)
    scheduler = cli.model.lr_schedule(probe())
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (2, 0.5)
    recorder = LearningRates()
    optimizer = lambda params: torch.optim.AdamW(params, lr=BASE_LR)  # noqa: E731
    schedule = partial(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5)
    fit(tiny_module(lr_schedule=schedule, optimizer=optimizer), tmp_path, recorder)
    assert recorder.lrs == pytest.approx({n: BASE_LR * 0.5 ** (n // 2) for n in range(6)})


@pytest.mark.parametrize("follows", [True, False])
def test_ant_uw_s_lr_follows_the_schedule_only_if_chosen(tmp_path, follows):
    """A schedule scales every parameter group; UncertaintyWeighting(scheduled=False) keeps s_k's lr."""
    factor = WarmupCosine(probe(), total_steps=6, warmup_steps=2, final_ratio=0.2).factor
    network, s = LearningRates(group=0), LearningRates(group=1)
    uw = UncertaintyWeighting(Intervals(4), lr=0.025, scheduled=follows)
    fit(scheduled(mtl=uw), tmp_path, [network, s])
    assert network.lrs == pytest.approx({n: BASE_LR * factor(n) for n in range(6)})
    assert s.lrs == pytest.approx({n: 0.025 * (factor(n) if follows else 1.0) for n in range(6)})


def test_the_optimizer_check_builds_nothing_of_the_module():
    """check_optimizer builds the configured optimizer and schedule on stand-ins: the module's parameters,
    its method's state and its schedule factory are as before, and no optimizer is attached to it."""
    uw = UncertaintyWeighting(Intervals(4), lr=0.025, scheduled=False)
    module = scheduled(mtl=uw)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    schedule = module.lr_schedule
    check_optimizer(module)
    assert module.lr_schedule is schedule and module.mtl is uw
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert module.mtl.log_var.grad is None
    with pytest.raises(DTRLabError, match="model.lr_schedule rejects its options: .*fix its init_args"):
        check_optimizer(tiny_module(lr_schedule=partial(torch.optim.lr_scheduler.LinearLR, start_factor=0)))
    with pytest.raises(DTRLabError, match="warmup_steps=6 must be below total_steps=6"):
        check_optimizer(tiny_module(lr_schedule=partial(WarmupCosine, total_steps=6, warmup_steps=6)))
    with pytest.raises(DTRLabError, match="model.optimizer.init_args.lr=-0.1 is invalid"):
        check_optimizer(tiny_module(optimizer=partial(torch.optim.AdamW, lr=-0.1)))
