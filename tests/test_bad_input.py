"""Bad input to the CLI (checkpoints, config files, option values) ends in one `dtr_lab: error:` line
with exit status 2, and an existing run directory stays exactly as it was."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from helpers import REPO, assert_one_error_line, run_cli, tiny
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from dtr_lab.cli import main
from dtr_lab.storage.run_dir import holds_output, remove_failed_start

VANILLA = [
    "--config",
    str(REPO / "experiments/digits/base.yaml"),
    "--config",
    str(REPO / "experiments/routing/vanilla.yaml"),
]


@pytest.fixture(scope="module")
def existing(tiny_runs, tmp_path_factory) -> Path:
    """A save_dir holding one finished run (a copy of the session's tiny vanilla run) at vanilla/version_0."""
    root = tmp_path_factory.mktemp("bad_input")
    shutil.copytree(tiny_runs["vanilla"], root / "vanilla" / "version_0")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with the md5 of its bytes, and every folder."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def fit_args(root: Path, *extra: str) -> list[str]:
    return ["fit", *VANILLA, *tiny(root, steps=2), "--trainer.logger.init_args.name", "vanilla", *extra]


def fails_in_one_line(args: list[str], capsys, *needles: str) -> str:
    """Run the CLI in this process: exit status 2 and one error line naming each needle."""
    return helpers.fails_in_one_line(main, args, capsys, *needles)


# ------------------------------------------------------------------------------------------ checkpoints
def bad_checkpoint(kind: str, good: Path, folder: Path) -> Path:
    """A damaged copy of a good checkpoint, one per way a file can be unreadable."""
    path = folder / f"{kind}.ckpt"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("model weights, honestly\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "bit-flipped":  # one bit in the middle, inside a tensor's bytes
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif kind == "extra tensor":
        checkpoint = torch.load(good, weights_only=True)
        checkpoint["state_dict"]["net.extra.weight"] = torch.zeros(3)
        torch.save(checkpoint, path)
    elif kind == "not a tensor":
        checkpoint = torch.load(good, weights_only=True)
        checkpoint["state_dict"]["net.x_embedder.weight"] = 3
        torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "no such file"),
        ("truncated", "truncated"),
        ("text", "not a PyTorch checkpoint"),
        ("empty", "is empty"),
        ("directory", "is a folder"),
        ("bit-flipped", "fails its CRC check"),
        ("extra tensor", "net.extra.weight"),
        ("not a tensor", "state_dict entry 'net.x_embedder.weight' is of type int, not a tensor"),
    ],
)
def test_unreadable_checkpoint_is_one_line_and_touches_nothing(existing, tmp_path, capsys, kind, needle):
    good = existing / "vanilla/version_0/checkpoints/last.ckpt"
    path = bad_checkpoint(kind, good, tmp_path)
    before = snapshot(existing)
    fails_in_one_line(fit_args(existing, "--ckpt_path", str(path)), capsys, str(path), needle)
    assert snapshot(existing) == before  # the old run intact, no new version_1


def test_a_good_checkpoint_passes_the_same_checks(existing, tmp_path):
    """The checks reject the damage, not the checkpoint: the undamaged file passes them and validates."""
    good = existing / "vanilla/version_0/checkpoints/last.ckpt"
    save = tmp_path / "resumed"
    main(["validate", *VANILLA, *tiny(save, steps=2), "--ckpt_path", str(good)])
    assert (save / "digits").is_dir()  # validate ran and logged; the checkpoint was accepted


def test_resuming_into_the_checkpoints_own_version_folder_is_refused(existing, capsys):
    """A named version that exists is refused before anything is written into it (no second events file)."""
    good = existing / "vanilla/version_0/checkpoints/last.ckpt"
    before = snapshot(existing)
    args = fit_args(existing, "--trainer.logger.init_args.version", "0", "--ckpt_path", str(good))
    fails_in_one_line(args, capsys, "vanilla/version_0 exists already", "init_args.version unset")
    assert snapshot(existing) == before


