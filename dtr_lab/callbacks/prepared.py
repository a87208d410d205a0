"""Analysis callbacks whose options are checked against the model and data once, before anything is
written: by the CLI before the trainer opens the run directory, or at setup when fit runs without it."""

from __future__ import annotations

import lightning as L


class PreparedCallback(L.Callback):
    """Base: ``prepare(pl_module, datamodule)`` runs ``build`` once per (module, datamodule)."""

    _prepared_for: tuple[int, int] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.prepare(pl_module, trainer.datamodule)

    def prepare(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
        """Check the options and build what the callback measures with; writes nothing."""
        key = (id(pl_module), id(datamodule))
        if self._prepared_for != key:
            self.build(pl_module, datamodule)
            self._prepared_for = key

    def build(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
        raise NotImplementedError
