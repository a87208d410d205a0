"""`python -m dtr_lab fit|validate|test|predict --config ...`: LightningCLI with the data→model
links and one-line errors for bad input."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from dtr_lab.checkpointing import Interrupted, RunCheckpoint
from dtr_lab.data import ImageDataModule
from dtr_lab.errors import find_bad_input
from dtr_lab.module import DiffusionModule


class DTRLabCLI(LightningCLI):
    """LightningCLI whose model takes its image shape and classes from the datamodule."""

    def add_arguments_to_parser(self, parser) -> None:
        for key in ("image_size", "in_channels", "num_classes"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        # always keep last.ckpt for resuming (written atomically, also on Ctrl-C); configs tune the cadence
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": 500})

    def _parse_ckpt_path(self) -> None:
        """Keep the command line in charge when --ckpt_path is given.

        Lightning 2.6 re-applies a checkpoint's saved hyperparameters over the parsed config, which
        silently drops overrides such as --model.sample_steps at test time. Here the config wins and
        DiffusionModule.on_load_checkpoint rejects a checkpoint of another shape with one line.
        """

    def before_fit(self) -> None:
        """Checks that need both model and data, before the trainer writes anything."""
        self.model.check_batch_size(self.datamodule.batch_size)
        for callback in self.trainer.callbacks:
            if hasattr(callback, "prepare"):  # analysis callbacks validate their options and probes
                callback.prepare(self.model, self.datamodule)


def main(args: list[str] | None = None) -> None:
    try:
        DTRLabCLI(
            DiffusionModule,
            ImageDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "runs", "name": "default"},
                }
            },
            args=args,
        )
    except Interrupted as exc:
        print(f"dtr_lab: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        bad_input = find_bad_input(exc)
        if bad_input is None:
            raise  # a bug, not bad input: keep the traceback
        print(f"dtr_lab: error: {bad_input}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
