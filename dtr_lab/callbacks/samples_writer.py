"""SamplesWriter: `predict`'s samples as one .npz in the layout of ADM's evaluator.py (arr_0: uint8 NHWC
RGB, grey data repeated to 3 channels; labels: the class of each), plus a PNG grid.

Each batch goes to disk as it is drawn (OUT/samples.batches/batch_<first index>.npz, written atomically)
and nothing is kept, so memory holds one batch whatever the number of samples (50K at 256² are 9.8 GB).
Once every rank is done, rank 0 streams the batches into OUT/samples.npz one at a time and removes them.
A predict killed on the way (any signal, a full disk) is finished by the same command with the same
output_dir: it draws only the missing batches, and since a batch's noise depends only on its first sample
index, the file equals an uninterrupted run's. OUT/samples.batches/plan.json holds what the batches were
drawn with (the EMA weights' hash, the sampling options, the batch size); a run that differs is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from dtr_lab.callbacks.logging import log_dir, save_png
from dtr_lab.callbacks.sample_grid import image_grid
from dtr_lab.errors import DTRLabError
from dtr_lab.storage.temp_files import remove_dead_writers_temps, write_atomically

OPTION = "--trainer.callbacks.output_dir"
# the hyperparameters that decide what `predict` draws, beside the EMA weights and the batch size
SAMPLING = ("num_samples", "seed", "sampler", "sample_steps", "respacing", "fixed_variance", "guidance_scale",
            "clip_x0")


class SamplesWriter(BasePredictionWriter):
    """Writes OUT/samples.npz (arr_0: (N, H, W, 3) uint8, labels: (N,)) and OUT/samples.png in `predict`,
    batch by batch, resumable."""

    def __init__(
        self, output_dir: str | None = None, grid_size: int = 100, nrow: int = 10, overwrite: bool = False
    ) -> None:
        """
        Args:
            output_dir: where to write; default the run directory of this `predict` call (a new one each
                time: give a folder to be able to resume).
            grid_size: samples shown in the PNG grid (the first ones).
            nrow: images per grid row.
            overwrite: replace an existing OUT/samples.npz (kept until the new one is complete).
        """
        super().__init__(write_interval="batch")
        self.output_dir, self.grid_size, self.nrow, self.overwrite = output_dir, grid_size, nrow, overwrite
        self.path: Path | None = None

    @property
    def batches(self) -> Path:
        return self.path.with_suffix(".batches")

    def batch_file(self, start: int) -> Path:
        return self.batches / f"batch_{start:09d}.npz"

    # ------------------------------------------------------------------ hooks
    # setup and teardown run on every rank; on_predict_start and the batch hooks only on a rank with batches
    # left to draw (a resumed run may have fewer batches than ranks), so only the former meet collectively
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before the data: what is on disk already, so the dataloader leaves those batches out."""
        if stage != "predict":
            return
        # rank 0's folder on every rank: a logger's default version may differ between processes
        out = Path(self.output_dir or log_dir(trainer) or trainer.default_root_dir)
        out = trainer.strategy.broadcast(out)
        self.path, self.checked = out / "samples.npz", False
        if (self.path.exists() or self.path.is_symlink()) and not self.overwrite:
            raise DTRLabError(
                f"{self.path} exists; give another {OPTION}, or set --trainer.callbacks.overwrite true to "
                "replace it"
            )
        self.starts = [int(index[0]) for index, _ in pl_module.predict_batches()]
        done = {s for s in self.starts if self.batch_file(s).is_file()}
        pl_module.predict_done = frozenset(done)
        # the predict loop would keep every batch's output until the end: the writer holds the samples
        trainer.predict_loop.return_predictions = False
        # a rank may have no batch left to draw (a resumed run, or fewer batches than ranks)
        self.allowed_empty = pl_module.allow_zero_length_dataloader_with_multiple_devices
        pl_module.allow_zero_length_dataloader_with_multiple_devices = True
        if trainer.is_global_zero:
            remove_dead_writers_temps(self.batches)  # a killed run's half-written batch or merge
            remove_dead_writers_temps(out)
            if done:
                print(f"dtr_lab: resuming {self.batches}: {len(done)} of {len(self.starts)} batches on disk")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_plan(pl_module)  # the weights are loaded now; nothing is drawn yet

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int, dataloader_idx: int
    ) -> None:
        images = rgb(prediction["images"].numpy())  # (n, H, W, 3) uint8
        labels = prediction["labels"].numpy()
        write_atomically(
            self.batch_file(int(batch[0][0])), lambda f: np.savez(f, images=images, labels=labels),
            what=f"the samples ({OPTION})", then=", then run the same predict again to resume",
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After a predict that ended well (Lightning skips this hook after an exception): rank 0 merges."""
        if stage != "predict":
            return
        pl_module.predict_done = frozenset()  # a later predict of this module starts from its own folder
        pl_module.allow_zero_length_dataloader_with_multiple_devices = self.allowed_empty
        trainer.strategy.barrier()  # every rank's batches are on disk
        if not trainer.is_global_zero:
            return
        if not self.checked:  # every batch was on disk already: they must still be this model's
            self.check_plan(pl_module)
        files = [self.batch_file(s) for s in self.starts]
        merge_batches(files, self.path, what=f"the samples ({OPTION})")
        grid = torch.from_numpy(first_images(files, self.grid_size)).permute(0, 3, 1, 2)  # (n, 3, H, W)
        save_png(image_grid(grid.float() / 127.5 - 1, self.nrow), self.path.with_suffix(".png"))
        shutil.rmtree(self.batches)  # every sample is in the .npz now
        print(f"dtr_lab: wrote {pl_module.hparams.num_samples} samples to {self.path}")

    def check_plan(self, pl_module: L.LightningModule) -> None:
        """Refuse batches on disk drawn with other weights or options; record the plan where there is none
        (every rank that draws writes the same file, atomically, before its first batch)."""
        plan = json.loads(json.dumps(sampling_plan(pl_module, self.starts), default=str))
        saved = self.saved_plan()
        if saved is None:
            write_atomically(self.batches / "plan.json", lambda f: f.write(json.dumps(plan).encode()),
                             what=f"the samples ({OPTION})")
        elif saved != plan:
            key = next(k for k in sorted(plan.keys() | saved.keys()) if saved.get(k) != plan.get(k))
            raise DTRLabError(
                f"{self.batches} holds samples of another predict ({key}: {saved.get(key)!r} there, "
                f"{plan.get(key)!r} here); run that predict again to finish it, give another {OPTION}, "
                f"or delete {self.batches} to start over"
            )
        self.checked = True

    def saved_plan(self) -> dict | None:
        """The plan of the batches on disk; None where there are none; refused where they have no plan."""
        plan = self.batches / "plan.json"
        if not plan.exists() and not any(self.batches.glob("batch_*.npz")):  # killed before its first write
            return None
        try:
            return json.loads(plan.read_text())
        except (OSError, ValueError) as exc:
            raise DTRLabError(
                f"{self.batches} holds no readable plan.json ({exc.__class__.__name__}), so its samples "
                f"cannot be checked; give another {OPTION}, or delete {self.batches}"
            ) from exc


def sampling_plan(pl_module: L.LightningModule, starts: list[int]) -> dict[str, Any]:
    """What decides the samples of `predict`: the EMA weights (a SHA-256 of their bytes, about 0.3 GB/s on
    these shared CPU cores: ~6 s for DiT-L/2's 1.8 GB), the sampling hyperparameters and the batches
    (their first indices)."""
    digest = hashlib.sha256()
    for name, value in pl_module.ema.module.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy())  # hashed in place
    hp = pl_module.hparams
    return {"ema_sha256": digest.hexdigest(), **{k: hp[k] for k in SAMPLING}, "batch_starts": starts}


def rgb(images: np.ndarray) -> np.ndarray:
    """(n, H, W, C) uint8 as the evaluator's RGB: a grey channel repeated three times."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def merge_batches(files: list[Path], path: Path, what: str) -> None:
    """The batch files' images and labels, in order, as one .npz at path (np.savez's layout: an
    uncompressed zip of .npy files), streamed so that one batch is in memory at a time."""
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DTRLabError(f"{path}: {len(missing)} batches are missing ({missing[0]}, ...); run the same "
                          "predict again to draw them")
    with np.load(files[0]) as first:
        image, label = first["images"], first["labels"]
    n = sum(len(labels) for labels in arrays(files, "labels"))

    def write(file: Any) -> None:
        with zipfile.ZipFile(file, "w", allowZip64=True) as archive:
            write_npy(archive, "arr_0", (n, *image.shape[1:]), image.dtype, arrays(files, "images"))
            write_npy(archive, "labels", (n,), label.dtype, arrays(files, "labels"))

    write_atomically(path, write, what=what, then=", then run the same predict again to merge its batches")


def arrays(files: list[Path], key: str) -> Iterator[np.ndarray]:
    for f in files:
        with np.load(f) as batch:
            yield batch[key]


def write_npy(archive: zipfile.ZipFile, name: str, shape: tuple, dtype: np.dtype, parts: Iterator) -> None:
    """One NAME.npy member written from parts (C order) without holding them together; dated 1980-01-01
    (zip's first date), so that the same samples make the same bytes."""
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o600 << 16  # the member's mode, as np.savez's
    with archive.open(info, "w", force_zip64=True) as member:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(member, header)
        for part in parts:
            member.write(np.ascontiguousarray(part, dtype=dtype).data)  # a view: no copy


def first_images(files: list[Path], n: int) -> np.ndarray:
    """The first n images of the batch files, reading no more files than needed."""
    out, count = [], 0
    for images in arrays(files, "images"):
        out.append(images[: n - count])
        count += len(out[-1])
        if count >= n:
            break
    return np.concatenate(out)
