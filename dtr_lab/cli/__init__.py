"""`python -m dtr_lab fit|validate|test|predict --config ...`: LightningCLI with the data→model
links, one-line errors for bad input, and a run folder that says what made it (command.yaml) and a fit or
test that ends with its folder, final values and TensorBoard line."""

from __future__ import annotations

import importlib
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from dtr_lab import runs
from dtr_lab.cli.console import quiet_lightning, use_step_progress_bar
from dtr_lab.cli.loggers import RunConfig, check_loggers, finish_runs
from dtr_lab.cli.parser import OneLineParser, read_configs
from dtr_lab.data import ImageDataModule
from dtr_lab.errors import DTRLabError, find_bad_input
from dtr_lab.model_checks import check_checkpoint, check_optimizer
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import Routing
from dtr_lab.storage import run_kind
from dtr_lab.storage.checkpoint_file import LIGHTNING_KEYWORDS, read_checkpoint
from dtr_lab.storage.checkpointing import Interrupted, RunCheckpoint
from dtr_lab.storage.run_dir import claim_log_dir


@contextmanager
def run_options_read(config: Namespace):
    """While the classes are built, every routing option that names a run directory (the routing's
    ``run_options``) holds what its reader (dtr_lab.runs) reads from it; the config (and so config.yaml)
    keeps the path."""
    node = config.get("model.routing") if config is not None else None
    if not isinstance(node, Namespace) or not isinstance(node.get("class_path"), str):
        yield
        return
    module, name = node.class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)  # jsonargparse has resolved this class_path
    readers = cls.run_options if isinstance(cls, type) and issubclass(cls, Routing) else {}
    args = node.get("init_args") or Namespace()
    given = {k: v for k, v in args.items() if isinstance(v, str) and k in readers}
    saved = node.init_args.clone() if given else None
    for option, path in given.items():
        for key, value in readers[option](path).items():
            node.init_args[key] = value
    try:
        yield
    finally:
        if saved is not None:
            node.init_args = saved


def run_summary(run_dir: Path, tensorboard_dir: Path | None) -> str:
    """The lines a fit or test ends with: its run folder, its final metrics (each the last value logged,
    FID with its N) and, for a TensorBoard run, the command that opens it."""
    lines = [f"Run folder:  {run_dir}"]
    try:
        metrics = {k: v for k, v in runs.final_metrics(runs.load_run(run_dir)).items() if math.isfinite(v)}
    except runs.RunError:
        metrics = {}
    if metrics:
        lines.append("Final:       " + " · ".join(f"{k}: {v:.4g}" for k, v in metrics.items()))
    if tensorboard_dir is not None:
        exe = Path(sys.executable)  # the interpreter this run used: bare `python` may not have the venv
        python = os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe)
        every_image = "--samples_per_plugin images=1000"  # TensorBoard shows 10 per tag otherwise
        lines.append(f"TensorBoard: {python} -m tensorboard.main --logdir {tensorboard_dir} {every_image}")
    return "\n".join(lines)


class DTRLabCLI(LightningCLI):
    """LightningCLI whose model takes its image shape and classes from the datamodule."""

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if not add_subcommands:  # built without a subcommand (official import/export, the pairing check):
            # a run's config.yaml states fit's own options too; they mean nothing here, so they are allowed
            for name, kind in (("ckpt_path", str | None), ("weights_only", bool | None)):
                self.parser.add_argument(f"--{name}", type=kind, default=None, help="fit's; unused here")

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

    def parse_arguments(self, parser, args) -> None:
        read_configs(sys.argv[1:] if args is None else list(args))  # bad files: one line naming the file
        super().parse_arguments(parser, args)

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_loggers(config.get("trainer.logger"))
        with run_options_read(config):
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs):
        # read before the trainer is built: Lightning adds its default progress bar to this very list
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        default_bar = not any(isinstance(c, ProgressBar) for c in configured)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # Lightning's word for a bad trainer option
            raise DTRLabError(f"trainer options: {err}; fix them in the config") from None
        if default_bar:
            use_step_progress_bar(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Reads --ckpt_path before the trainer opens the run directory, then claims that directory; a
        start that fails removes the run directory it claimed if nothing but start-up files is in it
        (see dtr_lab.storage.run_dir)."""
        options = self.config_init[subcommand]
        ckpt_path, ckpt_step = options.get("ckpt_path"), None
        if ckpt_path and not (ckpt_path in LIGHTNING_KEYWORDS and not Path(ckpt_path).exists()):
            checkpoint = read_checkpoint(ckpt_path, options.get("weights_only") is not False)
            ckpt_step = checkpoint.get("global_step")
            try:  # what it was trained as, then its tensors: once, before anything is written
                check_checkpoint(self.model, checkpoint)
            except DTRLabError as err:
                raise DTRLabError(f"--ckpt_path {ckpt_path}: {err}") from None
            if subcommand == "fit" and "dtr_lab_official" in checkpoint:  # weights only: nothing to resume
                raise DTRLabError(
                    f"--ckpt_path {ckpt_path}: imported from official weights, it holds no optimizer or loop "
                    "state for fit to resume; validate, test and predict take it"
                )
        logger = self.trainer.logger
        claim = claim_log_dir(logger) if logger is not None and self.trainer.is_global_zero else None
        if claim is not None:  # so readers tell a fit from a test of its checkpoint or its continuation
            run_kind.write(claim.path, subcommand, ckpt_path, ckpt_step)
        try:
            super()._run_subcommand(subcommand)
        except Exception:
            if claim is not None:
                claim.release()
            raise
        finally:
            finish_runs(self.trainer.loggers)

    def after_fit(self) -> None:
        self.print_summary()

    def after_test(self) -> None:
        self.print_summary()

    def print_summary(self) -> None:
        """The run folder, final metrics and TensorBoard line (dtr_lab.cli.console.run_summary), once."""
        logger = self.trainer.logger
        if logger is None or not logger.log_dir or not self.trainer.is_global_zero:
            return
        tensorboard = Path(logger.save_dir) if isinstance(logger, TensorBoardLogger) else None
        print(run_summary(Path(logger.log_dir), tensorboard))

    def before_fit(self) -> None:
        """Checks that need both model and data, before the trainer writes anything."""
        self.model.check_batch_size(self.datamodule.batch_size)
        self.prepare_analyses()

    def before_validate(self) -> None:
        """`validate` analyses the loaded model with the configured analysis callbacks (see
        dtr_lab.callbacks.prepared): their options are checked before the trainer writes anything."""
        self.prepare_analyses()

    def prepare_analyses(self) -> None:
        check_optimizer(self.model)
        analyses = [c for c in self.trainer.callbacks if hasattr(c, "prepare")]
        if analyses:  # their probes come from the training set: a batch larger than it is the real fault
            self.datamodule.setup("fit")
            self.datamodule.check_batch_size()
        for callback in analyses:  # analysis callbacks validate their options and probes
            callback.prepare(self.model, self.datamodule)


def build_cli(args: list[str] | None = None, run: bool = True) -> DTRLabCLI:
    """`python -m dtr_lab ARGS` as an object: run=False parses and instantiates (model, datamodule,
    trainer) without running a subcommand — what the paired-study check and the benchmarks build."""
    quiet_lightning()
    return DTRLabCLI(
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
        parser_class=OneLineParser,
        save_config_callback=RunConfig,
        run=run,
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    try:
        build_cli(args)
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
