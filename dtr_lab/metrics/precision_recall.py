"""Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019, arXiv 1904.06991).

Each set's manifold is the union of balls around its features whose radius is the distance
to the k-th nearest neighbour in the same set. Precision is the share of generated features
inside the real manifold (are samples realistic?); recall is the share of real features
inside the generated manifold (is the real variety covered?).
"""

from __future__ import annotations

import torch

from dtr_lab.errors import DTRLabError


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1024) -> torch.Tensor:
    """Distance from each feature to its k-th nearest other feature: (N, F) -> (N,)."""
    if not 1 <= k < len(features):
        raise DTRLabError(
            f"precision/recall k={k} must be in [1, {len(features) - 1}] for {len(features)} samples"
        )
    radii = []
    for rows in features.split(batch_size):
        d = torch.cdist(rows, features)  # (B, N)
        # The k+1 smallest include the point itself at distance 0.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def manifold_coverage(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int = 1024
) -> float:
    """Share of queries within radii[j] of some support[j]: queries (M, F), support (N, F), radii (N,)."""
    inside = [(torch.cdist(rows, support) <= radii).any(dim=1) for rows in queries.split(batch_size)]
    return torch.cat(inside).float().mean().item()


def precision_recall(
    real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3, batch_size: int = 1024
) -> tuple[float, float]:
    """(precision, recall) of generated features against real ones, k-NN manifolds in both."""
    if real_features.ndim != 2 or fake_features.ndim != 2 or real_features.shape[1] != fake_features.shape[1]:
        raise DTRLabError(
            f"precision/recall needs two (N, F) feature sets of equal F, got {tuple(real_features.shape)} "
            f"and {tuple(fake_features.shape)}"
        )
    real_radii = knn_radii(real_features, k, batch_size)
    fake_radii = knn_radii(fake_features, k, batch_size)
    precision = manifold_coverage(fake_features, real_features, real_radii, batch_size)
    recall = manifold_coverage(real_features, fake_features, fake_radii, batch_size)
    return precision, recall
