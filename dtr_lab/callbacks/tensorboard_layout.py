"""TensorBoardLayout: custom-scalar charts that overlay runs per loss-by-t bucket and conflict
summary, and an hparams entry per run with its final metrics.

Point TensorBoard at a folder holding a routed and an unrouted run: in CUSTOM SCALARS each chart is
one timestep bucket (or one conflict summary) with a line per run; in HPARAMS each run is a row of
its configuration (routing and its options as routing.<option>, weighting, model, seed, …) and final
numbers (losses, conflict, affinity, FID and class accuracy when SampleQuality scored the run).

TensorBoard's HParams dashboard shows five columns at first: the hparams marked as differing between
runs, then the rest by name. A run cannot know what its siblings differ in, so the study's axes
(routing, its options, weighting) are marked; every other column is one tick away in the dashboard.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from dtr_lab.callbacks.gradient_conflict import GradientConflict
from dtr_lab.callbacks.logging import log_dir
from dtr_lab.callbacks.timestep_loss import TimestepLoss
from dtr_lab.runs import RunError, config_value, final_metrics, load_run, run_labels

# hparams metric tag -> the key of dtr_lab.runs.final_metrics it reports
FINAL_METRICS = {
    "hparams/train_loss": "train/loss (last)",
    "hparams/val_loss_ema": "val/loss_ema (last)",
    "hparams/probe_loss_ema": "probe loss, EMA, mean over t",
    "hparams/conflict_neg_share": "conflicting pairs (share)",
    "hparams/conflict_cos": "gradient cosine, mean off-diagonal",
    "hparams/affinity": "affinity Z, mean off-diagonal",
    "hparams/rho_iou_affinity": "ρ(mask IoU, affinity)",
}
# hparams metric tag -> the scalar whose last logged value it reports (SampleQuality's, at fit end)
FINAL_SCALARS = {"hparams/fid": "quality/fid", "hparams/accuracy": "quality/accuracy"}
# the columns the HParams dashboard shows first (marked as differing): the axes of a routing study
SHOWN_FIRST = ("routing", "weighting")
# hparams column -> dotted key in the resolved config
CONFIG_HPARAMS = {
    "lr": "model.optimizer.init_args.lr",
    "batch_size": "data.init_args.batch_size",
    "max_steps": "trainer.max_steps",
    "dataset": "data.class_path",
}


def _chart(tag: str) -> list:
    return ["Multiline", [f"^{tag}$"]]


def layout(timestep_loss: TimestepLoss | None, conflict: GradientConflict | None) -> dict:
    """The custom-scalars layout: {category: {chart title: ["Multiline", [tag regex]]}}, one chart per
    loss-by-t bucket and conflict summary, so every run logging that tag is a line on it."""
    out = {"loss": {tag: _chart(tag) for tag in ("train/loss", "val/loss", "val/loss_ema")}}
    if timestep_loss is not None:
        for name, title in (("probe_ema", "probe, EMA weights"), ("probe_raw", "probe, raw weights")):
            out[f"loss by t: {title}"] = {
                f"t = {t}": _chart(f"loss_by_t/{name}/t{t:04d}") for t in timestep_loss.grid.tolist()
            }
        edges = timestep_loss.bins.edges.tolist()
        bins = zip(edges[:-1], edges[1:], strict=True)
        out["loss by t: training, binned"] = {
            f"t = {a}–{b - 1}": _chart(f"loss_by_t/t{a:04d}") for a, b in bins
        }
    if conflict is not None:
        k = conflict.task_intervals.num_intervals
        charts = {"share of conflicting pairs (cos < 0)": _chart("conflict/neg_share")}
        charts.update(
            {f"mean cos, intervals {d} apart": _chart(f"conflict/cos_by_distance/d{d}") for d in range(1, k)}
        )
        charts["share of conflicting pairs, per block"] = ["Multiline", ["^conflict/neg_share_by_block/.+"]]
        out["gradient conflict"] = charts
        labels = conflict.task_intervals.labels()
        out["gradient norm per interval"] = {
            f"t = {labels[i]}": _chart(f"conflict/grad_norm/i{i}") for i in range(k)
        }
    return out


class TensorBoardLayout(L.Callback):
    """At fit start: the custom-scalars layout and the hparams of the run; at fit end: its final metrics."""

    def __init__(self) -> None:
        self.logger: TensorBoardLogger | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if self.logger is None or not trainer.is_global_zero:
            return
        from torch.utils.tensorboard.summary import hparams

        first = {type(cb): cb for cb in reversed(trainer.callbacks)}
        writer = self.logger.experiment
        writer.add_custom_scalars(layout(first.get(TimestepLoss), first.get(GradientConflict)))
        # written before Lightning's own hparams (TensorBoard keeps a run's first), with the metric
        # tags this callback fills in at fit end
        params = self.hparams(trainer, pl_module)
        exp, ssi, sei = hparams(params, {tag: math.nan for tag in (*FINAL_METRICS, *FINAL_SCALARS)})
        mark_shown_first(exp)
        file_writer = writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)

    def hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        """The run's configuration as flat hparams: its labels, its routing's options (routing.<option>;
        a list, such as a measured affinity matrix, is left out) and a few resolved config values."""
        path = Path(log_dir(trainer) or ".") / "config.yaml"
        config = yaml.safe_load(path.read_text()) if path.is_file() else {}
        routing = getattr(pl_module, "routing", None)
        recorded = {"routing": routing.label} if routing is not None else {}
        params = {k: v for k, v in run_labels(config or {}, recorded).items()}
        for name, value in (routing.options() if routing is not None else {}).items():
            if isinstance(value, (int, float, str, bool)):
                params[f"routing.{name}"] = value
        for name, key in CONFIG_HPARAMS.items():
            value = config_value(config or {}, key)
            params[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
        return params

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logger is None or not trainer.is_global_zero:
            return
        writer = self.logger.experiment
        writer.flush()
        try:
            run = load_run(self.logger.log_dir)
            metrics = final_metrics(run)
        except RunError:
            return
        for tag, key in FINAL_METRICS.items():
            if math.isfinite(metrics[key]):
                writer.add_scalar(tag, metrics[key], trainer.global_step)
        for tag, scalar in FINAL_SCALARS.items():
            rows = run.scalars[run.scalars["tag"] == scalar].sort_values("step")
            if len(rows):  # the last value logged, not a mean: final is final
                writer.add_scalar(tag, float(rows["value"].iloc[-1]), trainer.global_step)
        writer.flush()


def mark_shown_first(experiment) -> None:
    """Mark the study's axes (SHOWN_FIRST and routing.<option>) as differing in an hparams experiment
    summary, so that TensorBoard's dashboard shows them among its first five columns."""
    (value,) = experiment.value
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in SHOWN_FIRST or info.name.startswith("routing.")
    value.metadata.plugin_data.content = data.SerializeToString()
