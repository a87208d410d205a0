"""Sample quality from the CLI and during training: the SampleQuality callback, `test` metrics,
`predict`'s .npz, the reproduction script's pipeline, and the bad inputs (one line, exit 2)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import DIGITS, tiny
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dtr_lab.callbacks import SampleQuality
from dtr_lab.callbacks.sample_quality import balanced_labels, generate
from dtr_lab.cli import main
from dtr_lab.data import DigitsDataModule
from dtr_lab.data.digits import digits_split, load_digits_tensors
from dtr_lab.errors import DTRLabError

QUALITY = "dtr_lab.callbacks.SampleQuality"
# `predict`/`test` take model options from the checkpoint's hyperparameters (LightningCLI's
# ckpt_path parsing overrides the command line), so the count is set when training
PREDICT_SAMPLES = 105


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """The digits classifier is trained once into a temporary cache, never ~/.cache."""
    path = tmp_path_factory.mktemp("dtr_lab_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DTR_LAB_CACHE", str(path))
        yield path


def quality_args(every: int = 2, num_samples: int = 100) -> list[str]:
    return ["--trainer.callbacks+=" + QUALITY, "--trainer.callbacks.every_n_steps", str(every),
            "--trainer.callbacks.num_samples", str(num_samples)]


def cli(*args: str) -> None:
    main(list(args))


def cli_error(capsys, *args: str) -> str:
    """Run the CLI expecting bad input: exit 2 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dtr_lab: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 4-step digits fits, identical but for SampleQuality (every 2 steps, 100 samples)."""
    root = tmp_path_factory.mktemp("quality_runs")
    cli("fit", *DIGITS, *tiny(root / "with"), *quality_args(), "--model.num_samples", str(PREDICT_SAMPLES))
    cli("fit", *DIGITS, *tiny(root / "without"), "--model.num_samples", str(PREDICT_SAMPLES))
    return {name: next((root / name / "digits").glob("version_*")) for name in ("with", "without")}


# --- the callback during fit ------------------------------------------------------------------------


def test_fit_records_quality_at_the_cadence_and_the_end(runs):
    records = pd.read_csv(runs["with"] / "records" / "quality.csv")
    assert list(records.columns) == ["step", "metric", "i", "j", "value"]
    metrics = [
        "fid", "kid_mean", "kid_std", "is_mean", "is_std", "precision", "recall", "memorised", "accuracy"
    ]
    assert sorted(records["step"].unique()) == [2, 4]  # every 2 steps; the end (4) is not scored twice
    for step in (2, 4):
        assert sorted(records[records["step"] == step]["metric"]) == sorted(metrics)
    values = records.set_index(["step", "metric"])["value"]
    assert values[(4, "fid")] > 0 and 0 <= values[(4, "accuracy")] <= 1
    assert 1 <= values[(4, "is_mean")] <= 10  # IS is between 1 and the number of classes
    acc = EventAccumulator(str(runs["with"]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("quality/fid")] == [2, 4]
    assert acc.Scalars("quality/fid")[-1].value == pytest.approx(values[(4, "fid")], rel=1e-6)
    # TensorBoardLayout (in the digits base config) puts the last score, not a mean, into HParams
    for name in ("fid", "accuracy"):
        (logged,) = acc.Scalars(f"hparams/{name}")
        assert (logged.step, logged.value) == (4, pytest.approx(values[(4, name)], rel=1e-6))
    assert values[(2, "fid")] != values[(4, "fid")]  # so a mean of the two would differ


def test_scoring_samples_leaves_training_unchanged(runs):
    with_cb = torch.load(runs["with"] / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    without = torch.load(runs["without"] / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert with_cb.keys() == without.keys()
    for key, value in without.items():
        torch.testing.assert_close(with_cb[key], value, msg=key)


class RealDigits:
    """A stand-in model whose 'samples' are held-out digits of class (y + shift) mod 10."""

    hparams = SimpleNamespace(in_channels=1, image_size=8, num_classes=10)
    device = torch.device("cpu")

    def __init__(self, shift: int) -> None:
        x, y = load_digits_tensors()
        val = digits_split()[1]
        self.pool = [x[val][y[val] == c] for c in range(10)]
        self.shift = shift

    def sample(self, noise, y, generator=None, **options):
        pick = (noise.flatten(1).abs().sum(1) * 1000).long()  # the noise chooses which digit
        return torch.stack([
            self.pool[(c + self.shift) % 10][k % len(self.pool[(c + self.shift) % 10])]
            for c, k in zip(y.tolist(), pick.tolist(), strict=True)
        ])


def test_accuracy_follows_the_conditioning_label_and_fid_does_not():
    """Real digits of the asked class score high accuracy; the same digits one class off score ~0
    accuracy but the same low FID (FID sees the images, not the labels)."""
    callback = SampleQuality(num_samples=200)
    trainer = SimpleNamespace(datamodule=DigitsDataModule())
    right = callback.score(trainer, RealDigits(shift=0), 200)
    wrong = callback.score(trainer, RealDigits(shift=1), 200)
    assert right["accuracy"] > 0.9 and wrong["accuracy"] < 0.1
    noise = callback.metrics(torch.rand(200, 1, 8, 8) * 2 - 1)  # the scorer the callback built
    assert right["fid"] < 0.2 * noise["fid"] and wrong["fid"] < 0.2 * noise["fid"]
    assert wrong["fid"] == pytest.approx(right["fid"], rel=0.5)
    assert right["precision"] > 0.8 and noise["precision"] < 0.2


def test_generate_is_seeded_and_batched_consistently():
    model = RealDigits(shift=0)
    labels = balanced_labels(30, 10)
    assert labels.tolist() == [k % 10 for k in range(30)]
    a = generate(model, labels, 30, seed=7, batch_size=10)
    b = generate(model, labels, 30, seed=7, batch_size=10)
    c = generate(model, labels, 30, seed=8, batch_size=10)
    assert a.shape == (30, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert balanced_labels(5, 0) is None  # unconditional models get no labels


# --- test and predict through the CLI -----------------------------------------------------------------


def test_test_scores_ema_samples_and_prints_them(runs, tmp_path, capsys):
    run = runs["with"]
    cli("test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
        "--trainer.logger.init_args.save_dir", str(tmp_path))
    out = capsys.readouterr().out
    for name in ("fid", "num_samples", "accuracy", "precision", "recall", "kid_mean", "loss_ema"):
        name = f"test/{name}"
        assert name in out
    records = pd.read_csv(next(tmp_path.glob("digits/version_*")) / "records" / "quality.csv")
    test_rows = records[records["metric"].str.startswith("test/")]
    assert set(test_rows["step"]) == {4}  # scored at the checkpoint's step
    assert test_rows.set_index("metric").loc["test/fid", "value"] > 0


def test_predict_writes_uint8_nhwc_npz_and_a_grid(runs, tmp_path):
    run = runs["with"]
    out = tmp_path / "samples"
    cli("predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
        "--data.init_args.batch_size", "16",
        "--trainer.callbacks+=dtr_lab.callbacks.SamplesWriter", "--trainer.callbacks.output_dir", str(out),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"))
    with np.load(out / "samples.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "labels"]
        images, labels = npz["arr_0"], npz["labels"]
    assert images.dtype == np.uint8 and images.shape == (PREDICT_SAMPLES, 8, 8, 3)  # NHWC, grey as RGB
    assert labels.tolist() == [k % 10 for k in range(PREDICT_SAMPLES)]
    assert len(np.unique(images)) > 2  # samples, not a constant image
    assert (out / "samples.png").is_file()


# --- bad input: one line, exit 2 -------------------------------------------------------------------------


def test_inception_features_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setattr("dtr_lab.metrics.features._has_torch_fidelity", lambda: True)
    line = cli_error(capsys, "fit", *DIGITS, *tiny(tmp_path), *quality_args(),
                     "--trainer.callbacks.feature", "inception")
    assert "inception" in line and "never downloaded" in line
    assert not (tmp_path / "digits").exists()  # failed before a run directory was written


def test_checkpoint_that_does_not_match_the_config(runs, tmp_path, capsys):
    run = runs["with"]
    line = cli_error(capsys, "test", "--config", str(run / "config.yaml"),
                     "--ckpt_path", str(run / "checkpoints/last.ckpt"),
                     "--model.net.init_args.size", "DiT-XS/2",
                     "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert "checkpoint was trained with net=DiT(DiT-T/2) but the config has net=DiT(DiT-XS/2)" in line


def test_fewer_test_samples_than_the_kid_subset(runs, tmp_path, capsys):
    line = cli_error(capsys, "test", *DIGITS, *tiny(tmp_path), *quality_args(),
                     "--trainer.callbacks.test_num_samples", "50",
                     "--ckpt_path", str(runs["with"] / "checkpoints/last.ckpt"))
    assert "test_num_samples=50" in line and "kid_subset_size=100" in line


def test_fewer_fit_samples_than_the_kid_subset(tmp_path, capsys):
    line = cli_error(capsys, "fit", *DIGITS, *tiny(tmp_path), *quality_args(num_samples=50))
    assert "num_samples=50" in line and "kid_subset_size=100" in line
    assert not (tmp_path / "digits").exists()


def test_bad_cadence_and_feature():
    with pytest.raises(DTRLabError, match="every_n_steps=-1"):
        SampleQuality(every_n_steps=-1)
    with pytest.raises(DTRLabError, match="feature='clip'"):
        SampleQuality(feature="clip")
