"""The routing protocol: what every routing answers, so that no code outside this package asks which one
it has.

A routing (:class:`Routing`, a config choice) builds a router (:class:`BaseRouter`, an ``nn.Module`` inside
the network) for the network's routed blocks. Between them they answer:

- the masks for (t, block), fixed or learned: ``router.masks(t, emb)``, one per routed block;
- its own weighted loss term: ``router.loss(embedder, t, generator)``, a :class:`RoutingLoss` or None
  (fixed tables have none);
- what to draw: ``router.drawing(embedder)``, a :class:`Drawing` (tables, or gate choices and
  probabilities), and ``router.learned`` (whether it changes in training and is drawn again);
- a stable identity: ``routing.identity()``, a dict of its class name and options (not a ``repr``);
- which parameters are its own: ``own_parameters(net)`` (for pairing);
- its short label: the class attribute ``label``, which a run records as it starts (labels.yaml, with
  the label's colour: dtr_lab.storage.labels), so readers never read this package;
- ``run_options``: which options a config may give as a run directory, and the reader (a function of
  ``dtr_lab.runs``, the object itself) that turns it into numbers (a routing never reads files).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from dtr_lab.errors import DTRLabError


class RoutingLoss(NamedTuple):
    """A routing's own loss term: ``weight · value`` joins the objective, ``value`` is logged as
    ``train/{name}``."""

    name: str
    value: torch.Tensor
    weight: float


@dataclass
class Drawing:
    """What a router draws. tables: 0/1 tables (T, columns) by name, whose first one is drawn as
    ``masks_{name}`` (and, with several, their mean as ``mean_masks_{name}``) and whose interval IoU is
    recorded; images: further images (T, columns) by name in [0, 1] (e.g. gate probabilities); labels:
    by drawn name, what its values are (a 0/1 table's 1, e.g. "chosen"; else the colour bar's label);
    columns: what a column is (the figure's axis), ``group`` of them per block (block boundaries drawn);
    pixels: a column's width in the PNG file; learned: drawn again as training changes it (else once,
    at fit start)."""

    tables: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    pixels: int = 1
    learned: bool = False
    columns: str = "channel"
    group: int = 1
    labels: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def merge(drawings: list[Drawing]) -> Drawing:
        """Several routers' drawings as one: tables of one name pooled (e.g. per-interval experts)."""
        out = Drawing()
        for d in drawings:
            for name, tables in d.tables.items():
                out.tables.setdefault(name, []).extend(tables)
            out.images = {**d.images, **out.images}
            out.labels = {**d.labels, **out.labels}
            out.pixels, out.learned = d.pixels, out.learned or d.learned
            out.columns, out.group = d.columns, d.group
        return out


class BaseRouter(nn.Module):
    """What a routing builds into a network: per routed block, the masks of each sample's timestep."""

    learned = False  # masks learned in training (drawn again as they change)
    enabled = True  # masks anything (NoRouting's tables: every channel active, so no multiply)

    def masks(self, t: torch.Tensor, emb: torch.Tensor | None = None) -> list[torch.Tensor | Callable | None]:
        """Per routed block, a mask (N, width), a callable m ⊙ z (learned), or None (unrouted)."""
        raise NotImplementedError

    def loss(
        self, embedder: nn.Module, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> RoutingLoss | None:
        """Its own loss term for timesteps t (N,); None for fixed tables."""
        return None

    def drawing(self, embedder: nn.Module) -> Drawing:
        """What RoutingMaps draws (embedder: the network's timestep embedding, which learned gates read)."""
        raise NotImplementedError


class Routing:
    """A routing: a config choice that builds the network's router (see the module docstring)."""

    label = ""  # the short name in run labels, figures and tables
    # options that a config may give as a run directory: option -> the reader (path -> options, e.g.
    # dtr_lab.runs.read_affinity_options) that turns the directory into this routing's options (numbers),
    # called before the routing is built
    run_options: dict[str, Callable[[str], dict[str, Any]]] = {}

    def build(self, num_timesteps: int, widths: list[int], embed_dim: int) -> BaseRouter:
        """The network's router for routed blocks of these input widths (embed_dim: the timestep
        embedding's width, which learned routings gate on)."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The options that decide what it routes (plain numbers, strings and lists)."""
        return dict(vars(self))

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on: the class name and the options."""
        return {"class": type(self).__name__, **self.options()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({args})"


def identity_of(saved: dict | str) -> dict | str:
    """A checkpoint's routing identity as a dict. dtr_lab before the routing package stored a ``repr``
    string, ``ClassName(option=value, ...)`` with Python literals: it is read back into the same dict that
    ``Routing.identity()`` gives today, so old checkpoints still load and the comparison no longer depends
    on how ``__repr__`` prints. Text that is not such a call is returned as it is (and will not match)."""
    if not isinstance(saved, str):
        return saved
    try:
        call = ast.parse(saved.strip(), mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
            return saved
        return {"class": call.func.id, **{k.arg: ast.literal_eval(k.value) for k in call.keywords}}
    except (SyntaxError, ValueError):
        return saved


def identity_text(identity: dict | str) -> str:
    """An identity as people read it in an error line, ``DTRRouting(alpha=4.0, beta=0.8)`` (display only:
    identities are compared as dicts)."""
    if not isinstance(identity, dict) or "class" not in identity:
        return str(identity)
    args = ", ".join(f"{k}={v!r}" for k, v in identity.items() if k != "class")
    return f"{identity['class']}({args})"


def routers(net: nn.Module) -> list[tuple[str, BaseRouter]]:
    """Every router inside a network, with its module name."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, BaseRouter)]


def own_parameters(net: nn.Module) -> set[str]:
    """The names of a network's parameters that belong to its routing (a learned router's gates and
    experts); pairing exempts them, as they start as the unrouted network."""
    return {
        f"{name}.{p}" if name else p for name, router in routers(net) for p, _ in router.named_parameters()
    }


def check_beta(beta: float) -> float:
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
