"""CIFAR-10, image-folder and latent DataModules on tiny fake data in the real formats."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fake_cifar_batches, write_fake_cifar, write_latents
from PIL import Image

from dtr_lab.data import cifar10
from dtr_lab.data.cifar10 import CIFAR10DataModule
from dtr_lab.data.image_folder import ImageFolderDataModule, center_crop_resize, load_image
from dtr_lab.data.latents import LatentDataModule
from dtr_lab.errors import DTRLabError


# ----------------------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("archive", [True, False])
def test_cifar_values_labels_and_layout(tmp_path, archive):
    write_fake_cifar(tmp_path, archive=archive)
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=8, random_flip=False, verify_checksum=False)
    dm.setup("fit")
    assert (dm.image_size, dm.in_channels, dm.num_classes) == (32, 3, 10)
    assert len(dm.train_set) == 20 and len(dm.val_set) == 4
    x, y = dm.train_set[6]  # batch 1 (data_batch_2), image 2: byte 12, label 3
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.full_like(x, 12 / 127.5 - 1)) and int(y) == 3
    x, y = dm.val_set[0]  # test batch (b = 5), image 0: byte 50, label 5, one pixel 255
    assert x[0, 0, 31] == 1.0 and int(y) == 5
    assert (x == 50 / 127.5 - 1).sum() == 3 * 32 * 32 - 1
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.long
    assert xb.min() >= -1 and xb.max() <= 1


def test_cifar_flip_doubles_training_set_with_mirror_images(tmp_path):
    write_fake_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), verify_checksum=False)
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.val_set) == 4  # validation is never flipped
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32)
    dm.train_set.dataset.tensors[0][7] = x  # a non-symmetric image to tell the mirror apart
    assert torch.equal(dm.train_set[7][0], x)
    assert torch.equal(dm.train_set[27][0][:, 5, 0], x[:, 5, 31])
    assert int(dm.train_set[27][1]) == int(dm.train_set[7][1])


def test_cifar_missing_root_fails_in_init(tmp_path):
    with pytest.raises(DTRLabError, match=r"data\.root=.*nowhere.*download true"):
        CIFAR10DataModule(root=str(tmp_path / "nowhere"))
    CIFAR10DataModule(root=str(tmp_path / "nowhere"), download=True)  # fetched later, in prepare_data


def test_cifar_truncated_archive_names_the_file(tmp_path):
    path = write_fake_cifar(tmp_path)
    path.write_bytes(path.read_bytes()[:300])
    dm = CIFAR10DataModule(root=str(tmp_path), verify_checksum=False)
    with pytest.raises(DTRLabError, match="cifar-10-python.tar.gz"):
        dm.setup("fit")


def test_cifar_garbage_batch_names_the_file(tmp_path):
    folder = write_fake_cifar(tmp_path, archive=False)
    (folder / "data_batch_3").write_bytes(b"\x80\x04not a pickle at all")
    with pytest.raises(DTRLabError, match="data_batch_3"):
        CIFAR10DataModule(root=str(tmp_path)).setup("fit")


def test_cifar_download_checks_md5_and_leaves_nothing_on_mismatch(tmp_path, monkeypatch):
    source = write_fake_cifar(tmp_path / "src")
    monkeypatch.setattr(
        cifar10.urllib.request, "urlretrieve", lambda url, dst: Path(dst).write_bytes(source.read_bytes())
    )
    root = tmp_path / "data"
    dm = CIFAR10DataModule(root=str(root), download=True)
    with pytest.raises(DTRLabError, match="md5"):
        dm.prepare_data()
    assert not any(root.iterdir())
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(source.read_bytes()).hexdigest())
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.val_set) == 4


class CreatesFile:
    """A pickle payload: unpickling it calls open(path, "w"), which creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize("archive", [True, False])
