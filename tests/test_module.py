"""DiffusionModule: loss weighting, ANT-UW, PCGrad/Nash-MTL and learned σ train through Lightning."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers import tiny_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dtr_lab.data import DigitsDataModule
from dtr_lab.diffusion import P2, MinSNR
from dtr_lab.errors import DTRLabError
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import CAGrad, Intervals, NashMTL, PCGrad, UncertaintyWeighting


def fit(module: DiffusionModule, tmp_path, steps: int = 4, batch_size: int = 32) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name="t"),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DigitsDataModule(batch_size=batch_size))
    return trainer


def logged(trainer: L.Trainer) -> dict[str, list[float]]:
    acc = EventAccumulator(trainer.logger.log_dir)
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def params_of(module):
    return torch.cat([p.detach().flatten() for p in module.net.parameters()])


@pytest.mark.parametrize(
    "kwargs, expected_tags",
    [
        ({"weighting": MinSNR(5.0)}, []),
        ({"weighting": P2(1.0, 1.0)}, []),
        ({"mtl": UncertaintyWeighting(Intervals(4))}, [f"uw/s_{k}" for k in range(4)]),
        ({"mtl": PCGrad(Intervals(4))}, ["pcgrad/projection_rate"]),
        ({"mtl": NashMTL(Intervals(4), update_every=2)}, [f"nash/alpha_{k}" for k in range(4)]),
        ({"mtl": CAGrad(Intervals(4))}, [f"cagrad/w_{k}" for k in range(4)]),
    ],
)
def test_each_method_trains_without_nan_and_logs_its_weights(tmp_path, kwargs, expected_tags):
    module = tiny_module(**kwargs)
    before = params_of(module)
    trainer = fit(module, tmp_path)
    after = params_of(module)
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert module.ema.n_averaged.item() == 4  # one EMA update per optimizer step, also when manual
    scalars = logged(trainer)
    assert len(scalars["train/loss"]) == 4 and all(math.isfinite(v) for v in scalars["train/loss"])
    for tag in expected_tags:
        assert tag in scalars and all(math.isfinite(v) for v in scalars[tag])


def test_uw_log_variances_learn_with_their_own_lr_and_are_checkpointed(tmp_path):
    module = tiny_module(mtl=UncertaintyWeighting(Intervals(4), lr=0.025))
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 0.025]
    trainer = fit(module, tmp_path)
    s = module.mtl.log_var.detach().clone()
    assert (s != 0).all()
    path = tmp_path / "uw.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    torch.testing.assert_close(state["mtl.log_var"], s)


def test_stratified_batch_gives_each_interval_its_share():
    module = tiny_module(mtl=PCGrad(Intervals(4)))
    t, _, _ = module.draw(torch.zeros(32, 1, 8, 8), None)
    k = module.tasks.intervals.index(t)
    assert torch.equal(k, torch.arange(4).repeat_interleave(8))


def test_weighting_multiplies_the_mse():
    module = tiny_module(weighting=MinSNR(5.0))
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    loss, mse = module.training_loss(x0, t, noise, None)
    snr = module.diffusion.snr(t)
    torch.testing.assert_close(loss, torch.minimum(snr, torch.tensor(5.0)) / snr * mse)


def test_learned_sigma_adds_the_vb_term(tmp_path):
    def net(*args, **kw):
        return DiT(*args, size="DiT-T/2", learn_sigma=True, **kw)

    module = DiffusionModule(net=net, num_timesteps=100, sample_steps=100, ema_decay=0.9)
    x0, noise, t = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 50, 99])
    loss, mse = module.training_loss(x0, t, noise, None)
    assert (loss > mse).all()  # + L_vb (≥ 0 in expectation, > 0 for an untrained σ)
    fit(module, tmp_path, steps=2)
    out = module.sample(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), steps=5)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_sample_uses_the_respacing_and_fixed_variance_options():
    seen = []
    module = tiny_module(sampler="ddpm", sample_steps=4, respacing="ddim", num_samples=2)
    module.ema.module.register_forward_pre_hook(lambda m, args: seen.append(args[1][0].item()))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    large = module.sample(noise, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(1))
    assert seen == [75, 50, 25, 0]  # DiT's "ddim4" of T = 100: stride 25 from 0
    assert module.hparams.fixed_variance == "large"  # the DiT/ADM default
    small_module = tiny_module(sampler="ddpm", sample_steps=4, respacing="ddim", fixed_variance="small")
    small_module.load_state_dict(module.state_dict())
    small = small_module.sample(noise, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(large, small, atol=1e-3)
    even = tiny_module(sample_steps=4)
    assert even.hparams.respacing == "even"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fixed_variance": "medium"}, "model.fixed_variance='medium' is unknown"),
        ({"respacing": "ddim", "sample_steps": 99}, "model.respacing=ddim cannot make exactly 99 steps"),
        ({"respacing": "uniform"}, "model.respacing='uniform' is unknown"),
    ],
)
def test_bad_sampling_options_are_one_line(kwargs, match):
    with pytest.raises(DTRLabError, match=match) as err:
        tiny_module(**kwargs)
    assert "\n" not in str(err.value)
