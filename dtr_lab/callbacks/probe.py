"""The probe the interval analyses share: a fixed batch, its per-interval gradients, and a
measurement that leaves training untouched.

A probe is n training images with fixed labels; interval k sees all n of them at its own
stratified timesteps with its own fixed noise, so interval-to-interval differences come from t
alone and every measurement over training sees exactly the same inputs. Measurements run on rank 0
on the plain network (never the DDP wrapper), take one gradient per interval sub-batch with
``dtr_lab.mtl.gradients.interval_gradients`` (``torch.autograd.grad``, never ``.grad``), draw
nothing from the module's generator, and fork the global RNG (dropout) around themselves, so a run
with analyses on trains bit-identically to one without. The intervals are the module's task split
(``pl_module.tasks``) unless a callback is given its own; the per-interval gradients go through the
module's ``tasks.gradients``, so analyses measuring the same probe at the same step share one set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from dtr_lab.callbacks.heatmap import heatmap_figure, heatmap_image
from dtr_lab.callbacks.logging import log_dir, log_figure, log_image
from dtr_lab.callbacks.prepared import PreparedCallback
from dtr_lab.callbacks.record_writer import RecordWriter, write_intervals
from dtr_lab.errors import DTRLabError
from dtr_lab.models.denoiser import Denoiser
from dtr_lab.mtl.intervals import Intervals, TaskIntervals, check_num_intervals

AUTO = "auto"  # block_pattern: the network's own blocks (its Denoiser.block_pattern), none without them


@dataclass
class Probe:
    """K·n fixed samples grouped by interval: rows k·n … (k+1)·n − 1 belong to interval k."""

    x0: torch.Tensor  # (K·n, C, H, W): the same n images in every interval
    y: torch.Tensor | None  # (K·n,)
    t: torch.Tensor  # (K·n,)
    noise: torch.Tensor  # (K·n, C, H, W)
    num_intervals: int

    @property
    def per_interval(self) -> int:
        return self.t.shape[0] // self.num_intervals

    def to(self, device: torch.device) -> Probe:
        y = None if self.y is None else self.y.to(device)
        return Probe(self.x0.to(device), y, self.t.to(device), self.noise.to(device), self.num_intervals)

    def interval(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x0, t, noise, y) of interval k's sub-batch."""
        rows = slice(k * self.per_interval, (k + 1) * self.per_interval)
        return self.x0[rows], self.t[rows], self.noise[rows], None if self.y is None else self.y[rows]


def make_probe(
    datamodule: L.LightningDataModule, intervals: TaskIntervals, size: int, seed: int, num_classes: int
) -> Probe:
    """n = size seeded training images, each at one stratified timestep per interval with fixed noise."""
    x0, y = datamodule.probe_batch(size, seed)  # (n, C, H, W), (n,)
    k = intervals.num_intervals
    gen = torch.Generator().manual_seed(seed)
    t = intervals.stratified_timesteps(size, gen, torch.device("cpu"))  # (K·n,) grouped by interval
    x0 = x0.repeat(k, *([1] * (x0.dim() - 1)))  # (K·n, C, H, W)
    noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    return Probe(x0, y.repeat(k) if num_classes > 0 else None, t, noise, k)


def select_parameters(net: nn.Module, pattern: str | None, option: str) -> list[str]:
    """Names of the trainable parameters whose name matches the regex (all of them for None)."""
    names = [
        n for n, p in net.named_parameters() if p.requires_grad and (pattern is None or re.search(pattern, n))
    ]
    if not names:
        example = next((n for n, _ in net.named_parameters()), "")
        raise DTRLabError(
            f"{option}={pattern!r} matches no trainable parameter of the network; it is a regex searched "
            f"in names such as {example!r} (or null for all parameters)"
        )
    return names


def block_slices(
    net: Denoiser, names: list[str], pattern: str | None, option: str
) -> dict[str, list[tuple[int, int]]]:
    """Per block, the [start, end) ranges its parameters take in the flat gradient of `names`.

    A parameter belongs to the block named by the text ``pattern`` matches at the start of its name;
    "auto" groups by the network's own ``block_pattern`` (each DiT block), and finds no blocks in a network
    that declares none.
    """
    if pattern is None:
        return {}
    auto = pattern == AUTO
    if auto:
        pattern = net.block_pattern
    params = dict(net.named_parameters())
    blocks: dict[str, list[tuple[int, int]]] = {}
    offset = 0
    for name in names:
        size = params[name].numel()
        match = re.match(pattern, name) if pattern else None
        if match:
            ranges = blocks.setdefault(match.group(0), [])
            if ranges and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], offset + size)
            else:
                ranges.append((offset, offset + size))
        offset += size
    if not blocks and not auto:
        raise DTRLabError(
            f"{option}={pattern!r} matches the start of no selected parameter name (such as {names[0]!r}); "
            "use a regex like 'blocks\\.\\d+', 'auto', or null for no per-block metrics"
        )
    return blocks


@contextmanager
def isolated(trainer: L.Trainer, device: torch.device, seed: int) -> Iterator[None]:
    """Run a measurement in the training precision with its own global RNG state, restored afterwards."""
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)  # dropout, if the network has any, is the same each time
        if cuda:
            torch.cuda.manual_seed(seed)
        with torch.enable_grad(), trainer.precision_plugin.forward_context():
            yield


