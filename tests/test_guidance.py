"""Classifier-free guidance's two conventions (dtr_lab.diffusion.samplers.GUIDANCE_RULES): DiT's
forward_with_cfg mixes the first 3 output channels, DTR's and Switch-DiT's every ε channel; a checkpoint
keeps the rule of the code it came from.

tests/data/official/dit_guided.pt (its generator: make_fixture.py --guided) is DiT's sample.py
(facebookresearch/DiT ed81ce2, less the VAE) on a tiny 4-channel latent DiT with learned σ: 10 respaced
steps of T = 1000, cfg scale 1.5, clip_denoised=False, with the noise p_sample drew at each step.
"""

from __future__ import annotations

import argparse

import helpers
import pytest
import torch
from helpers import DIGITS, REPO, write_latents

from dtr_lab.diffusion import guided
from dtr_lab.errors import DTRLabError
from dtr_lab.model_checks import check_checkpoint
from dtr_lab.official import build_module, main

FIXTURE = REPO / "tests/data/official"
TINY = [
    *DIGITS,
    "--model.net.init_args.hidden_size", "4",
    "--model.net.init_args.learn_sigma", "true",
]  # fmt: skip
# float32 official chain against dtr_lab's float64 one, 10 steps whose x̂_0 = x_t/√ᾱ amplifies ε's float32
# rounding up to 156×: measured 3.5e-7 of the samples' largest value; the other rule is 3.3e-2 away
RTOL = 1e-5


def labelled_model(x, t, y):
    """ε channel c = 10·c + y, v channel = −y: every entry says which channel and label it came from."""
    label = y.to(x.dtype).view(-1, 1, 1, 1)
    channels = torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1, 1)
    eps = 10 * channels + label + 0 * x
    return torch.cat([eps, -label + 0 * x], dim=1)  # (N, 2C, H, W): ε and a learned v


@pytest.mark.parametrize("channels", [4, 1])
def test_each_rule_mixes_the_channels_its_code_mixes(channels):
    """s = 2, y = 3, null 10: a mixed channel reads u + 2(c − u) = 2c − u (ε: c − 7, v: c + 7), the others
    c. On a 4-channel model DiT's rule leaves the 4th ε channel and v conditional; on a 1-channel one its
    model_out[:, :3] holds ε and v, so it mixes v too; the all rule mixes ε alone."""
    x, t, y = torch.zeros(1, channels, 2, 2), torch.tensor([5]), torch.tensor([3])
    cond = labelled_model(x, t, y)[0, :, 0, 0]  # (2C,)
    uncond = labelled_model(x, t, torch.tensor([10]))[0, :, 0, 0]
    mixed = {"all": channels, "first3": min(3, 2 * channels)}
    for rule, k in mixed.items():
        out = guided(labelled_model, y, 2.0, 10, rule)(x, t)[0, :, 0, 0]
        expected = torch.cat([2 * cond[:k] - uncond[:k], cond[k:]])
        assert torch.equal(out, expected), (rule, out, expected)


def latent_config(tmp_path) -> list[str]:
    """TINY on 8×8×4 latents of 10 classes: the fixture's DiT-T/2, 4 wide, learned σ, T = 1000."""
    write_latents(tmp_path / "latents", sizes=(4,), shape=(4, 8, 8), num_classes=10)
    return [*TINY, "--data.class_path", "dtr_lab.data.LatentDataModule",
            "--data.init_args.root", str(tmp_path / "latents"), "--model.sample_steps", "10",
            "--model.guidance_scale", "1.5", "--model.clip_x0", "false",
            "--model.sampler", "ddpm"]  # fmt: skip


