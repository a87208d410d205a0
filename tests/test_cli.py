"""The CLI end to end: fit writes logs, checkpoints and config; resume; configs compose; bad input."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from helpers import DIGITS, REPO, run_cli, run_dir, scalars, tiny
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from dtr_lab.cli import main
from dtr_lab.cli.console import use_step_progress_bar
from dtr_lab.runs import load_runs


def test_fit_writes_events_checkpoint_and_resolved_config(tmp_path):
    proc = run_cli("fit", *DIGITS, "--config", str(REPO / "experiments/routing/dtr.yaml"), *tiny(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir(tmp_path)
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.ckpt").exists()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["routing"]["class_path"] == "dtr_lab.routing.DTRRouting"  # the composed file won
    assert config["model"]["net"]["init_args"]["size"] == "DiT-T/2"
    assert config["trainer"]["max_steps"] == 4
    steps = [s for s, _ in scalars(out, "train/loss")]
    assert steps[-1] == 3 and [s for s, _ in scalars(out, "val/loss_ema")]
    assert list((out / "samples").glob("step*.png")) and list((out / "routing").glob("masks_*.png"))
    command = yaml.safe_load((out / "command.yaml").read_text())
    assert command == {"kind": "fit", "ckpt_path": None, "ckpt_step": None}
    # it ends with its folder, its last logged values and the line that opens it in TensorBoard
    last_loss = scalars(out, "train/loss")[-1][1]
    summary = proc.stdout.splitlines()[-3:]
    assert summary[0] == f"Run folder:  {out}"
    assert summary[1].startswith(f"Final:       train/loss (last): {last_loss:.4g} · val/loss_ema (last): ")
    assert summary[2].endswith(f"-m tensorboard.main --logdir {tmp_path} --samples_per_plugin images=1000")


def test_the_progress_bar_shows_no_version_number(tmp_path):
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path), max_steps=1, enable_checkpointing=False)
    use_step_progress_bar(trainer)
    assert "v_num" in RichProgressBar().get_metrics(trainer, None)  # Lightning's own shows "v_num: 0.000"
    assert "v_num" not in trainer.progress_bar_callback.get_metrics(trainer, None)


def test_print_config_and_composition():
    proc = run_cli(
        "fit",
        *DIGITS,
        "--config",
        str(REPO / "experiments/routing/rtr.yaml"),
        "--model.routing.init_args.beta",
        "0.5",
        "--print_config",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = yaml.safe_load(proc.stdout)
    assert config["model"]["routing"]["class_path"] == "dtr_lab.routing.RandomRouting"
    assert config["model"]["routing"]["init_args"]["beta"] == 0.5


def test_resume_continues_the_same_run(tmp_path):
    """12 steps straight == 6 steps + resume from last.ckpt to 12 (epochs of 6 batches of 256)."""
    base = [*DIGITS, "--config", str(REPO / "experiments/routing/dtr.yaml")]
    straight, split = tmp_path / "straight", tmp_path / "split"
    main(["fit", *base, *tiny(straight, steps=12, batch=256), "--checkpoint.every_n_train_steps", "6"])
    main(["fit", *base, *tiny(split, steps=6, batch=256), "--checkpoint.every_n_train_steps", "6"])
    first = run_dir(split)
    main(
        ["fit", *base, *tiny(split, steps=12, batch=256), "--ckpt_path", str(first / "checkpoints/last.ckpt")]
    )
    resumed = run_dir(split)
    assert resumed != first  # a new version directory; the first run is untouched
    a = torch.load(run_dir(straight) / "checkpoints/last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints/last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    loss_straight = dict(scalars(run_dir(straight), "train/loss"))
    loss_split = dict(scalars(first, "train/loss")) | dict(scalars(resumed, "train/loss"))
    assert sorted(loss_split) == sorted(loss_straight) == list(range(12))
    for step, value in loss_straight.items():
        assert loss_split[step] == pytest.approx(value, rel=1e-5)
    checkpoint = str((first / "checkpoints/last.ckpt").resolve())
    assert yaml.safe_load((resumed / "command.yaml").read_text()) == {
        "kind": "resumed", "ckpt_path": checkpoint, "ckpt_step": 6
    }
    # the readers take the two folders as one run, whose curve is the straight run's
    joined = load_runs(split)
    assert len(joined) == 1 and joined[0].continuations == [resumed]
    curve = joined[0].scalars.query("tag == 'train/loss'")
    assert list(curve["step"]) == list(range(12))
    assert curve["value"].tolist() == pytest.approx([loss_straight[s] for s in range(12)], rel=1e-5)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            ["--model.routing", "dtr_lab.routing.DTRRouting", "--model.routing.init_args.beta", "1.5"],
            "beta=1.5",
        ),
        (
            ["--model.routing", "dtr_lab.routing.DTRRouting", "--model.routing.init_args.alpha", "0"],
            "alpha=0",
        ),
        (["--model.net.init_args.size", "DiT-Q/2"], "model size 'DiT-Q/2' is unknown"),
        (["--model.routing", "dtr_lab.routing.SlidingRouting"], "SlidingRouting"),
        (["--data.init_args.image_size", "12"], "data.image_size=12"),
        (["--model.sampler", "euler"], "model.sampler='euler'"),
        (["--model.fixed_variance", "medium"], "model.fixed_variance='medium' is unknown; choose large"),
        (["--model.respacing", "ddim", "--model.sample_steps", "999"], "model.respacing=ddim cannot make"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path, overrides, needle):
    proc = run_cli("fit", *DIGITS, *tiny(tmp_path), *overrides)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "digits").exists()  # failed before any run directory was written


def test_checkpoint_of_another_shape_is_rejected(tmp_path):
    assert run_cli("fit", *DIGITS, *tiny(tmp_path, steps=2)).returncode == 0
    first = run_dir(tmp_path)
    before = sorted(p.name for p in first.rglob("*"))
    proc = run_cli(
        "fit",
        *DIGITS,
        *tiny(tmp_path, steps=4),
        "--model.net.init_args.size",
        "DiT-XS/2",
        "--ckpt_path",
        str(first / "checkpoints/last.ckpt"),
    )
    assert proc.returncode == 2
    assert "checkpoint was trained with net=DiT(DiT-T/2) but the config has net=DiT(DiT-XS/2)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in first.rglob("*")) == before  # the existing run is untouched
