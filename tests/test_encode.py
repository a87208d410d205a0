"""`python -m dtr_lab.encode` with a tiny randomly initialised AutoencoderKL: encode -> LatentDataModule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dtr_lab.data.image_folder import load_image
from dtr_lab.data.latents import LatentDataModule
from dtr_lab.encode import main

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    """Two classes, five random 20×16 images (distinct, non-symmetric) and one unreadable file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls, n in (("a", 3), ("b", 2)):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")
    (root / "b" / "bad.png").write_bytes(b"not a png")
    return root


def add_truncated_jpeg(folder: Path) -> None:
    """A JPEG cut short: its header passes the setup check, decoding it fails."""
    path = folder / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def encode(images: Path, out: Path, vae_dir: Path, *extra: str) -> None:
    main(
        [
            str(images),
            str(out),
            "--vae",
            str(vae_dir),
            "--image-size",
            "16",
            "--shard-size",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            *extra,
        ]
    )


def test_encode_writes_scaled_posterior_means_in_shards(images, tmp_path, vae_dir):
    out = tmp_path / "latents"
    add_truncated_jpeg(images / "a")
    encode(images, out, vae_dir, "--flip", "--num-workers", "2")  # the later --num-workers wins
    meta = json.loads((out / "meta.json").read_text())
    assert meta["scaling_factor"] == pytest.approx(0.18215) and meta["latent_shape"] == [4, 16, 16]
    assert (meta["num_classes"], meta["num_samples"], meta["flip"]) == (2, 5, True)
    assert sorted(Path(p).name for p in meta["skipped"]) == ["bad.png", "cut.jpg"]
    assert sorted(p.name for p in out.glob("latents_0*.npy")) == [f"latents_{k:05d}.npy" for k in range(3)]
    labels = np.concatenate([np.load(out / f"labels_{k:05d}.npy") for k in range(3)])
    assert labels.tolist() == [0, 0, 0, 1, 1]

    # independent expectation: the VAE applied directly to the same resized image
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    x = load_image(images / "b" / "0.png", 16).float()[None] / 127.5 - 1  # 4th sample: shard 1, row 1
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mean * 0.18215
        expected_flip = vae.encode(x.flip(-1)).latent_dist.mean * 0.18215
    assert np.allclose(np.load(out / "latents_00001.npy")[1], expected[0].numpy(), atol=1e-5)
    assert np.allclose(np.load(out / "latents_flip_00001.npy")[1], expected_flip[0].numpy(), atol=1e-5)
    assert not np.allclose(expected, expected_flip, atol=1e-3)  # the twin is a different latent


def test_encode_round_trips_through_the_datamodule_and_decodes(images, tmp_path, vae_dir):
    out = tmp_path / "latents"
    encode(images, out, vae_dir, "--flip")
    dm = LatentDataModule(str(out), batch_size=2, val_fraction=0.2)
    assert (dm.image_size, dm.in_channels, dm.num_classes) == (16, 4, 2)
    dm.setup("fit")
    assert len(dm.train_set) == 2 * 4 and len(dm.val_set) == 1
    stored = {k: np.load(out / f"latents_{k:05d}.npy") for k in range(3)}
    all_latents = np.concatenate(list(stored.values()))
    z, y = dm.train_set[0]
    match = [k for k in range(5) if np.allclose(all_latents[k], z.numpy())]
    assert len(match) == 1 and y == [0, 0, 0, 1, 1][match[0]]

    zb, yb = next(iter(dm.train_dataloader()))
    images_out = dm.decode(zb)
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        expected = vae.decode(zb / 0.18215).sample.clamp(-1, 1)
    assert images_out.shape == (2, 3, 16, 16) and torch.allclose(images_out, expected, atol=1e-5)


def test_encode_sample_differs_from_mean_and_is_seeded(images, tmp_path, vae_dir):
    encode(images, tmp_path / "mean", vae_dir)
    encode(images, tmp_path / "s1", vae_dir, "--sample", "--seed", "3")
    encode(images, tmp_path / "s2", vae_dir, "--sample", "--seed", "3")
    mean, s1, s2 = (np.load(tmp_path / d / "latents_00000.npy") for d in ("mean", "s1", "s2"))
    assert np.array_equal(s1, s2) and not np.allclose(s1, mean)
    assert not (tmp_path / "mean" / "latents_flip_00000.npy").exists()


def run_main(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_encode_errors_are_one_line_exit_2(images, tmp_path, vae_dir, capsys):
    err = run_main(
        capsys, str(images), str(tmp_path / "o1"), "--vae", str(tmp_path / "no_vae"), "--num-workers", "0"
    )
    assert "--vae" in err and "save_pretrained" in err
    err = run_main(
        capsys,
        str(images),
        str(tmp_path / "o2"),
        "--vae",
        str(vae_dir),
        "--image-size",
        "16",
        "--num-workers",
        "0",
        "--on-bad-file",
        "stop",
    )
    assert "bad.png" in err
    (images / "b" / "bad.png").unlink()
    add_truncated_jpeg(images / "b")
    err = run_main(
        capsys,
        str(images),
        str(tmp_path / "o3"),
        "--vae",
        str(vae_dir),
        "--image-size",
        "16",
        "--num-workers",
        "0",
        "--on-bad-file",
        "stop",
    )
    assert "cut.jpg" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("do not touch")
    err = run_main(capsys, str(images), str(tmp_path / "full"), "--vae", str(vae_dir))
    assert "OUT_DIR" in err and (tmp_path / "full" / "keep.txt").read_text() == "do not touch"


def test_encode_module_entry_point(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtr_lab.encode",
            str(tmp_path / "missing"),
            str(tmp_path / "out"),
            "--vae",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "IMAGE_FOLDER" in result.stderr and "Traceback" not in result.stderr
