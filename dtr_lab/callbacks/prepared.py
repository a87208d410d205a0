"""Analysis callbacks whose options are checked against the model and data once, before anything is
written: by the CLI before the trainer opens the run directory, or at setup when fit runs without it.

The same callbacks analyse a trained model without training: `python -m dtr_lab validate --ckpt_path …`
(a dtr_lab checkpoint or an imported official one, see dtr_lab.official) measures the loaded model once,
at its checkpoint's step, and writes the records and figures fit would write there.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn


class PreparedCallback(L.Callback):
    """Base: ``prepare(pl_module, datamodule)`` runs ``build`` once per (module, datamodule)."""

    _prepared_for: tuple[int, int] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage in ("fit", "validate"):
            self.prepare(pl_module, trainer.datamodule)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and trainer.is_global_zero:  # not fit's validation loop
            # the validation loop runs under inference mode; gradient analyses need autograd back
            with torch.inference_mode(False), torch.enable_grad():
                self.analyse(trainer, pl_module, getattr(pl_module, "checkpoint_step", 0))

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Measure the loaded model once, as a step of fit would, recorded at `step`."""
        raise NotImplementedError

    def prepare(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
        """Check the options and build what the callback measures with; writes nothing."""
        key = (id(pl_module), id(datamodule))
        if self._prepared_for != key:
            self.build(pl_module, datamodule)
            self._prepared_for = key

    def build(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
        raise NotImplementedError
