"""What a run prints: a progress bar that counts steps, and none of Lightning's lines that do not
concern a step-based diffusion run."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar

# Lightning's lines that say nothing about the run, each with why it is dropped
QUIET_LOGS = (
    "💡 Tip:",  # an advertisement for a cloud logger, printed at every start
)
QUIET_WARNINGS = (
    # Lightning 2.6 builds torch's deprecated LeafSpec itself; nothing a user can change
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # logging counts global steps, not batches of the epoch: a run of 12-batch epochs logs every 25 steps
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # predict's dataloader yields whole batches (batch_size=None); SamplesWriter reads the indices from them
    r"Couldn't infer the batch indices fetched from your dataloader",
)


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(QUIET_LOGS)


def quiet_lightning() -> None:
    """Drop QUIET_LOGS and QUIET_WARNINGS (idempotent); every other message of Lightning stays."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where rank_zero_info logs
    if not any(isinstance(f, _DropLines) for f in logger.filters):
        logger.addFilter(_DropLines())
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, titled by the step a max_steps run is at ("step 300/1500 ·
    epoch 24") rather than by an epoch out of max_epochs, which such a run leaves at −1 ("Epoch 24/-2")."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 0:
            return super()._get_train_description(current_epoch)
        description = f"step {trainer.global_step}/{trainer.max_steps} · epoch {current_epoch}"
        return description.ljust(len(self.validation_description))

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version, shown as "v_num: 0.000": the run folder says it
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)


def use_step_progress_bar(trainer: Trainer) -> None:
    """Swap the default progress bar that Lightning added (call only where the config named none)."""
    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        trainer.callbacks[trainer.callbacks.index(bar)] = StepProgressBar()
