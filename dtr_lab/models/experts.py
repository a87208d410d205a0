"""Independent experts per interval: the no-sharing end of the sharing spectrum.

K denoisers, one per timestep interval of the run (model.intervals), each trained only on its interval's
timesteps and used only there at sampling, as eDiff-I's expert denoisers (Balaji et al. 2022,
arXiv 2211.01324) split the sampling chain between networks. No parameter is shared: whether the
denoising tasks help each other at all is this arm against the unrouted network (full sharing) and DTR /
Switch (partial sharing).

The experts are built by `bind` from the run's tasks, as an MTL method is sized by its own `bind` (the
module binds both to its tasks and stratifies the batches, so every expert gets B/K samples a step).
`width_matched` picks the experts' hidden size so that the K of them hold about as many parameters as one
network of the configured size; otherwise each expert has the configured width (K times the parameters).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.models.denoiser import Denoiser, check_denoiser
from dtr_lab.models.factory import NetFactory
from dtr_lab.mtl.tasks import Tasks
from dtr_lab.routing import Drawing, Routing, RoutingLoss


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def matched_width(build: Callable[..., nn.Module], k: int, width_step: int = 4) -> int:
    """The hidden size h (a valid multiple of `width_step`) whose k networks' parameters come closest to
    one network built with its configured width. Networks are built on the meta device: no memory, and
    no draw from the random number generator (the run's initial weights stay the same)."""
    with torch.device("meta"):
        target = num_parameters(build())
        best: tuple[float, int] | None = None
        h = width_step
        while True:
            try:
                total = k * num_parameters(build(hidden_size=h))
            except DTRLabError:  # e.g. not a multiple of the network's heads
                h += width_step
                continue
            gap = abs(total - target)
            if best is None or gap < best[0]:
                best = (gap, h)
            if total >= target:
                return best[1]
            h += width_step


class IntervalExperts(Denoiser):
    """K independent denoisers; each sample goes to the expert of its timestep's interval."""

    stratified = True  # every expert gets B/K samples a step

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        num_classes: int,
        num_timesteps: int,
        routing: Routing,
        expert: NetFactory,
        width_matched: bool = True,
    ) -> None:
        """
        Args:
            input_size, in_channels, num_classes, num_timesteps, routing: filled in by the module and
                passed to every expert.
            expert: the network of one expert, e.g. dtr_lab.models.DiT with size: DiT-T/2.
            width_matched: give each expert the hidden size at which the K experts hold about the
                parameters of one such network (the expert class must take `hidden_size`, as DiT does);
                false: every expert at the configured width.
        """
        super().__init__()
        self.build = lambda **options: expert(
            input_size, in_channels, num_classes, num_timesteps, routing, **options
        )
        self.width_matched = width_matched
        self.hidden_size: int | None = None
        self.experts = nn.ModuleList()
        # the intervals' edges (K+1,): a plain tensor, not a buffer, which the EMA would try to average
        self.edges = torch.zeros(0, dtype=torch.long)

    def bind(self, tasks: Tasks) -> None:
        """Build one expert per interval of the run's tasks."""
        k = tasks.num_intervals
        options = {}
        if self.width_matched:
            try:
                self.hidden_size = matched_width(self.build, k)
            except TypeError:
                raise DTRLabError(
                    "model.net.init_args.width_matched needs an expert that takes hidden_size (e.g. "
                    "dtr_lab.models.DiT); set width_matched: false for equal width"
                ) from None
            options["hidden_size"] = self.hidden_size
        self.experts = nn.ModuleList(self.build(**options) for _ in range(k))
        check_denoiser(self.experts[0], "model.net.init_args.expert")
        self.edges = tasks.intervals.edges.clone()

    def index(self, t: torch.Tensor) -> torch.Tensor:
        """The expert of each timestep (its interval), (N,) long; a fractional t goes by its interval."""
        return torch.bucketize(t, self.edges[1:-1].to(t.device, t.dtype), right=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if not len(self.experts):
            raise DTRLabError("IntervalExperts has no experts yet: bind it to the run's tasks first")
        k = self.index(t)  # (N,)
        order, outputs = [], []
        for i, expert in enumerate(self.experts):
            idx = (k == i).nonzero().flatten()
            if len(idx):  # an expert without samples is not called: it gets no gradient from this batch
                outputs.append(expert(x[idx], t[idx], None if y is None else y[idx]))  # (n_i, C', H, W)
                order.append(idx)
        inverse = torch.argsort(torch.cat(order))  # back to the batch's order
        return torch.cat(outputs)[inverse]  # (N, C', H, W)

    def routing_loss(self, t: torch.Tensor, generator: torch.Generator | None = None) -> RoutingLoss | None:
        """A learned routing's loss inside the experts (Switch's prior): each expert's on its own samples,
        weighted by their share of the batch; None for fixed routing."""
        k, losses, term = self.index(t), [], None
        for i, expert in enumerate(self.experts):
            mine = t[k == i]
            term = expert.routing_loss(mine, generator) if len(mine) else None
            if term is not None:
                losses.append(term.value * len(mine) / len(t))
                name, weight = term.name, term.weight
        return RoutingLoss(name, sum(losses), weight) if losses else None

    def routing_drawing(self) -> Drawing:
        """Its experts' drawings, pooled (tables of one width drawn and compared together)."""
        return Drawing.merge([e.routing_drawing() for e in self.experts])