def test_cifar_crafted_pickle_runs_nothing_and_is_one_error(tmp_path, archive):
    """Even with the checksum off, a batch whose unpickling would call open() is refused before the call."""
    marker = tmp_path / "payload_ran"
    root = tmp_path / "data"
    batches = fake_cifar_batches()
    batches["data_batch_2"] = {b"data": CreatesFile(marker), b"labels": [0]}
    write_fake_cifar(root, archive=archive, batches=batches)
    refused = r"data_batch_2: refused to unpickle, it asks for (io|builtins)\.open"
    with pytest.raises(DTRLabError, match=refused):
        CIFAR10DataModule(root=str(root), verify_checksum=False).setup("fit")
    assert not marker.exists()


def test_cifar_archive_md5_is_checked_before_reading(tmp_path, monkeypatch):
    path = write_fake_cifar(tmp_path)
    published = r"md5 [0-9a-f]{32}, not the published c58f30108f718f92721af3b95e74349a"
    with pytest.raises(DTRLabError, match=published):
        CIFAR10DataModule(root=str(tmp_path)).setup("fit")  # the fake is not the official archive
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(path.read_bytes()).hexdigest())
    dm = CIFAR10DataModule(root=str(tmp_path))  # the same bytes under the published md5 are read
    dm.setup("fit")
    assert len(dm.val_set) == 4


def test_cifar_reads_python2_batches_like_the_official_ones(tmp_path):
    """Protocol-2 pickles with the official batches' keys (the official files are Python 2 pickles;
    Python 3 writes their byte strings through _codecs.encode, which the reader allows)."""
    folder = write_fake_cifar(tmp_path, archive=False)
    for name, batch in fake_cifar_batches().items():
        batch = {**batch, b"batch_label": b"x", b"filenames": [b"a.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    dm = CIFAR10DataModule(root=str(tmp_path), random_flip=False)
    dm.setup("fit")
    assert len(dm.train_set) == 20 and int(dm.val_set[0][1]) == 5


# ------------------------------------------------------------------------------------- image folder
def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_center_crop_resize_keeps_the_centre_square():
    img = np.zeros((32, 64, 3), np.uint8)
    img[:, 16:48] = 255  # the centre square is white, the sides black
    out = np.asarray(center_crop_resize(Image.fromarray(img), 16))
    assert out.shape == (16, 16, 3) and (out == 255).all()
    grey = np.asarray(center_crop_resize(Image.fromarray(np.full((30, 17, 3), 77, np.uint8)), 12))
    assert grey.shape == (12, 12, 3) and np.abs(grey.astype(int) - 77).max() <= 1


def make_folder(root: Path, corrupt: bool = True) -> None:
    for k in range(3):
        save_png(root / "cat" / f"{k}.png", np.full((20, 24, 3), 10, np.uint8))
        save_png(root / "dog" / f"{k}.png", np.full((24, 20, 3), 200, np.uint8))
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not image data")


def test_image_folder_skips_unreadable_files_with_a_count(tmp_path):
    make_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, batch_size=2, val_fraction=0.2, random_flip=False)
    assert (dm.image_size, dm.in_channels, dm.num_classes) == (8, 3, 2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        dm.setup("fit")
    assert [p.name for p in dm.skipped] == ["broken.png"]
    assert len(dm.train_set) + len(dm.val_set) == 6 and len(dm.val_set) == 1
    for x, y in [dm.train_set[i] for i in range(len(dm.train_set))]:
        assert x.shape == (3, 8, 8)
        assert torch.allclose(x, torch.full_like(x, (10 if y == 0 else 200) / 127.5 - 1))  # "cat" < "dog"
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (2, 3, 8, 8) and yb.dtype == torch.long


def test_image_folder_reads_16_bit_png_scaled_not_clipped(tmp_path):
    """A 16-bit grayscale gradient, level 257·k (k = 0…255): read as k (65535 -> 255), not clipped at 255."""
    levels = (257 * np.arange(256, dtype=np.uint16)).reshape(16, 16)
    for k in range(2):
        Image.fromarray(levels).save(tmp_path / f"{k}.png")
    assert Image.open(tmp_path / "0.png").mode.startswith("I")  # really stored as 16 bits
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, val_fraction=0.5, random_flip=False)
    dm.setup("fit")
    x, _ = dm.train_set[0]
    expected = torch.arange(256, dtype=torch.float32).view(16, 16) / 127.5 - 1
    for channel in x:
        torch.testing.assert_close(channel, expected)
    assert (x == 1).float().mean() == 1 / 256  # one white pixel, not 98 %


def float_image(nan: bool) -> Image.Image:
    """Float32 grayscale in [0, 1): a gradient 0…0.99, with a 2×2 NaN patch if asked."""
    levels = (np.arange(64, dtype=np.float32) / 64).reshape(8, 8)
    if nan:
        levels[2:4, 2:4] = np.nan
    return Image.fromarray(levels, "F")


def palette_with_transparency() -> Image.Image:
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8).repeat(4, 0).repeat(4, 1), "P")
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (declared transparent), 1 blue
    img.info["transparency"] = 0
    return img


