"""Denoising Task Routing: per-timestep channel masks (Park et al., ICLR 2024, arXiv 2310.07138).

A routing strategy turns (num_timesteps, channels) into a boolean mask table ``m[t, c]``; the
:class:`Router` holds those tables as buffers and every routed block computes
``z + Block(m_t ⊙ z)``, so masked channels pass through the skip connection only. DTR's window is the
same in every block; R-TR draws a table of its own for every routed block, as the official code
builds one TaskRouter per block (models/DiT/models.py, models/taskrouting.py).
"""

from __future__ import annotations

import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.routing.base import BaseRouter, Drawing, Routing, active_channels, check_beta
from dtr_lab.seeds import derive_seed


class TableRouting(Routing):
    """A fixed routing: maps (T = num_timesteps, channels) to a BoolTensor [T, channels] of active channels,
    held by a :class:`Router` as buffers (no parameters)."""

    per_block = False  # whether every routed block gets a table of its own (else one per width)
    routes = True  # whether it masks anything (NoRouting: every channel active, no multiply)
    saved = False  # whether its tables are data a checkpoint holds (else a function of the config)

    def table(self, num_timesteps: int, channels: int, block: int = 0) -> torch.Tensor:
        """The table of routed block ``block`` (ignored unless ``per_block``)."""
        raise NotImplementedError

    def build(self, num_timesteps: int, widths: list[int], embed_dim: int) -> Router:
        return Router(self, num_timesteps, widths)


class NoRouting(TableRouting):
    """Every channel active at every timestep: the unrouted (vanilla) model."""

    label, routes = "vanilla", False

    def table(self, num_timesteps: int, channels: int, block: int = 0) -> torch.Tensor:
        return torch.ones(num_timesteps, channels, dtype=torch.bool)


class DTRRouting(TableRouting):
    """A sliding window of C_β channels starting at round((C − C_β)·(t/(T−1))^α).

    As the official ``create_mask_tasks`` computes it (DTR models/taskrouting.py): t/(T−1) is
    ``np.linspace(0, 1, T)`` (t times the float step 1/(T−1), the last one exactly 1) and the rounding
    is NumPy's, half to even, so the table equals the official one bit for bit.
    """

    label = "dtr"

    def __init__(self, alpha: float = 4.0, beta: float = 0.8) -> None:
        if not alpha > 0:
            raise DTRLabError(
                f"routing alpha={alpha} must be > 0: alpha shapes how fast the window moves "
                "with t; use e.g. 4.0 (the DTR paper's default) or 1.0 for a linear shift"
            )
        self.alpha = float(alpha)
        self.beta = check_beta(beta)

    def table(self, num_timesteps: int, channels: int, block: int = 0) -> torch.Tensor:
        c_beta = active_channels(self.beta, channels)
        progress = torch.arange(num_timesteps, dtype=torch.float64) * (1.0 / max(num_timesteps - 1, 1))
        progress[-1] = 1.0 if num_timesteps > 1 else 0.0  # np.linspace(0, 1, T) ends exactly at 1
        start = torch.round((channels - c_beta) * progress**self.alpha).long()  # (T,) half to even
        c = torch.arange(channels)
        return (c >= start[:, None]) & (c < start[:, None] + c_beta)  # (T, C)


class RandomRouting(TableRouting):
    """R-TR baseline: an independent random set of C_β channels per timestep, fixed by seed.

    per_block: every routed block draws its own table (the official code's R-TR: two blocks' sets at
        the same t overlap by ≈ β); false shares one table per channel width across blocks.
    Tables come from a generator of their own, seeded by (seed, block), so building a model never
    touches the global RNG and a vanilla and an R-TR model built after one manual_seed get the same
    initial weights.
    """

    label = "rtr"

    def __init__(self, beta: float = 0.8, seed: int = 0, per_block: bool = True) -> None:
        self.beta = check_beta(beta)
        self.seed = int(seed)
        self.per_block = bool(per_block)

    def table(self, num_timesteps: int, channels: int, block: int = 0) -> torch.Tensor:
        c_beta = active_channels(self.beta, channels)
        # the shared table keeps the seed itself; block b's stream is seed·1000003 + b
        seed = derive_seed(self.seed, block) if self.per_block else self.seed
        gen = torch.Generator().manual_seed(seed)
        order = torch.rand(num_timesteps, channels, generator=gen).argsort(dim=1)  # (T, C)
        table = torch.zeros(num_timesteps, channels, dtype=torch.bool)
        table.scatter_(1, order[:, :c_beta], True)
        return table


class TableDataRouting(RandomRouting):
    """R-TR whose tables are data: every routed block's table is saved in the checkpoint, and a checkpoint's
    tables replace the draw when it loads. The official R-TR (DTR ``init_method: random``) draws its tables
    from NumPy's global RNG, so no seed redraws them: an imported official R-TR file brings its own. Built
    without a checkpoint, it is RandomRouting(beta, seed)'s per-block draw."""

    label, colour, saved = "rtr_data", 2, True  # R-TR's colour: the same method

    def __init__(self, beta: float = 0.8, seed: int = 0) -> None:
        super().__init__(beta, seed, per_block=True)

    def options(self) -> dict:
        return {"beta": self.beta, "seed": self.seed}


class Router(BaseRouter):
    """Holds the routed blocks' mask tables and gathers each sample's mask by its own t.

    widths: the input width of every routed block, in the network's order (the block's index). A
    per-block strategy stores a table per block (``table_b{index}``), any other one table per width
    (``table_{width}``) that all blocks of that width share.
    """

    def __init__(self, strategy: TableRouting, num_timesteps: int, widths: list[int]) -> None:
        super().__init__()
        self.strategy = strategy
        self.num_timesteps = num_timesteps
        self.enabled = strategy.routes
        self.widths = list(widths)
        self.names = [f"table_b{i}" if strategy.per_block else f"table_{w}" for i, w in enumerate(widths)]
        for block, (name, width) in enumerate(zip(self.names, widths, strict=True)):
            if not hasattr(self, name):
                # non-persistent where the table is a function of the config, so checkpoints of
                # routed and unrouted models share one state_dict layout; saved where it is data
                table = strategy.table(num_timesteps, width, block)
                self.register_buffer(name, table.float(), persistent=strategy.saved)

    def block_table(self, block: int) -> torch.Tensor:
        """The [T, width] float mask table that routed block ``block`` holds (built by the strategy's
        ``table``)."""
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

    def drawing(self, embedder: torch.nn.Module | None = None) -> Drawing:
        """The fixed tables, by width (``table_{width}``)."""
        by_width = self.tables().items()
        return Drawing({f"table_{w}": [t.detach().cpu() for t in tables] for w, tables in by_width})

    def extra_repr(self) -> str:
        return f"{self.strategy!r}, T={self.num_timesteps}, blocks={len(self.names)}"