# ----------------------------------------------------------------------------------------- config files
CONFIG_FILES = {
    "yaml syntax": ("model:\n  sample_steps: [1, 2\ntrainer:\n  max_steps: 3\n", ["line 3", "invalid YAML"]),
    "unknown key": ("model:\n  sample_stepz: 4\n", ["model.sample_stepz", "did you mean model.sample_steps"]),
    "unknown class": ("model:\n  routing:\n    class_path: dtr_lab.routing.Sliding\n", ["routing.Sliding"]),
    "empty file": ("# nothing here yet\n", ["is empty"]),
    "wrong type": ("model:\n  sample_steps: many\n", ["model.sample_steps", "many"]),
    "negative lr": (
        "model:\n  optimizer:\n    class_path: torch.optim.AdamW\n    init_args:\n      lr: -0.001\n",
        ["model.optimizer.init_args.lr=-0.001", "must be ≥ 0"],
    ),
    "warm-up past the schedule": (
        "model:\n  lr_schedule:\n    class_path: dtr_lab.optim.lr_schedule.WarmupCosine\n    init_args:\n"
        "      total_steps: 2\n      warmup_steps: 2\n",
        ["warmup_steps=2", "below total_steps=2"],
    ),
    "lr schedule final ratio": (
        "model:\n  lr_schedule:\n    class_path: dtr_lab.optim.lr_schedule.WarmupCosine\n    init_args:\n"
        "      total_steps: 2\n      final_ratio: 1.5\n",
        ["final_ratio=1.5", "in [0, 1]"],
    ),
    "torch lr schedule's own check": (
        "model:\n  lr_schedule:\n    class_path: torch.optim.lr_scheduler.LinearLR\n    init_args:\n"
        "      start_factor: 0\n",
        ["model.lr_schedule rejects its options", "fix its init_args"],
    ),
    "patch size 0": ("model:\n  net:\n    init_args:\n      size: DiT-T/0\n", ["DiT-T/0"]),
    "negative max_steps": ("trainer:\n  max_steps: -5\n", ["max_steps", "-5"]),
    "sample_steps 0": ("model:\n  sample_steps: 0\n", ["model.sample_steps=0", "from 1 to T=1000"]),
    "sample_steps > T": ("model:\n  sample_steps: 1001\n", ["model.sample_steps=1001", "from 1 to T=1000"]),
    "batch > dataset": ("data:\n  init_args:\n    batch_size: 100000\n", ["data.batch_size=100000"]),
}


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_file_is_one_line_naming_file_or_key(existing, tmp_path, capsys, case):
    text, needles = CONFIG_FILES[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    before = snapshot(existing)
    line = fails_in_one_line(fit_args(existing, "--config", str(config)), capsys, *needles)
    if case in ("yaml syntax", "empty file", "unknown key", "unknown class", "wrong type"):
        assert str(config) in line  # the parser's own faults name the file that holds them
    assert snapshot(existing) == before


QUICKSTART = ["--config", str(REPO / "experiments/quickstart.yaml")]
AFFINITY = [*VANILLA[:2], "--config", str(REPO / "experiments/routing/affinity.yaml")]


@pytest.mark.parametrize(
    "configs, option, value, needles",
    [
        (QUICKSTART, "--model.routing.init_args.beta", "nan", ["model.routing.beta", "Got value: nan"]),
        (QUICKSTART, "--data.init_args.batch_size", "abc", ["data.batch_size", "Expected a int"]),
        (AFFINITY, "--model.routing.init_args.source", "[[1, 0.2], [0.2, x]]", ["float. Got value: x, or"]),
    ],
    ids=["beta nan", "batch abc", "matrix with a word"],
)
def test_a_bad_value_on_the_command_line_is_blamed_on_it(capsys, configs, option, value, needles):
    """The config files also set these keys; the value that failed came from the command line."""
    blame = f"set on the command line by {option}"
    line = fails_in_one_line(["fit", *configs, option, value], capsys, blame, *needles)
    assert ".yaml" not in line and "<class" not in line


def test_an_image_with_nan_pixels_stops_training_in_one_line(tmp_path, capsys):
    """A float TIFF with a NaN patch among good images, decoded in a DataLoader worker process: the
    worker's error arrives as one line naming the file, not as the worker's traceback."""
    data = tmp_path / "images"
    data.mkdir()
    for k in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(data / f"{k}.png")
    levels = np.full((8, 8), 0.5, np.float32)
    levels[2:4, 2:4] = np.nan
    Image.fromarray(levels, "F").save(data / "nan.tif")
    folder = ["--data", "dtr_lab.data.ImageFolderDataModule", "--data.root", str(data)]
    folder += ["--data.image_size", "8"]
    loader = ["--data.batch_size", "7", "--data.val_fraction", "0", "--data.num_workers", "1"]
    args = ["fit", *VANILLA, *tiny(tmp_path, steps=2), *folder, *loader, "--trainer.callbacks", "[]"]
    fails_in_one_line(args, capsys, "nan.tif: cannot decode this image (4 pixels are NaN or infinite)")


def test_real_process_prints_only_the_error_line(tmp_path):
    """As a user sees it: a subprocess's exit status and its whole stderr (no usage, no traceback)."""
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_steps: 3\n model: {\n")
    proc = run_cli("fit", *VANILLA, "--config", str(config))
    assert proc.returncode == 2
    assert proc.stderr.strip() == assert_one_error_line(proc.stderr, str(config), "line 3")


def test_help_still_prints_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0 and "--ckpt_path" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- run directories
def test_a_start_that_fails_after_the_logger_opened_leaves_no_run_dir(existing, capsys, monkeypatch):
    """Without analysis callbacks the too-large batch is found by the train loader, after the logger
    has opened version_1: the start removes it again."""
    before = snapshot(existing)
    args = fit_args(existing, "--trainer.callbacks", "[]", "--data.init_args.batch_size", "100000")
    with monkeypatch.context() as m:  # control: without the clean-up the start leaves version_1 behind
        m.setattr("dtr_lab.storage.run_dir.remove_failed_start", lambda path: False)
        fails_in_one_line(args, capsys, "data.batch_size=100000")
    left = existing / "vanilla" / "version_1"
    assert left.is_dir() and not holds_output(left)
    shutil.rmtree(left)
    fails_in_one_line(args, capsys, "data.batch_size=100000")
    assert snapshot(existing) == before


def write_events(folder: Path, scalars: bool) -> None:
    writer = SummaryWriter(str(folder))
    writer.add_scalar("hp_metric", -1, 0)  # what the logger writes with the hyperparameters
    if scalars:
        writer.add_scalar("train/loss", 0.5, 3)
    writer.close()


def test_a_start_refused_after_claiming_its_folder_leaves_no_folder(tmp_path, capsys):
    """The optimizer check runs after the run directory is claimed: the claim, and the save_dir/name
    folders made for it, go again."""
    save_dir = tmp_path / "new"
    args = ["fit", *VANILLA, *tiny(save_dir, steps=2), "--model.optimizer.init_args.lr", "-1"]
    fails_in_one_line(args, capsys, "model.optimizer.init_args.lr=-1.0", "must be ≥ 0")
    assert not save_dir.exists()


@pytest.mark.parametrize(
    "option, meant",
    [
        ("--trainer.max_stesp", "--trainer.max_steps"),  # mistyped
        ("--trainer.max_step", "--trainer.max_steps"),  # abbreviated: argparse would expand it silently
        ("--model.sample_step", "--model.sample_steps"),
        ("--model.routing.init_args.alpah", "alpha"),  # a parameter of the configured routing class
    ],
)
def test_a_mistyped_or_abbreviated_option_gets_did_you_mean(existing, capsys, option, meant):
    before = snapshot(existing)
    args = fit_args(existing, "--config", str(REPO / "experiments/routing/dtr.yaml"), option, "4")
    fails_in_one_line(args, capsys, option, f"did you mean {meant}?")
    assert snapshot(existing) == before


def test_an_option_like_none_gets_no_guess(capsys):
    line = fails_in_one_line(["fit", *VANILLA, "--frobnicate", "3"], capsys, "--frobnicate")
    assert "did you mean" not in line


def test_only_start_up_files_count_as_empty(tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    (start / "config.yaml").write_text("model: {}\n")
    write_events(start, scalars=False)
    (start / "checkpoints").mkdir()  # an empty folder is nothing either
    (start / "command.yaml").write_text("kind: fit\n")  # what the CLI writes once it claims the folder
    assert not holds_output(start)
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "config.yaml").write_text("model: {}\n")
    write_events(trained, scalars=True)
    assert holds_output(trained)
    saved = tmp_path / "saved"
    (saved / "checkpoints").mkdir(parents=True)
    (saved / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert holds_output(saved)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "events.out.tfevents.1.host.1.0").write_bytes(b"\x00\xff" * 40)
    assert holds_output(damaged)  # what cannot be read is kept
    assert remove_failed_start(start) and not start.exists()
    for kept in (trained, saved, damaged):
        assert not remove_failed_start(kept) and kept.exists()


# ---------------------------------------------------------------------------------------- sample steps
def test_sample_steps_overrides_are_checked_too():
    """0 used to mean T and values above T were clipped; a per-call or callback override is held to [1, T]."""
    from dtr_lab.callbacks import SampleQuality
    from dtr_lab.errors import DTRLabError
    from dtr_lab.models import DiT
    from dtr_lab.module import DiffusionModule

    def net(*args):
        return DiT(*args, size="DiT-T/4")

    module = DiffusionModule(net=net, num_timesteps=20, sample_steps=20)
    noise = torch.randn(1, 1, 8, 8)
    for steps in (0, 21, 2.5):
        with pytest.raises(DTRLabError, match=rf"steps={steps!r} must be an integer from 1 to T=20"):
            module.sample(noise, torch.tensor([3]), steps=steps)
    assert module.sample(noise, torch.tensor([3]), steps=20).shape == noise.shape
    with pytest.raises(DTRLabError, match=r"SampleQuality.steps=21 must be an integer from 1 to T=20"):
        SampleQuality(steps=21).setup(None, module, "fit")
    with pytest.raises(DTRLabError, match=r"model.sample_steps=0"):
        DiffusionModule(net=net, num_timesteps=20, sample_steps=0)
