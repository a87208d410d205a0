"""Denoising Task Routing: per-timestep channel masks (Park et al., ICLR 2024, arXiv 2310.07138).

A routing strategy turns (num_tasks, channels) into a boolean mask table ``m[t, c]``; the
:class:`Router` holds those tables as buffers and every routed block computes
``z + Block(m_t ⊙ z)``, so masked channels pass through the skip connection only. DTR's window is the
same in every block; R-TR draws a table of its own for every routed block, as the official code
builds one TaskRouter per block (models/DiT/models.py, models/taskrouting.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.seeds import derive_seed


class RoutingStrategy:
    """Maps (num_tasks, channels) to a BoolTensor [num_tasks, channels] of active channels."""

    per_block = False  # whether every routed block gets a table of its own (else one per width)

    def masks(self, num_tasks: int, channels: int, block: int = 0) -> torch.Tensor:
        """The table of routed block ``block`` (ignored unless ``per_block``)."""
        raise NotImplementedError

    def build(self, num_timesteps: int, widths: list[int], embed_dim: int) -> nn.Module:
        """The network's router for routed blocks of these input widths (embed_dim: the timestep
        embedding's width, which learned routings gate on)."""
        return Router(self, num_timesteps, widths)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _check_beta(beta: float) -> float:
    if not 0.0 < beta <= 1.0:
        raise DTRLabError(
            f"routing beta={beta} is outside (0, 1]: beta is the fraction of channels active "
            "per timestep; use e.g. 0.8 (the DTR paper's default) or 1.0 for no routing"
        )
    return float(beta)


def active_channels(beta: float, channels: int) -> int:
    """C_β = int(C·β) as the official code computes it (DTR models/taskrouting.py ``create_mask_tasks``),
    at least one channel (where the official count is 0 its mask would route nothing).

    The float product is truncated, so where β·C is an integer that the product misses from below the
    official count is one less than ⌊β·C⌋ (a float artefact: β = 0.7, C = 90 gives 62, not 63); it is
    kept so that tables and checkpoints equal the official ones for every (β, C).
    """
    return max(1, int(channels * beta))


class NoRouting(RoutingStrategy):
    """Every channel active at every timestep: the unrouted (vanilla) model."""

    def masks(self, num_tasks: int, channels: int, block: int = 0) -> torch.Tensor:
        return torch.ones(num_tasks, channels, dtype=torch.bool)


class DTRRouting(RoutingStrategy):
    """A sliding window of C_β channels starting at round((C − C_β)·(t/(T−1))^α).

    As the official ``create_mask_tasks`` computes it (DTR models/taskrouting.py): t/(T−1) is
    ``np.linspace(0, 1, T)`` (t times the float step 1/(T−1), the last one exactly 1) and the rounding
    is NumPy's, half to even, so the table equals the official one bit for bit.
    """

    def __init__(self, alpha: float = 4.0, beta: float = 0.8) -> None:
        if not alpha > 0:
            raise DTRLabError(
                f"routing alpha={alpha} must be > 0: alpha shapes how fast the window moves "
                "with t; use e.g. 4.0 (the DTR paper's default) or 1.0 for a linear shift"
            )
        self.alpha = float(alpha)
        self.beta = _check_beta(beta)

    def masks(self, num_tasks: int, channels: int, block: int = 0) -> torch.Tensor:
        c_beta = active_channels(self.beta, channels)
        progress = torch.arange(num_tasks, dtype=torch.float64) * (1.0 / max(num_tasks - 1, 1))
        progress[-1] = 1.0 if num_tasks > 1 else 0.0  # np.linspace(0, 1, T) ends exactly at 1
        start = torch.round((channels - c_beta) * progress**self.alpha).long()  # (T,) half to even
        c = torch.arange(channels)
        return (c >= start[:, None]) & (c < start[:, None] + c_beta)  # (T, C)


