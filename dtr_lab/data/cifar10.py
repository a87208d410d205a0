"""CIFAR-10 (Krizhevsky 2009) from its python-format archive or extracted folder.

The batches are pickles, and unpickling runs whatever a crafted file asks for. Two guards: the
archive's MD5 is checked against the published one before it is opened (`verify_checksum`, on by
default; off for an archive made locally in the same format), and every batch, from the archive or
the extracted folder (which has no published checksum), is read by an unpickler that builds only
the types real batches hold (dict, list, bytes, str, int and numpy arrays), so a crafted pickle
fails before any of its code runs.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from dtr_lab.data.base import ImageDataModule, tensor_dataset
from dtr_lab.data.image_folder import Mirrored
from dtr_lab.errors import DTRLabError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]
TEST_BATCH = "test_batch"
FIX = "set data.root to the folder holding cifar-10-python.tar.gz, or pass --data.init_args.download true"


def locate(root: Path) -> Path | None:
    """The extracted batch folder or the archive under root (or root itself); None when neither is there."""
    candidates = [root / FOLDER, root, root / ARCHIVE] if root.is_dir() else [root]
    for path in candidates:
        if (path / TEST_BATCH).is_file() or (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))):
            return path
    return None


# numpy's array reconstructor, pickled as numpy.core.multiarray._reconstruct (numpy 1, the official
# batches) or numpy._core.multiarray._reconstruct (numpy 2)
RECONSTRUCT = np.zeros(0).__reduce__()[0]


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that no CIFAR-10 batch holds."""


class BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds; any other global (a function to call) is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # how Python 3 writes bytes in a protocol-2 pickle (str -> bytes; runs no code)
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise ForbiddenGlobal(f"{module}.{name}")
        return self.ALLOWED[module, name]


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (N, 3, 32, 32) uint8 images and (N,) labels."""
    try:
        # encoding="bytes": the official batches are Python 2 pickles, with bytes keys (b"data")
        batch = BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except ForbiddenGlobal as err:
        raise DTRLabError(
            f"{source}: refused to unpickle, it asks for {err}, which no CIFAR-10 batch holds (a crafted or "
            f"foreign file); delete it and re-download ({FIX})"
        ) from None
    except Exception as err:  # unpickling damaged bytes can raise almost any exception type
        raise DTRLabError(
            f"{source}: not a readable CIFAR-10 batch ({err!r}); re-download it ({FIX})"
        ) from err
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DTRLabError(f"{source}: labels do not match the {len(images)} images in 0..9; re-download it")
    return images, labels


def read_batches(path: Path, verify_checksum: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every batch by name, from the folder or, without extracting it, from the archive (whose MD5 is
    checked first unless verify_checksum is false)."""
    names = TRAIN_BATCHES + [TEST_BATCH]
    if path.is_file() and verify_checksum and (md5 := md5_of(path)) != ARCHIVE_MD5:
        raise DTRLabError(
            f"{path} has md5 {md5}, not the published {ARCHIVE_MD5}: it is damaged or not the official "
            f"archive; delete it and re-download ({FIX}), or set data.verify_checksum=false for an "
            "archive you made yourself"
        )
    raws: dict[str, tuple[bytes, str]] = {}
    if path.is_dir():
        for name in names:
            if not (path / name).is_file():
                raise DTRLabError(f"{path / name} is missing; re-download CIFAR-10 ({FIX})")
            raws[name] = (path / name).read_bytes(), str(path / name)
    else:
        try:
            with tarfile.open(path, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for name in names:
                    if name not in members:
                        raise DTRLabError(f"{path} has no {name}; re-download CIFAR-10 ({FIX})")
                    raws[name] = tar.extractfile(members[name]).read(), f"{path}:{name}"
        except (tarfile.TarError, OSError, EOFError) as err:  # zlib and gzip errors are OSError/EOFError
            raise DTRLabError(
                f"{path}: corrupt or truncated archive ({err}); delete it and re-download ({FIX})"
            ) from err
    return {name: parse_batch(raw, source) for name, (raw, source) in raws.items()}


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 127.5 - 1  # uint8 0..255 -> [-1, 1]


def download(root: Path) -> Path:
    """Fetches the archive into root and checks its md5; a failed or corrupt download leaves no file."""
    root.mkdir(parents=True, exist_ok=True)
    target, partial = root / ARCHIVE, root / (ARCHIVE + ".part")
    try:
        urllib.request.urlretrieve(URL, partial)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise DTRLabError(
            f"cannot download {URL} ({err}); download it by hand into data.root={root}"
        ) from err
    md5 = md5_of(partial)
    if md5 != ARCHIVE_MD5:
        partial.unlink()
        raise DTRLabError(f"{URL} arrived with md5 {md5}, expected {ARCHIVE_MD5}; retry the download")
    partial.rename(target)
    return target


class CIFAR10DataModule(ImageDataModule):
    """50 000 training and 10 000 test 32×32 RGB images in 10 classes; validation is the test batch."""

    image_size = 32
    in_channels = 3
    num_classes = 10

    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        random_flip: bool = True,
        verify_checksum: bool = True,
    ) -> None:
        """
        Args:
            root: folder holding cifar-10-python.tar.gz or its extracted cifar-10-batches-py/.
            download: fetch the archive into root when it is not there (needs a network).
            batch_size: training batch size per device.
            num_workers: DataLoader workers (0 is fine: the set is held in memory).
            seed: seeds the per-epoch shuffling.
            random_flip: train on every image and its horizontal mirror image.
            verify_checksum: check the archive's MD5 against the published one before reading it
                (false for an archive made locally in the same format).
        """
        super().__init__(batch_size, num_workers, seed)
        self.root = Path(root)
        self.download = download
        self.random_flip = random_flip
        self.verify_checksum = verify_checksum
        # a bad path must fail here, before the Trainer creates a run directory
        if not download and locate(self.root) is None:
            raise DTRLabError(f"data.root={root} holds no CIFAR-10 ({ARCHIVE} or {FOLDER}/); {FIX}")

    def prepare_data(self) -> None:
        if self.download and locate(self.root) is None:
            download(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        path = locate(self.root)
        if path is None:
            raise DTRLabError(f"data.root={self.root} holds no CIFAR-10 ({ARCHIVE} or {FOLDER}/); {FIX}")
        batches = read_batches(path, self.verify_checksum)
        x_train = np.concatenate([batches[name][0] for name in TRAIN_BATCHES])
        y_train = np.concatenate([batches[name][1] for name in TRAIN_BATCHES])
        train = tensor_dataset(to_unit_range(x_train), torch.from_numpy(y_train))
        self.train_set = Mirrored(train) if self.random_flip else train
        x_test, y_test = batches[TEST_BATCH]
        self.val_set = tensor_dataset(to_unit_range(x_test), torch.from_numpy(y_test))
