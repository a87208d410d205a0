"""Sample-quality metrics: FID/KID/IS through torchmetrics, improved precision/recall, and the
digits classifier whose features give digits-FID and whose predictions give class accuracy."""

from dtr_lab.metrics.digits_classifier import (
    DigitsClassifier,
    load_digits_classifier,
    train_digits_classifier,
)
from dtr_lab.metrics.features import DigitsFeatures, InceptionFeatures, feature_extractor
from dtr_lab.metrics.memorisation import Memorisation
from dtr_lab.metrics.precision_recall import knn_radii, manifold_coverage, precision_recall
from dtr_lab.metrics.quality import SampleQualityMetrics, frechet_distance, inception_score, kernel_distance

__all__ = [
    "DigitsClassifier",
    "DigitsFeatures",
    "InceptionFeatures",
    "Memorisation",
    "SampleQualityMetrics",
    "feature_extractor",
    "frechet_distance",
    "inception_score",
    "kernel_distance",
    "knn_radii",
    "load_digits_classifier",
    "manifold_coverage",
    "precision_recall",
    "train_digits_classifier",
]