def test_an_imported_dit_checkpoint_samples_as_dit_sample_py(tmp_path, monkeypatch, capsys):
    """A DiT train.py file imported with a config that states no rule keeps DiT's (first3, in its identity);
    the module loading it takes it, and its guided EMA sample from DiT's z and per-step noise equals the
    latents DiT's sample.py made; the all rule does not."""
    fixture = torch.load(FIXTURE / "dit_guided.pt", weights_only=True)
    src, dst = tmp_path / "0000400.pt", tmp_path / "in.ckpt"  # train.py's name: step 400
    args = argparse.Namespace(model="DiT-tiny", image_size=64, num_classes=10)
    torch.save({"model": fixture["model"], "ema": fixture["model"], "args": args}, src)
    config = latent_config(tmp_path)
    main(["import", str(src), str(dst), *config])
    assert "step 400 (from its train.py name), guidance_channels first3 (DiT's" in capsys.readouterr().out
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint["dtr_lab_identity"]["guidance"] == "first3" and checkpoint["global_step"] == 400
    assert checkpoint["dtr_lab_official"] == {"source": str(src), "code": "DiT", "step": 400}
    module = build_module(config)
    check_checkpoint(module, checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    assert module.guidance_channels == "first3"
    scale = fixture["samples"].abs().max()
    for rule, close in (("first3", True), ("all", False)):
        module.guidance_channels = rule
        noises = iter(fixture["noise"])  # the sampler's draws, in order: p_sample's, t = T−1 … 1

        def drawn(shape, generator, device, dtype, noises=noises):
            return next(noises).to(dtype)

        monkeypatch.setattr(torch, "randn", drawn)
        x = module.sample(fixture["z"], fixture["y"])
        monkeypatch.undo()
        error = ((x - fixture["samples"]).abs().max() / scale).item()
        assert (error <= RTOL) is close, (rule, error)


def test_a_dtr_file_keeps_the_all_rule_and_a_stated_rule_wins(tmp_path, capsys):
    """A DTR file (its mask tables) imports with all, at the --step given; a DiT file under a config that
    states all keeps all, at step 0 when neither --step nor its name says."""
    dtr = [*TINY, "--model.num_timesteps", "100", "--config", str(REPO / "experiments/routing/dtr.yaml"),
           "--model.routing.init_args.beta", "0.5"]  # fmt: skip
    main(["import", str(FIXTURE / "dtr_tiny.pt"), str(tmp_path / "dtr.ckpt"), *dtr, "--step", "7"])
    line = capsys.readouterr().out
    assert "step 7 (given by --step), guidance_channels all (DTR/Switch-DiT's forward_with_cfg)" in line
    checkpoint = torch.load(tmp_path / "dtr.ckpt", weights_only=True)
    assert checkpoint["dtr_lab_identity"]["guidance"] == "all" and checkpoint["global_step"] == 7
    tiny = [*TINY, "--model.num_timesteps", "100", "--model.guidance_channels", "all"]
    main(["import", str(FIXTURE / "dit_tiny.pt"), str(tmp_path / "dit.ckpt"), *tiny])
    assert "step 0 (unknown: give --step N" in capsys.readouterr().out
    assert torch.load(tmp_path / "dit.ckpt", weights_only=True)["dtr_lab_identity"]["guidance"] == "all"


def test_a_stated_rule_that_differs_from_the_checkpoints_is_refused(tmp_path, capsys):
    """Resuming, testing or sampling a checkpoint under another stated rule is an identity mismatch (one
    line, allow_checkpoint_mismatch overrides it); an unknown rule is one line naming the option."""
    tiny = [*TINY, "--model.num_timesteps", "100"]
    main(["import", str(FIXTURE / "dit_tiny.pt"), str(tmp_path / "dit.ckpt"), *tiny])
    checkpoint = torch.load(tmp_path / "dit.ckpt", weights_only=True)
    module = build_module([*tiny, "--model.guidance_channels", "all"])
    with pytest.raises(DTRLabError, match=r"guidance=first3 but the config has guidance=all.*\[guidance\]"):
        check_checkpoint(module, checkpoint)
    module = build_module([*tiny, "--model.guidance_channels", "all",
                           "--model.allow_checkpoint_mismatch", "[guidance]"])  # fmt: skip
    check_checkpoint(module, checkpoint)
    assert module.guidance_channels == "all"
    checkpoint["dtr_lab_identity"]["guidance"] = "first4"
    with pytest.raises(DTRLabError, match="guidance='first4', which dtr_lab does not know"):
        check_checkpoint(build_module(tiny), checkpoint)
    helpers.fails_in_one_line(
        main, ["import", str(FIXTURE / "dit_tiny.pt"), str(tmp_path / "x.ckpt"), *tiny,
               "--model.guidance_channels", "first4"], capsys, "model.guidance_channels='first4' is unknown",
    )  # fmt: skip
    helpers.fails_in_one_line(
        main, ["import", str(FIXTURE / "dit_tiny.pt"), str(tmp_path / "x.ckpt"), *tiny, "--step", "-1"],
        capsys, "--step=-1 must be ≥ 0",
    )  # fmt: skip
    helpers.fails_in_one_line(
        main, ["export", str(tmp_path / "dit.ckpt"), str(tmp_path / "x.pt"), *tiny, "--step", "3"], capsys,
        "--step is an import option",
    )  # fmt: skip
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "x.pt").exists()
