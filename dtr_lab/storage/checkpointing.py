"""Run checkpoints that survive faults: atomic writes, the final step saved before end-of-fit analyses,
a checkpoint on Ctrl-C / SIGTERM, and a run that stops instead of saving a diverged model.

Faults and what each leaves behind (tests/test_faults.py tries every one):
- kill -9 or a full disk during a save: the previous file under that name, complete; the new bytes
  only under a hidden temporary name (`.last.ckpt.HOST-PID.*.tmp`) in the same directory, removed when
  the write fails with an exception (a refused write, whatever torch.save turns it into, is one line),
  or, after a kill, by the next start of the run (resumed from it, or into the same folder).
- Ctrl-C or SIGTERM: training stops at the end of the current step, last.ckpt holds that step, and
  the CLI prints one line and exits 128 + the signal number. A second Ctrl-C stops at once.
- an exception after a step (a failing analysis, validation, sampling): last.ckpt holds that step
  before the exception propagates.
- a non-finite loss or weight: the run stops with one line naming the step; nothing non-finite is
  ever written over a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dtr_lab.errors import DTRLabError
from dtr_lab.storage.temp_files import remove_dead_writers_temps, temp_prefix, write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the target, fsync, then os.replace over the final name.

    Lightning's own path writes through an fsspec transaction whose temporary file lives in the system
    temp directory and is copied over the target, truncating it first; a rename in one directory is
    atomic, so readers only ever see the old or the new complete file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(
            Path(path),
            lambda f: torch.save(checkpoint, f),
            then=", then resume with --ckpt_path from the run's last.ckpt if it has one",
        )


class Diverged(DTRLabError):
    """Training produced a non-finite loss or weight; the message names the step and what to try."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after saving last.ckpt; the CLI prints it and exits 128 + signum."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that never loses a run (see the module docstring for the guarantees).

    Divergence costs no per-step CPU-GPU sync: each step's loss is folded into an on-device
    "first non-finite step" tensor (two small kernels); it is read, together with a finiteness check of
    all weights (one fused norm over the parameters), every `trainer.log_every_n_steps` steps, when
    Lightning already syncs to log, and before every save.
    """

    # no __init__ of its own: the CLI reads ModelCheckpoint's signature for the `checkpoint` options
    _first_bad_step: torch.Tensor | None = None  # on device; -1 while every loss is finite
    _signum: int | None = None
    _training_done = False
    _previous_handlers: dict[int, Any] | None = None
    _written: str | None = None  # the checkpoint last written whole (Lightning names one before writing it)

    # --------------------------------------------------------------- atomic writes
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # leave a configured plugin alone
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if stage == "fit":  # before Lightning's own SIGTERM handler, which then calls this one too
            self._signum, self._training_done, self._previous_handlers = None, False, {}
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    @staticmethod
    def _link_checkpoint(trainer: L.Trainer, filepath: str, linkpath: str) -> None:
        """save_last='link': build the link under a temporary name and rename it over the old one."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = os.path.join(os.path.dirname(linkpath), f"{temp_prefix(Path(linkpath))}link.tmp")
            os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
            os.replace(tmp, linkpath)
        trainer.strategy.barrier()

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self.check_finite(trainer, trainer.lightning_module)  # never write a diverged model
        super()._save_checkpoint(trainer, filepath)
        self._written = filepath

    # ------------------------------------------------------------------ divergence
    def check_finite(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise Diverged if a loss since the last check or any weight is not finite (one sync)."""
        bad_step = -1 if self._first_bad_step is None else int(self._first_bad_step)
        if bad_step < 0:
            weights = [p for p in pl_module.parameters() if p.is_floating_point()]
            if weights and not torch.isfinite(torch.stack(torch._foreach_norm(weights))).all():
                bad_step = trainer.global_step
        if trainer.world_size > 1:  # every rank stops together (a collective, on the check cadence only)
            bad = trainer.strategy.reduce_boolean_decision(bad_step >= 0, all=False)
            bad_step = max(bad_step, trainer.global_step) if bad else -1
        if bad_step >= 0:
            saved = f"last good checkpoint: {self._written}" if self._written else "nothing saved"
            raise Diverged(
                f"training diverged: the loss or weights are not finite at step {bad_step} ({saved}); "
                "try a lower learning rate (model.optimizer.init_args.lr), gradient clipping "
                "(trainer.gradient_clip_val, or model.gradient_clip_val for PCGrad/Nash-MTL), "
                "or trainer.precision 32-true instead of bf16"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            step = trainer.global_step - 1  # the step whose loss this is (as logged)
            if self._first_bad_step is None:
                self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            newly_bad = ~torch.isfinite(loss.detach()).all() & (self._first_bad_step < 0)
            self._first_bad_step = torch.where(newly_bad, step, self._first_bad_step)
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self.check_finite(trainer, pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._is_final_step(trainer):  # saved before the end-of-fit analyses run
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._training_done = True
        interrupted = self._signum is not None
        if trainer.world_size > 1:  # a signal may reach one rank only; one small all-reduce per step in DDP
            interrupted = trainer.strategy.reduce_boolean_decision(interrupted, all=False)
        if interrupted:
            self._stop(trainer)

    @staticmethod
    def _is_final_step(trainer: L.Trainer) -> bool:
        if 0 <= trainer.max_steps <= trainer.global_step:
            return True
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1  # -1: bounded by max_steps
        last_epoch = 0 <= max_epochs <= trainer.current_epoch + 1
        return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch

    # --------------------------------------------------------------- interruption
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Replace Lightning's SIGTERM handler, which would end the run as a SystemExit with code 0; remove
        what writers killed mid-save left in this run's checkpoint folder and the one it resumes from
        (trainer.ckpt_path is known from here on)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        if trainer.is_global_zero:
            resumed = Path(trainer.ckpt_path).parent if trainer.ckpt_path else None
            for folder in {Path(self.dirpath), resumed} - {None}:
                if removed := remove_dead_writers_temps(folder):
                    rank_zero_info(f"dtr_lab: removed {len(removed)} stale temporary files in {folder}")

    def _on_signal(self, signum: int, frame: Any) -> None:
        """First signal: stop after the current step. A second Ctrl-C: stop now (Python's default)."""
        self._signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._training_done:  # in end-of-fit analyses: the final step is already saved
            raise Interrupted(self._interrupted_message(), signum)

    def _interrupted_message(self) -> str:
        return (
            f"interrupted at step {self._last_global_step_saved}: saved {self.last_model_path}; "
            f"resume with --ckpt_path {self.last_model_path}"
        )

    def _stop(self, trainer: L.Trainer) -> None:
        if self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # the loop sends this step's metrics to the loggers after on_train_batch_end, which the raise
        # skips: send them now, or the saved step's train/loss is in neither this run nor the resumed one
        trainer._logger_connector.on_batch_end()
        trainer._logger_connector.update_train_step_metrics()
        raise Interrupted(self._interrupted_message(), self._signum or signal.SIGTERM)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in (self._previous_handlers or {}).items():
            signal.signal(signum, handler)
        self._previous_handlers = None

    # ------------------------------------------------------------------ exceptions
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Keep the trained steps when something fails after a completed step (an analysis, validation)."""
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException):  # Lightning's own SIGTERM path (before training started)
            self._signum = self._signum or signal.SIGTERM
            exception.code = 128 + self._signum
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            if trainer.is_global_zero:
                print(f"dtr_lab: {self._interrupted_message()}", file=sys.stderr)
            return
        if isinstance(
            exception, (Diverged, Interrupted, KeyboardInterrupt)
        ) or self._should_skip_saving_checkpoint(trainer):
            return
        if trainer.world_size > 1:
            return  # ranks may have failed at different points: a collective save could hang
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if not progress.ready == progress.started == progress.processed:
            return  # failed inside a step: the last checkpoint is the last consistent state
        with contextlib.suppress(DTRLabError, OSError):  # diverged or disk full: keep what is there
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(
                f"dtr_lab: saved {self.last_model_path} at step {trainer.global_step} before the error"
            )
