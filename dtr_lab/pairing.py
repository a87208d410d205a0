"""Paired runs: two configs trained from one seed start from the same network weights.

Fixed routing adds no parameters (its masks are buffers) and a learned one only its own, drawn from a
generator of their own (Switch: zero experts, so it starts as the unrouted network), so a routed and
an unrouted network built after the same seed draw identical initial weights; the module's timesteps,
noise and label dropout come from its own generator seeded by model.seed, and the data order from
data.seed. A per-seed difference of the two arms then measures the routing, not the seed. A network
that differs otherwise (or draws random numbers before its initialisation) breaks this, and
`check_paired` refuses it.
"""

from __future__ import annotations

import warnings

import torch
from lightning.pytorch import LightningDataModule

from dtr_lab.cli import build_cli
from dtr_lab.errors import DTRLabError
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import own_parameters


def instantiate(args: list[str]) -> tuple[DiffusionModule, LightningDataModule]:
    """The module and datamodule that `python -m dtr_lab fit ARGS` would train, untrained (no run dir)."""
    with warnings.catch_warnings():  # a calling script's own sys.argv is not meant for this parser
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
        cli = build_cli([*args, "--trainer.logger", "false"], run=False)
    return cli.model, cli.datamodule


def check_paired(reference: torch.nn.Module, other: torch.nn.Module, names: tuple[str, str]) -> None:
    """Raise DTRLabError unless both networks have the same parameters (names, shapes and values), apart
    from a routing's own (dtr_lab.routing.own_parameters, e.g. Switch's gates and experts, which start as
    the unrouted network: zero experts)."""
    a, b = dict(reference.named_parameters()), dict(other.named_parameters())
    own = own_parameters(reference) | own_parameters(other)
    extra = sorted(n for n in set(b) ^ set(a) if n not in own)
    shapes = [n for n in sorted(set(a) & set(b)) if a[n].shape != b[n].shape]
    if extra or shapes:
        which = ", ".join((extra + shapes)[:3])
        raise DTRLabError(
            f"paired study: {names[1]} and {names[0]} have different parameters ({which}; "
            f"{sum(p.numel() for p in b.values())} vs {sum(p.numel() for p in a.values())}); pairing needs "
            "routing that adds parameters only of its own: compare these arms unpaired"
        )
    differ = [n for n in a if not torch.equal(a[n], b[n])]
    if differ:
        raise DTRLabError(
            f"paired study: {names[1]} and {names[0]} start from different weights ({differ[0]}) at the same "
            "seed; something draws random numbers before the network's initialisation"
        )
