"""Sample quality of generated images against a fixed real set: FID, KID and IS through
torchmetrics, improved precision/recall, the share of memorised samples (copies of real images), and
the class accuracy of class-conditional samples.

Features are extracted once per image set and handed to torchmetrics as precomputed
features, so the real set is embedded once and FID, KID and precision/recall share one pass.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

# From the submodules: the torchmetrics.image package exports these only when torch-fidelity is
# installed, which precomputed features do not need.
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from dtr_lab.errors import DTRLabError
from dtr_lab.metrics.features import DigitsFeatures, feature_extractor
from dtr_lab.metrics.memorisation import Memorisation
from dtr_lab.metrics.precision_recall import knn_radii, manifold_coverage


class _Precomputed(nn.Identity):
    """Lets torchmetrics' image metrics take features (N, F) in place of images."""

    def __init__(self, num_features: int | None = None) -> None:
        super().__init__()
        self.num_features = num_features


def _quiet(metric_cls: type, **kwargs):
    # KID and IS warn on construction that they keep all features; ours are (N, F) already.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return metric_cls(**kwargs)


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to two feature sets."""
    # sync_on_compute=False: the features are already gathered; under DDP only rank 0 scores
    fid = FrechetInceptionDistance(feature=_Precomputed(real_features.shape[1]), sync_on_compute=False)
    fid.update(real_features.double(), real=True)
    fid.update(fake_features.double(), real=False)
    return fid.compute().item()


def kernel_distance(
    real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100, subset_size: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): cubic-kernel MMD² over random subsets, (mean, std)."""
    kid = _quiet(
        KernelInceptionDistance, feature=_Precomputed(), subsets=subsets, subset_size=subset_size,
        sync_on_compute=False,
    )
    kid.update(real_features.double(), real=True)
    kid.update(fake_features.double(), real=False)
    # torchmetrics draws subsets from the global RNG; a forked, seeded one keeps the score
    # reproducible and the training RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return mean.item(), std.item()


def rms(features: torch.Tensor) -> float:
    """Root mean square of features (N, F) per dimension: sqrt(mean ‖x‖² / F)."""
    return features.double().pow(2).mean().sqrt().item()


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS (Salimans et al. 2016): exp E[KL(p(y|x) ‖ p(y))] over `splits` chunks, (mean, std)."""
    score = _quiet(InceptionScore, feature=_Precomputed(), splits=splits, sync_on_compute=False)
    score.update(logits.double())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = score.compute()
    return mean.item(), std.item()


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DTRLabError(f"{what} must be a (N, C, H, W) tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise DTRLabError(f"{what} must be uint8 in 0..255 or float in [-1, 1], got dtype {images.dtype}")
    if images.is_floating_point() and images.numel() and images.abs().max() > 1 + 1e-3:
        lo, hi = images.min().item(), images.max().item()
        raise DTRLabError(
            f"{what} are floats in [{lo:.3g}, {hi:.3g}], expected [-1, 1]; rescale them (x / 127.5 - 1 "
            "for 0..255) or pass uint8"
        )


class SampleQualityMetrics:
    """FID, KID, IS, precision/recall (and, with digits features, class accuracy) of generated
    images against real images embedded once at construction."""

    def __init__(
        self,
        real_images: torch.Tensor,
        feature: str = "digits",
        kid_subsets: int = 100,
        kid_subset_size: int = 100,
        is_splits: int = 10,
        k: int = 3,
        inception_weights: str | Path | None = None,
        batch_size: int = 500,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        """
        real_images: (N, C, H, W), uint8 in 0..255 or float in [-1, 1].
        feature: 'digits' (the cached digits classifier) or 'inception' (needs local weights).
        kid_subsets, kid_subset_size: KID's random subsets; every set needs ≥ kid_subset_size images.
        is_splits: chunks the Inception Score is averaged over.
        k: neighbour whose distance is a feature's manifold radius (precision/recall).
        inception_weights: local Inception weights file for feature='inception'.
        batch_size: images per feature-extraction batch.
        seed: seeds KID's subsets and IS's shuffle.
        device: where features are extracted.
        """
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.is_splits, self.k, self.batch_size, self.seed = is_splits, k, batch_size, seed
        self._check_count(real_images, "real images")
        self.extractor = feature_extractor(feature, inception_weights).to(device).eval()
        self.real_features, _ = self._extract(real_images)
        self.real_channels = real_images.shape[1]
        self.real_radii = knn_radii(self.real_features, k)
        # KID's feature scale: the real set's root mean square per dimension where the extractor asks
        # for it (digits), so that its cubic kernel sees features of unit scale
        self.kid_scale = rms(self.real_features) if self.extractor.kid_rescaled else 1.0
        self.memorisation = Memorisation(real_images)

    def _check_count(self, images: torch.Tensor, what: str) -> None:
        _check_images(images, what)
        if len(images) < self.kid_subset_size:
            raise DTRLabError(
                f"{len(images)} {what} are fewer than kid_subset_size={self.kid_subset_size}; "
                f"use at least {self.kid_subset_size} images or lower kid_subset_size"
            )
        if len(images) <= max(1, self.k):
            raise DTRLabError(f"{len(images)} {what} are too few: FID and precision/recall (k={self.k}) "
                              f"need more than {max(1, self.k)}")

    @torch.no_grad()
    def _extract(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.extractor.parameters()).device
        batches = [self.extractor(batch.to(device)) for batch in images.split(self.batch_size)]
        features, logits = zip(*batches, strict=True)
        return torch.cat(features).double().cpu(), torch.cat(logits).double().cpu()  # (N, F), (N, K)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Scores of generated `images` (N, C, H, W); `labels` (N,) are their conditioning classes.

        Returns fid, kid_mean, kid_std, is_mean, is_std, precision, recall, memorised (the share of images
        that copy a real one, see dtr_lab.metrics.memorisation), and accuracy (the
        share of images the digits classifier assigns to their label) when labels are given
        and the features are 'digits'.
        """
        self._check_count(images, "generated images")
        if images.shape[1] != self.real_channels:
            raise DTRLabError(
                f"generated images have {images.shape[1]} channels, the real ones {self.real_channels}"
            )
        if labels is not None and tuple(labels.shape) != (len(images),):
            raise DTRLabError(
                f"labels must have shape ({len(images)},) like the images, got {tuple(labels.shape)}"
            )
        features, logits = self._extract(images)
        kid_mean, kid_std = kernel_distance(
            self.real_features / self.kid_scale, features / self.kid_scale, self.kid_subsets,
            self.kid_subset_size, self.seed,
        )
        is_mean, is_std = inception_score(logits, self.is_splits, self.seed)
        scores = {
            "fid": frechet_distance(self.real_features, features),
            "kid_mean": kid_mean,
            "kid_std": kid_std,
            "is_mean": is_mean,
            "is_std": is_std,
            "precision": manifold_coverage(features, self.real_features, self.real_radii),
            "recall": manifold_coverage(self.real_features, features, knn_radii(features, self.k)),
            "memorised": self.memorisation(images),
        }
        if labels is not None and isinstance(self.extractor, DigitsFeatures):
            scores["accuracy"] = (logits.argmax(dim=1) == labels.cpu()).float().mean().item()
        return scores