class RandomRouting(RoutingStrategy):
    """R-TR baseline: an independent random set of C_β channels per timestep, fixed by seed.

    per_block: every routed block draws its own table (the official code's R-TR: two blocks' sets at
        the same t overlap by ≈ β); false shares one table per channel width across blocks.
    Tables come from a generator of their own, seeded by (seed, block), so building a model never
    touches the global RNG and a vanilla and an R-TR model built after one manual_seed get the same
    initial weights.
    """

    def __init__(self, beta: float = 0.8, seed: int = 0, per_block: bool = True) -> None:
        self.beta = _check_beta(beta)
        self.seed = int(seed)
        self.per_block = bool(per_block)

    def masks(self, num_tasks: int, channels: int, block: int = 0) -> torch.Tensor:
        c_beta = active_channels(self.beta, channels)
        # the shared table keeps the seed itself; block b's stream is seed·1000003 + b
        seed = derive_seed(self.seed, block) if self.per_block else self.seed
        gen = torch.Generator().manual_seed(seed)
        order = torch.rand(num_tasks, channels, generator=gen).argsort(dim=1)  # (T, C)
        table = torch.zeros(num_tasks, channels, dtype=torch.bool)
        table.scatter_(1, order[:, :c_beta], True)
        return table


class Router(nn.Module):
    """Holds the routed blocks' mask tables and gathers each sample's mask by its own t.

    widths: the input width of every routed block, in the network's order (the block's index). A
    per-block strategy stores a table per block (``table_b{index}``), any other one table per width
    (``table_{width}``) that all blocks of that width share.
    """

    def __init__(self, strategy: RoutingStrategy, num_timesteps: int, widths: list[int]) -> None:
        super().__init__()
        self.strategy = strategy
        self.num_timesteps = num_timesteps
        self.enabled = not isinstance(strategy, NoRouting)
        self.widths = list(widths)
        self.names = [f"table_b{i}" if strategy.per_block else f"table_{w}" for i, w in enumerate(widths)]
        for block, (name, width) in enumerate(zip(self.names, widths, strict=True)):
            if not hasattr(self, name):
                # non-persistent: the table is a function of the config, so checkpoints of
                # routed and unrouted models share one state_dict layout
                table = strategy.masks(num_timesteps, width, block)
                self.register_buffer(name, table.float(), persistent=False)

    def table(self, block: int) -> torch.Tensor:
        """The [T, width] float mask table of routed block ``block``."""
        return getattr(self, self.names[block])

    def tables(self) -> dict[int, list[torch.Tensor]]:
        """The distinct tables by width, in block order: one per width when shared, else one per block."""
        out: dict[int, list[torch.Tensor]] = {}
        for name, width in dict(zip(self.names, self.widths, strict=True)).items():
            out.setdefault(width, []).append(getattr(self, name))
        return out

    def masks(self, t: torch.Tensor, emb: torch.Tensor | None = None) -> list[torch.Tensor | None]:
        """Per-sample masks (N, width) of every routed block for timesteps t (N,); Nones when unrouted.
        (emb, the timestep embedding, is what learned routers gate on; tables don't need it.)"""
        if not self.enabled:
            return [None] * len(self.names)
        # one gather per distinct table: shared tables cost one (N, width) gather for all their blocks
        gathered = {name: getattr(self, name)[t] for name in dict.fromkeys(self.names)}
        return [gathered[name] for name in self.names]

    def loss(self, embedder: nn.Module, t: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """A fixed table has no loss of its own (a learned router's is added to the objective)."""
        return None

    def extra_repr(self) -> str:
        return f"{self.strategy!r}, T={self.num_timesteps}, blocks={len(self.names)}"


def route(z: torch.Tensor, mask: torch.Tensor | Callable | None, channel_dim: int = -1) -> torch.Tensor:
    """m_t ⊙ z with the (N, C) mask broadcast over every dim but batch and channel_dim; a learned mask
    (a callable, e.g. Switch's gated experts) computes m ⊙ z from z itself."""
    if mask is None:
        return z
    if not isinstance(mask, torch.Tensor):
        return mask(z, channel_dim)
    shape = [1] * z.dim()
    shape[0] = mask.shape[0]
    shape[channel_dim] = mask.shape[1]
    return z * mask.to(z.dtype).view(shape)