def half_transparent() -> Image.Image:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 200, 255  # red; the top half opaque, the bottom half transparent
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize(
    "name, make, corner, bottom_left",
    [
        ("float.tif", lambda: float_image(nan=False), 0, round(56 / 64 * 255)),  # not black
        ("palette.png", palette_with_transparency, (255, 255, 255), (0, 0, 255)),  # transparent: white
        ("rgba.png", half_transparent, (200, 0, 0), (255, 255, 255)),
        ("gray16.tif", lambda: Image.fromarray(np.full((8, 8), 65535, np.uint16)), 255, 255),
    ],
)
def test_image_modes_decode_to_what_they_show(tmp_path, name, make, corner, bottom_left):
    """PIL returns float, 16-bit, palette and alpha modes as stored; each decodes to its 8-bit RGB look."""
    make().save(tmp_path / name)
    x = load_image(tmp_path / name, 8)  # (3, 8, 8) uint8
    expected = [torch.tensor(v).expand(3) for v in (corner, bottom_left)]
    assert x[:, 0, 0].tolist() == expected[0].tolist() and x[:, 7, 0].tolist() == expected[1].tolist()


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: float_image(nan=True), "4 pixels are NaN or infinite"),
        (lambda: Image.fromarray(np.full((8, 8), 2.0, np.float32), "F"), "outside 0…1"),
    ],
    ids=["nan", "above 1"],
)
def test_image_folder_refuses_pixels_that_are_no_image_in_one_line(tmp_path, make, needle):
    """A float TIFF with a NaN patch or levels above 1 stops training naming the file, never black pixels."""
    make().save(tmp_path / "bad.tif")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_fraction=0.0, random_flip=False)
    dm.setup("fit")
    with pytest.raises(DTRLabError, match=rf"bad\.tif: cannot decode this image \(.*{needle}.*re-save"):
        [dm.train_set[i] for i in range(len(dm.train_set))]


def test_image_folder_file_that_fails_to_decode_is_named(tmp_path):
    make_folder(tmp_path, corrupt=False)
    path = tmp_path / "cat" / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])  # header intact, pixel data cut
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_fraction=0.0, random_flip=False)
    dm.setup("fit")
    assert not dm.skipped  # the cheap setup check reads headers only
    with pytest.raises(DTRLabError, match=r"cut\.jpg"):
        [dm.train_set[i] for i in range(len(dm.train_set))]


def test_image_folder_stop_names_the_bad_file(tmp_path):
    make_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, on_bad_file="stop")
    with pytest.raises(DTRLabError, match=r"broken\.png.*on_bad_file=skip"):
        dm.setup("fit")


def test_image_folder_flat_is_unconditional_and_flip_doubles(tmp_path):
    for k in range(4):
        save_png(
            tmp_path / f"{k}.png", np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 10, (16, 1, 3))
        )
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, val_fraction=0.25)
    dm.setup("fit")
    assert dm.num_classes == 0 and len(dm.train_set) == 2 * 3
    x, y = dm.train_set[0]
    assert torch.equal(dm.train_set[3][0], x.flip(-1)) and not torch.equal(x, x.flip(-1)) and y == 0