class IntervalProbe(PreparedCallback):
    """Base of the analyses measured every N steps on a fixed per-interval probe (rank 0 only)."""

    record_name = ""  # records/<record_name>.csv

    def __init__(
        self,
        every_n_steps: int,
        intervals: Intervals | None,
        probe_size: int | None,
        params: str | None,
        seed: int,
    ) -> None:
        owner = type(self).__name__
        if every_n_steps < 1:
            raise DTRLabError(
                f"{owner}.every_n_steps={every_n_steps} must be at least 1 (drop the callback to turn it off)"
            )
        if probe_size is not None and probe_size < 1:
            raise DTRLabError(f"{owner}.probe_size={probe_size} must be at least 1 image (or null for B/K)")
        self.intervals = intervals  # None: the module's task split
        if intervals is not None:
            with self.option_errors():
                check_num_intervals(intervals.k)
        if params is not None:
            try:
                re.compile(params)
            except re.error as err:
                raise DTRLabError(f"{owner}.params={params!r} is not a valid regex ({err})") from None
        self.every_n_steps = every_n_steps
        self.probe_size = probe_size
        self.params = params
        self.seed = seed
        self.task_intervals: TaskIntervals | None = None
        self.param_names: list[str] = []
        self.probe: Probe | None = None
        self.writer: RecordWriter | None = None
        self._last_step = -1
        self._heatmaps: dict[str, tuple[int, dict[str, torch.Tensor], dict]] = {}

    @contextmanager
    def option_errors(self) -> Iterator[None]:
        """Prefix errors about this callback's options with its name (e.g. GradientConflict.probe_size)."""
        try:
            yield
        except DTRLabError as err:
            raise DTRLabError(f"{type(self).__name__}.{err}") from None

    def build(self, pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> None:
        """Check the options against the model and data and build the probe."""
        with self.option_errors():
            self.task_intervals = pl_module.tasks.split(self.intervals)
            self.param_names = select_parameters(pl_module.net, self.params, "params")
            # B/K images: the K sub-batches together are one training batch, so one measurement
            # costs about one training step
            size = self.probe_size or max(1, datamodule.batch_size // self.task_intervals.num_intervals)
            self.probe = make_probe(
                datamodule, self.task_intervals, size, self.seed, pl_module.hparams.num_classes
            )
        self.setup_analysis(pl_module)

    def setup_analysis(self, pl_module: L.LightningModule) -> None:
        """Subclass hook for further start-up checks."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir = log_dir(trainer)
        if trainer.is_global_zero and run_dir is not None:
            self.writer = RecordWriter(run_dir, self.record_name)
            write_intervals(run_dir, self.record_name, self.task_intervals.edges)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self.maybe_measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.maybe_measure(trainer, pl_module)
        self.draw_heatmaps(trainer)

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        self.on_fit_start(trainer, pl_module)
        self.measure_at(trainer, pl_module, step)
        self.draw_heatmaps(trainer)

    def draw_heatmaps(self, trainer: L.Trainer) -> None:
        """The labelled figure of each heatmap's last measurement."""
        for tag, (step, matrices, style) in self._heatmaps.items():
            labels = self.task_intervals.labels()
            figure = heatmap_figure(
                {f"{name}, step {step}": m for name, m in matrices.items()}, labels, **style
            )
            log_figure(trainer, f"{tag}_labelled", figure, step)

    def maybe_measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure θ after every N-th optimizer step (step 0 included), once per step, on rank 0."""
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step or not trainer.is_global_zero:
            return
        self.measure_at(trainer, pl_module, step)

    def measure_at(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """One measurement of the current θ, recorded at `step`."""
        self._last_step = step
        probe = self.probe.to(pl_module.device)
        params = dict(pl_module.net.named_parameters())
        with isolated(trainer, pl_module.device, self.seed):
            self.measure(trainer, pl_module, probe, [params[n] for n in self.param_names], step)

    def probe_gradients(
        self, pl_module: L.LightningModule, probe: Probe, params: list[torch.Tensor], step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe's (K, P) float32 gradients and (K,) losses of the raw network at this step, computed
        once for every analysis with the same probe (intervals, size, seed, parameters)."""

        def loss_fn(x0, t, noise, y) -> tuple[torch.Tensor, torch.Tensor]:
            losses = pl_module.per_sample_loss(x0, t, noise, y, net=pl_module.net)  # (n,)
            return losses, losses

        key = ("probe", step, tuple(self.task_intervals.edges.tolist()), probe.per_interval, self.seed,
               tuple(self.param_names))
        batch = (probe.x0, probe.t, probe.noise, probe.y)
        grads, losses = pl_module.tasks.gradients(key, loss_fn, batch, probe.num_intervals, params)
        return grads.float(), losses.float().view(probe.num_intervals, -1).mean(dim=1)  # (K, P), (K,)

    def measure(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        probe: Probe,
        params: list[torch.Tensor],
        step: int,
    ) -> None:
        raise NotImplementedError

    def log_scalars(self, trainer: L.Trainer, metrics: dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step)

    def log_heatmaps(
        self, trainer: L.Trainer, tag: str, matrices: dict[str, torch.Tensor], step: int, **style
    ) -> None:
        """A cheap heatmap image now; the labelled figure of the last one when training ends."""
        log_image(trainer, tag, heatmap_image(matrices, style.get("metric", "cos")), step)
        self._heatmaps[tag] = (step, matrices, style)


def write_matrix(writer: RecordWriter | None, step: int, metric: str, matrix: torch.Tensor) -> None:
    """Rows (step, metric, i, j, value) for the defined entries; NaN (undefined) entries are left out."""
    if writer is None:
        return
    for i, row in enumerate(matrix.tolist()):
        for j, v in enumerate(row):
            if math.isfinite(v):
                writer.scalar(step, metric, v, i, j)
