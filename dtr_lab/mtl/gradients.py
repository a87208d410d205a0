"""Per-interval gradients from separate sub-batches: K small backward passes cost about one
full-batch step, unlike K backward passes through one full-batch graph."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """∂loss/∂params as one flat vector (P,), zeros for unused parameters; never touches .grad."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads, strict=True)]
    )


def write_grad(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """Set each parameter's .grad from a flat vector (for an optimizer step after gradient surgery)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def interval_gradients(
    loss_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    batch: tuple[torch.Tensor | None, ...],
    num_intervals: int,
    params: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the K interval mean losses, (K, P), and the per-sample values, (N,).

    `batch` tensors (None allowed, e.g. labels of an unconditional model) are grouped by interval
    along dim 0, B/K samples each; `loss_fn(*sub_batch)` returns (objective, reported) per sample.
    """
    parts = [x.chunk(num_intervals) if x is not None else [None] * num_intervals for x in batch]
    grads, reported = [], []
    for sub in zip(*parts, strict=True):
        objective, value = loss_fn(*sub)  # (B/K,) each
        grads.append(flat_grad(objective.mean(), params))
        reported.append(value.detach())
    return torch.stack(grads), torch.cat(reported)
