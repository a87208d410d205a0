"""RoutingMaps: the T×C mask table of every routed width, as an image, at fit start."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from dtr_lab.callbacks.logging import log_dir, save_png
from dtr_lab.routing import Router


class RoutingMaps(L.Callback):
    """Logs each mask table (rows: timesteps t, columns: channels; white = active)."""

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        routers = [m for m in pl_module.net.modules() if isinstance(m, Router)]
        out = log_dir(trainer)
        for router in routers:
            for name, table in router.named_buffers():
                image = table.detach().float().cpu()[None]  # (1, T, C)
                if trainer.logger is not None and hasattr(trainer.logger.experiment, "add_image"):
                    trainer.logger.experiment.add_image(f"routing/masks_{name}", image, 0)
                if out is not None:
                    save_png(image, Path(out) / "routing" / f"masks_{name}.png", scale=1)
