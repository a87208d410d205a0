"""The loggers Lightning ships, set up for dtr_lab: their packages and stores checked before a run starts
(one line each), and the resolved config saved into the run's own folder and given to each logger as its
hyper-parameters.

TensorBoard gets its hyper-parameters from dtr_lab.callbacks.TensorBoardLayout (its HParams table);
CSVLogger, MLFlowLogger and WandbLogger get the whole config here, with the run's labels (routing,
weighting, mtl, model, seed) under ``run``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from dtr_lab.callbacks.logging import log_dir
from dtr_lab.errors import DTRLabError
from dtr_lab.runs import run_labels
from dtr_lab.storage import labels

# logger class -> (the package it needs, how to install it)
PACKAGES = {
    "MLFlowLogger": ("mlflow", "pip install 'dtr_lab[loggers]'"),
    "WandbLogger": ("wandb", "pip install 'dtr_lab[loggers]'"),
    "CometLogger": ("comet_ml", "pip install comet-ml"),
    "NeptuneLogger": ("neptune", "pip install neptune"),
}
# mlflow 3 refuses its file store unless this is true; dtr_lab's readers read that store (dtr_lab.runs)
FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def logger_nodes(node) -> list[Namespace]:
    """The configured loggers (trainer.logger: one, a list, or true/false/null) as class_path nodes."""
    nodes = node if isinstance(node, list) else [node]
    return [n for n in nodes if isinstance(n, Namespace) and isinstance(n.get("class_path"), str)]


def check_loggers(node) -> None:
    """Before any logger is built: its package is installed, and an MLflow file store is allowed (set
    where the environment says nothing; refused in one line where it says no)."""
    for logger in logger_nodes(node):
        name = logger.class_path.rsplit(".", 1)[-1]
        package, install = PACKAGES.get(name, (None, None))
        if package is not None and importlib.util.find_spec(package) is None:
            raise DTRLabError(f"trainer.logger {name} needs the package {package}, not installed: {install}")
        if name == "MLFlowLogger" and uses_file_store(logger.get("init_args") or Namespace()):
            allowed = os.environ.setdefault(FILE_STORE, "true")
            if allowed.strip().lower() not in ("true", "1"):
                raise DTRLabError(
                    f"MLFlowLogger: mlflow refuses its file store while {FILE_STORE}={allowed}; set "
                    f"{FILE_STORE}=true (dtr_lab reads runs from that store) or give "
                    "--trainer.logger.init_args.tracking_uri another store"
                )


def uses_file_store(init_args: Namespace) -> bool:
    """Whether an MLFlowLogger writes to a local folder (save_dir, or a file: tracking URI)."""
    uri = init_args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    return uri is None or uri.startswith("file:") or "://" not in uri


def hyperparameters(config: dict, routing: str) -> dict:
    """A resolved config as hyper-parameters: the run's labels under ``run`` (``routing``: the routing's
    own label), then the config itself (each logger flattens it its own way: MLflow keys such as
    model/routing/init_args/alpha)."""
    return {"run": run_labels(config, {"routing": routing}), **config}


class RunConfig(SaveConfigCallback):
    """config.yaml and labels.yaml (the routing's own label and colour: storage.labels) in the run's own
    folder (dtr_lab.callbacks.logging.log_dir, whichever the logger), never in a folder runs share; the
    config as hyper-parameters of every logger but TensorBoard."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        out = log_dir(trainer)
        if out is None and trainer.logger is not None:  # MLflow artifacts on a server or in a bucket
            raise DTRLabError(
                f"{type(trainer.logger).__name__}: the run's artifacts are not on a local disk, and dtr_lab "
                "writes config.yaml and records/ there; use the file store (--trainer.logger.init_args."
                "save_dir) or a local --trainer.logger.init_args.artifact_location"
            )
        if out is not None:  # a new folder of this run alone (storage.run_dir claims TensorBoard's and CSV's)
            path = Path(out) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config, path, skip_none=False, overwrite=self.overwrite, multifile=self.multifile
            )
            labels.write(out, pl_module.routing.label)
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        params = hyperparameters(config, pl_module.routing.label)
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params)


def finish_runs(loggers: list) -> None:
    """End the W&B run of a command that is done: Lightning leaves it open, and a next fit in the same
    process (a notebook, a study) would log into it."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:  # None: never started
            logger.experiment.finish()
