"""The denoising network's interface: what the module, its checks and the analyses ask of a network.

Every network the module trains is a `Denoiser`: ``forward(x, t, y)`` and the hooks below. A network
without a feature keeps the base's answer here (no routing loss, nothing to draw, no position embedding,
no blocks, nothing to size for the run's tasks), so callers ask every network the same way and never
probe it for attributes. DiT, UNet and IntervalExperts implement it; so does a hand-made network.
"""

from __future__ import annotations

import torch
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.tasks import Tasks
from dtr_lab.routing import Drawing, RoutingLoss


class Denoiser(nn.Module):
    """A denoiser ε_θ(x_t, t, y), with the hooks the module, its checks and the analyses call."""

    # its registry name (e.g. "DiT-S/2"), part of a checkpoint's identity; None: a network without sizes
    size: str | None = None
    # the layout of its fixed position embedding (DiT's POS_EMBED_LAYOUTS), part of a checkpoint's identity
    pos_embed_layout = "none"
    # it serves each task interval with parts of its own (IntervalExperts): the module then stratifies the
    # batches, B/K samples per interval
    stratified = False
    # a regex whose match at the start of a parameter name names its block: the per-block analyses' "auto"
    block_pattern: str | None = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (N, C, H, W), t (N,), y (N,) or None (unconditional) -> ε (and v when σ is learned)."""
        raise NotImplementedError

    def bind(self, tasks: Tasks) -> None:
        """Size the network for the run's timestep tasks (called once by the module); most have nothing to
        size."""

    def routing_loss(self, t: torch.Tensor, generator: torch.Generator | None = None) -> RoutingLoss | None:
        """The routing's own weighted loss term for timesteps t (Switch's diffusion prior); None: none."""
        return None

    def routing_drawing(self) -> Drawing:
        """What its routing draws (dtr_lab.callbacks.RoutingMaps); nothing without a routing."""
        return Drawing()

    def set_pos_embed_layout(self, layout: str) -> None:
        """Rebuild the position embedding in another layout (a checkpoint's own); asked only of a network
        whose pos_embed_layout is not "none"."""
        raise NotImplementedError(f"{type(self).__name__} has no position embedding to rebuild")


def check_denoiser(net: nn.Module, option: str) -> None:
    """A network the module is to train implements the Denoiser interface: else one line naming the option."""
    if not isinstance(net, Denoiser):
        raise DTRLabError(
            f"{option} built a {type(net).__name__}, which is not a dtr_lab.models.Denoiser; subclass "
            "Denoiser (its hooks default to none) so the module and the analyses can ask it the same way"
        )
