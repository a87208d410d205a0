"""SampleQuality: FID, KID, IS, precision/recall and class accuracy of EMA samples, every N steps
during fit (the convergence curve, FID vs iteration) and once at `test` time."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from dtr_lab.callbacks.logging import log_dir
from dtr_lab.callbacks.record_writer import RecordWriter
from dtr_lab.data.base import real_images
from dtr_lab.diffusion.samplers import check_sample_steps
from dtr_lab.errors import DTRLabError
from dtr_lab.metrics import SampleQualityMetrics
from dtr_lab.metrics.features import FEATURES, find_inception_weights
from dtr_lab.samples import balanced_labels, generate

__all__ = ["SampleQuality", "balanced_labels", "generate"]


class SampleQuality(L.Callback):
    """Scores EMA samples against the training images every `every_n_steps` and at the end of fit
    (TensorBoard quality/*, records/quality.csv), and once in `test` (test/*, printed by Lightning)."""

    def __init__(
        self,
        every_n_steps: int = 250,
        num_samples: int = 500,
        test_num_samples: int | None = None,
        feature: str = "digits",
        inception_weights: str | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        max_real_images: int = 10_000,
        kid_subsets: int = 100,
        kid_subset_size: int = 100,
        batch_size: int = 500,
        seed: int = 4321,
    ) -> None:
        """
        Args:
            every_n_steps: cadence in optimizer steps during fit (0: only at the end of fit).
            num_samples: samples scored at each fit evaluation (labels cycle over the classes).
            test_num_samples: samples scored by `test`; default model.num_samples.
            feature: 'digits' (digits-FID and class accuracy) or 'inception' (needs local weights).
            inception_weights: local Inception weights file for feature 'inception'.
            sampler, steps, guidance_scale: sampling options; default the model's (model.sampler,
                model.sample_steps, model.guidance_scale).
            max_real_images: training images the samples are compared with (a seeded subset).
            kid_subsets, kid_subset_size: KID's random subsets (every set needs ≥ kid_subset_size).
            batch_size: samples drawn per sampler call.
            seed: seeds the noise, so evaluations over training score the same x_T.
        """
        if every_n_steps < 0:
            raise DTRLabError(
                f"SampleQuality every_n_steps={every_n_steps} must be ≥ 0 (0: only at the end of fit)"
            )
        if feature not in FEATURES:
            raise DTRLabError(
                f"SampleQuality feature={feature!r} is unknown; choose one of {', '.join(FEATURES)}"
            )
        if feature == "inception":
            find_inception_weights(inception_weights)  # fail now, before training, when offline
        for name, n in (("num_samples", num_samples), ("test_num_samples", test_num_samples)):
            if n is not None:
                self._check_count(name, n, kid_subset_size)
        self.every_n_steps, self.num_samples = every_n_steps, num_samples
        self.test_num_samples = test_num_samples
        self.feature, self.inception_weights = feature, inception_weights
        self.sample_kwargs = {"sampler": sampler, "steps": steps, "guidance_scale": guidance_scale}
        self.max_real_images = max_real_images
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.batch_size, self.seed = batch_size, seed
        self.metrics: SampleQualityMetrics | None = None
        self.records: RecordWriter | None = None
        self._last_step = -1
        self._checkpoint_step: int | None = None

    @staticmethod
    def _check_count(name: str, n: int, kid_subset_size: int) -> None:
        if n < kid_subset_size:
            raise DTRLabError(
                f"SampleQuality {name}={n} is fewer than kid_subset_size={kid_subset_size}; "
                f"draw at least {kid_subset_size} samples or lower kid_subset_size"
            )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        steps = self.sample_kwargs["steps"]
        if steps is not None:  # checked at setup, not at the first evaluation hundreds of steps in
            check_sample_steps(steps, pl_module.diffusion.num_timesteps, "SampleQuality.steps")
        if stage == "test" and self.test_num_samples is None:
            self._check_count("model.num_samples", pl_module.hparams.num_samples, self.kid_subset_size)

    def _scorer(self, trainer: L.Trainer) -> SampleQualityMetrics:
        if self.metrics is None:  # the real set is embedded once per run
            real = real_images(trainer.datamodule, self.max_real_images, self.seed)
            self.metrics = SampleQualityMetrics(
                real, self.feature, self.kid_subsets, self.kid_subset_size,
                inception_weights=self.inception_weights, seed=self.seed,
            )
        return self.metrics

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, num_samples: int) -> dict[str, float]:
        """Metrics of `num_samples` fresh EMA samples with balanced labels."""
        labels = balanced_labels(num_samples, pl_module.hparams.num_classes)
        images = generate(
            pl_module, labels, num_samples, self.seed, self.batch_size,
            trainer.datamodule.decode, **self.sample_kwargs,
        )
        return self._scorer(trainer)(images, labels)

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        scores = self.score(trainer, pl_module, self.num_samples)
        if trainer.logger is not None:
            # straight to the logger: self.log would drop steps off the log_every_n_steps grid
            trainer.logger.log_metrics({f"quality/{k}": v for k, v in scores.items()}, step)
        out = log_dir(trainer)
        if out is not None:
            if self.records is None:
                self.records = RecordWriter(out, "quality")
            for name, value in scores.items():
                self.records.scalar(step, name, value)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.evaluate(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # `test` restores the weights but not the loop, so the trained step is read here
        self._checkpoint_step = checkpoint.get("global_step")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # one rank samples and scores; the others only wait
            return
        num_samples = self.test_num_samples or pl_module.hparams.num_samples
        scores = self.score(trainer, pl_module, num_samples)
        out = log_dir(trainer)
        if out is not None:
            records = RecordWriter(Path(out), "quality")
            step = self._checkpoint_step if self._checkpoint_step is not None else trainer.global_step
            for name, value in scores.items():
                records.scalar(step, f"test/{name}", value)
        for name, value in scores.items():
            pl_module.log(f"test/{name}", value, rank_zero_only=True)  # Lightning prints them as a table
        # FID depends on N (fit scores fewer): the table names the N of the test FID beside it
        pl_module.log("test/num_samples", float(num_samples), rank_zero_only=True)