@pytest.mark.parametrize("make", ["missing", "empty", "empty_class"])
def test_image_folder_bad_roots_fail_in_init(tmp_path, make):
    if make == "empty":
        (tmp_path / "notes.txt").write_text("no images here")
    if make == "empty_class":
        make_folder(tmp_path, corrupt=False)
        (tmp_path / "zebra").mkdir()
    root = tmp_path / "nowhere" if make == "missing" else tmp_path
    with pytest.raises(DTRLabError, match="data.root|no images"):
        ImageFolderDataModule(str(root))


def test_latents_read_across_shards_with_flip_twins(tmp_path):
    write_latents(tmp_path)
    dm = LatentDataModule(str(tmp_path), batch_size=2, val_fraction=0.2)
    assert (dm.image_size, dm.in_channels, dm.num_classes) == (2, 4, 5)
    dm.setup("fit")
    assert len(dm.val_set) == 1 and len(dm.train_set) == 2 * 4
    seen = set()
    for i in range(4):
        z, y = dm.train_set[i]
        k = int(z[0, 0, 0])
        assert z.dtype == torch.float32 and z.shape == (4, 2, 2) and (z == k).all() and y == k % 5
        twin, y_twin = dm.train_set[4 + i]
        assert (twin == -k).all() and y_twin == y
        seen.add(k)
    ((z_val, _),) = [dm.val_set[0]]
    assert seen | {int(z_val[0, 0, 0])} == {0, 1, 2, 3, 4}  # train and val split all samples


def test_latents_without_flip_pairs_ignore_twins(tmp_path):
    write_latents(tmp_path)
    dm = LatentDataModule(str(tmp_path), val_fraction=0.0, flip_pairs=False)
    dm.setup("fit")
    assert len(dm.train_set) == 5 and all(dm.train_set[i][0].min() >= 0 for i in range(5))


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda r: np.save(r / "latents_00001.npy", np.zeros((2, 4, 3, 3), np.float16)), "latents_00001.npy"),
        (lambda r: np.save(r / "labels_00000.npy", np.arange(2)), "labels_00000.npy"),
        (
            lambda r: np.save(r / "latents_flip_00001.npy", np.zeros((1, 4, 2, 2), np.float16)),
            "latents_flip_00001",
        ),
        (lambda r: (r / "labels_00001.npy").unlink(), "labels_00001.npy"),
        (lambda r: (r / "latents_00000.npy").write_bytes(b"garbage"), "latents_00000.npy"),
    ],
)
def test_latents_bad_shards_name_the_shard(tmp_path, damage, named):
    write_latents(tmp_path)
    damage(tmp_path)
    dm = LatentDataModule(str(tmp_path))
    with pytest.raises(DTRLabError, match=named):
        dm.setup("fit")


def test_latents_missing_meta_or_shard(tmp_path):
    with pytest.raises(DTRLabError, match="data.root"):
        LatentDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(DTRLabError, match="meta.json"):
        LatentDataModule(str(tmp_path))
    write_latents(tmp_path)
    for name in ("latents_00001.npy", "labels_00001.npy", "latents_flip_00001.npy"):
        (tmp_path / name).unlink()
    with pytest.raises(DTRLabError, match="hold 3 samples, meta.json says 5"):
        LatentDataModule(str(tmp_path)).setup("fit")


def test_latent_decode_without_diffusers_is_a_clear_error(tmp_path, monkeypatch):
    write_latents(tmp_path)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(DTRLabError, match=r"dtr_lab\[vae\]"):
        LatentDataModule(str(tmp_path)).decode(torch.zeros(1, 4, 2, 2))


def test_image_modules_decode_as_the_identity(tmp_path):
    """The data space of image modules is images: their decode returns its input."""
    write_fake_cifar(tmp_path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert CIFAR10DataModule(root=str(tmp_path)).decode(x) is x
