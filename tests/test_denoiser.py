"""The network interface (dtr_lab.models.Denoiser): the hooks every network answers, the answers of one
without the feature, the one line that refuses a network outside it, and no attribute probing left."""

from __future__ import annotations

import ast
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.models import Denoiser, DiT, IntervalExperts, UNet
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import Intervals
from dtr_lab.routing import NoRouting, SwitchRouting

PACKAGE = Path(__file__).resolve().parents[1] / "dtr_lab"
T = 20


class Scale(Denoiser):
    """ε̂ = w·x: a hand-made network that declares none of the optional features."""

    def __init__(self, *args) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.w * x


def test_a_network_without_the_features_answers_none_for_each():
    net = Scale()
    assert net.routing_loss(torch.tensor([0, 5])) is None
    drawing = net.routing_drawing()
    assert drawing.tables == {} and drawing.images == {} and not drawing.learned
    assert (net.size, net.pos_embed_layout, net.stratified, net.block_pattern) == (None, "none", False, None)
    with pytest.raises(NotImplementedError, match="Scale has no position embedding"):
        net.set_pos_embed_layout("row_first")


def test_the_module_trains_it_and_records_its_identity_without_a_size():
    module = DiffusionModule(net=Scale, num_timesteps=T, sample_steps=T, ema_decay=0.9)
    assert not module.tasks.stratified  # it serves every interval with the same parameters
    assert module.routing_prior(torch.tensor([1, 2])) is None
    identity = module.identity()
    assert (identity["net"], identity["pos_embed"]) == ("Scale", "none")


def test_the_shipped_networks_answer_their_own():
    switch = SwitchRouting(num_experts=4, k=2, seed=0)
    dit = DiT(8, 1, 10, T, switch, size="DiT-T/2", pos_embed_layout="row_first")
    assert (dit.size, dit.pos_embed_layout, dit.block_pattern) == ("DiT-T/2", "row_first", r"blocks\.[^.]+")
    assert dit.routing_loss(torch.tensor([0, 19]), torch.Generator().manual_seed(0)) is not None  # the prior
    assert dit.routing_drawing().learned
    unet = UNet(8, 1, 10, T, NoRouting(), size="UNet-T")
    assert (unet.size, unet.pos_embed_layout, unet.block_pattern) == ("UNet-T", "none", None)
    assert unet.routing_loss(torch.tensor([3])) is None  # a fixed routing has no loss term
    experts = IntervalExperts(8, 1, 10, T, NoRouting(), partial(DiT, size="DiT-T/2"), width_matched=False)
    assert experts.stratified and experts.size is None


def test_a_network_outside_the_interface_is_refused_in_one_line():
    refused = r"^model\.net built a Linear, which is not a dtr_lab\.models\.Denoiser; subclass Denoiser"
    with pytest.raises(DTRLabError, match=refused):
        DiffusionModule(net=lambda *args: nn.Linear(2, 2), num_timesteps=T, sample_steps=T)
    with pytest.raises(DTRLabError, match=r"^model\.net\.init_args\.expert built a Linear"):
        DiffusionModule(
            net=lambda *args: IntervalExperts(*args, expert=lambda *a: nn.Linear(2, 2), width_matched=False),
            num_timesteps=T, sample_steps=T, intervals=Intervals(num_intervals=2),
        )


def probed(source: str) -> list[str]:
    """getattr/hasattr calls whose object is a network (a name ending in net or expert)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if call and node.func.id in ("getattr", "hasattr"):
            target = ast.unparse(node.args[0])
            if target.rsplit(".", 1)[-1] in ("net", "expert", "e"):
                found.append(f"{node.func.id}({target}, …)")
    return found


def test_the_probe_finder_finds_probing():
    assert probed("getattr(self.net, 'bind', None)\nhasattr(expert, 'x')\ngetattr(cfg, 'y')") == [
        "getattr(self.net, …)", "hasattr(expert, …)"
    ]


def test_no_network_is_probed_for_attributes_in_dtr_lab():
    found = {str(p.relative_to(PACKAGE)): probed(p.read_text()) for p in PACKAGE.rglob("*.py")}
    assert {path: calls for path, calls in found.items() if calls} == {}
