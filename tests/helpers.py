"""Helpers shared by test modules (tests import this, never each other)."""

from __future__ import annotations

import torch

from dtr_lab.mtl import Intervals, MTLMethod, TaskBatch, Tasks


def tasks_of(k: int, num_timesteps: int = 100) -> Tasks:
    """A stratified split of T timesteps into k uniform intervals."""
    return Tasks(torch.linspace(10.0, 0.1, num_timesteps), Intervals(num_intervals=k), stratified=True)


def bound(method: MTLMethod, k: int) -> MTLMethod:
    """The method sized for k intervals, as the module binds it."""
    method.bind(tasks_of(k))
    return method


def linear_task_batch(grads: torch.Tensor, step: int = 0, seed: int = 0) -> tuple[TaskBatch, torch.Tensor]:
    """A TaskBatch whose K interval gradients are the rows of ``grads`` (K, P), and its parameter θ.

    Interval k holds one sample x_k = g_k with objective x_k·θ at θ = 0, so ∇L_k = g_k exactly and
    every L_k is 0.
    """
    theta = torch.zeros(grads.shape[1], dtype=grads.dtype, requires_grad=True)

    def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        objective = x @ theta  # (N,)
        return objective, objective.detach()

    batch = TaskBatch(tasks_of(grads.shape[0]), loss_fn, (grads,), [theta], step, seed)
    return batch, theta
