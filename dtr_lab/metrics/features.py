"""Feature extractors for sample-quality metrics: each maps images (N, C, H, W), uint8 in 0..255
or float in [-1, 1], to features (N, F) for FID/KID/precision-recall and class logits (N, K)
for the Inception Score."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.metrics.digits_classifier import DigitsClassifier, load_digits_classifier

FEATURES = ("digits", "inception")
# The TF-ported FID Inception weights that torch-fidelity (hence torchmetrics) loads.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float [-1, 1]; float images pass through."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 0..255; uint8 images pass through."""
    if images.dtype == torch.uint8:
        return images
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class DigitsFeatures(nn.Module):
    """"digits-FID" features: the digits classifier's penultimate layer (64) and its logits (10)."""

    name = "digits"
    # KID's cubic kernel (x·y/d + 1)³ assumes features of about unit scale, as Inception's pool features
    # are; these have a mean square of ≈ 127 per dimension, which makes raw KID a sum of huge cubes
    # (≈ 8000 ± 25000 for real against real). KID scores them divided by the real set's RMS.
    kid_rescaled = True

    def __init__(self, classifier: DigitsClassifier | None = None) -> None:
        super().__init__()
        self.classifier = classifier if classifier is not None else load_digits_classifier()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[1] != 1:
            raise DTRLabError(
                f"feature: digits scores 1-channel images, got {images.shape[1]} channels; "
                "use feature: inception for RGB images"
            )
        features = self.classifier.features(to_unit_range(images))  # (N, 64)
        return features, self.classifier.head(features)  # (N, 64), (N, 10)


class InceptionFeatures(nn.Module):
    """FID's Inception-v3 (Heusel et al. 2017) through torchmetrics: pool features (2048) and the
    unbiased logits (1008) that the Inception Score uses."""

    name = "inception"
    kid_rescaled = False  # the published KID (Bińkowski et al. 2018) on raw pool features

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        weights = find_inception_weights(weights_path)
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        )

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_uint8(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grey -> RGB, (N, 3, H, W)
        features = self.net(images)  # (N, 2048), resized to 299×299 inside
        return features, features @ self.net.fc.weight.T  # (N, 2048), (N, 1008)


def _has_torch_fidelity() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def find_inception_weights(path: str | Path | None = None) -> Path:
    """A local Inception weights file (given, or already in torch.hub's cache); never downloads."""
    if not _has_torch_fidelity():
        raise DTRLabError(
            "feature: inception needs the torch-fidelity package, which is not installed; "
            "`pip install torch-fidelity` and pass inception_weights, or use feature: digits"
        )
    if path is not None:
        if not Path(path).is_file():
            raise DTRLabError(f"inception_weights: {path} is not a file; download {INCEPTION_WEIGHTS_URL}")
        return Path(path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    if not cached.is_file():
        raise DTRLabError(
            f"feature: inception needs its weights, which are not in {cached} and are never downloaded "
            f"at run time; download {INCEPTION_WEIGHTS_URL} and pass inception_weights: <that file>, "
            "or use feature: digits"
        )
    return cached


def feature_extractor(name: str = "digits", inception_weights: str | Path | None = None) -> nn.Module:
    """The extractor called `name`: 'digits' or 'inception'."""
    if name == "digits":
        return DigitsFeatures()
    if name == "inception":
        return InceptionFeatures(inception_weights)
    raise DTRLabError(f"feature: {name!r} is unknown; choose one of {', '.join(FEATURES)}")
