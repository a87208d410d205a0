"""Where callbacks write, whichever Lightning logger is attached: the run's own folder, PNG files, and
images and figures sent to every logger in the form it holds.

The run folder holds config.yaml, records/, samples/ and routing/. TensorBoardLogger and CSVLogger have
a versioned folder of their own; an MLflow run's is its artifact folder (shown with the run in MLflow's
UI), a W&B run's is the run's local folder (wandb/run-<time>-<id>, beside W&B's own files/, where
W&B keeps a config.yaml of its own).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure

# images and figures as files: a CSVLogger run's images/<tag>/step<N>.png, an MLflow run's figure artifacts
IMAGES = "images"


def run_folder(logger: Logger) -> str | None:
    """A logger's folder for this run's files: MLflow's artifact folder (None when the artifacts are not
    on a local disk), W&B's run folder, else the logger's versioned log_dir. MLflow and W&B have a run on
    rank 0 only (elsewhere None: only rank 0 writes)."""
    if isinstance(logger, MLFlowLogger | WandbLogger) and rank_zero_only.rank != 0:
        return None
    if isinstance(logger, MLFlowLogger):
        uri = urlparse(logger.experiment.get_run(logger.run_id).info.artifact_uri)
        return url2pathname(uri.path) if uri.scheme in ("", "file") else None
    if isinstance(logger, WandbLogger):
        return str(Path(logger.experiment.dir).parent)  # experiment.dir: the run's files/
    return logger.log_dir


def log_dir(trainer: L.Trainer) -> str | None:
    """The run directory (the first logger's folder for this run), or None without a logger."""
    if trainer.logger is None:
        return None
    return run_folder(trainer.logger)


def save_png(image: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Save a (C, H, W) image in [0, 1] as a PNG, nearest-upscaled so 8×8 digits are visible."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(path)


def as_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (C, H, W) image in [0, 1] as the (H, W) or (H, W, 3) uint8 array MLflow and W&B take."""
    arr = (torch.as_tensor(image).detach().float().cpu().clamp(0, 1) * 255).round().byte()
    arr = arr.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


def image_file(logger: Logger, tag: str, step: int) -> Path:
    return Path(logger.log_dir) / IMAGES / tag / f"step{step:07d}.png"


def log_image(trainer: L.Trainer, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger: TensorBoard's add_image, MLflow's log_image
    (a keyed image series), W&B's wandb.Image, a PNG file for CSVLogger."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, torch.as_tensor(image), step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, as_array(image), key=tag, step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [as_array(image)], step=step)
        elif isinstance(logger, CSVLogger):
            save_png(torch.as_tensor(image), image_file(logger, tag, step), scale=1)


def log_figure(trainer: L.Trainer, tag: str, figure: Figure, step: int) -> None:
    """Send a matplotlib figure to every logger: TensorBoard's add_figure, MLflow's log_figure (an
    artifact images/<tag>/step<N>.png), W&B's wandb.Image, a PNG file for CSVLogger."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, step, close=False)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"{IMAGES}/{tag}/step{step:07d}.png")
        elif isinstance(logger, WandbLogger):
            logger.log_image(tag, [figure], step=step)
        elif isinstance(logger, CSVLogger):
            path = image_file(logger, tag, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
