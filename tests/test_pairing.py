"""Paired runs: vanilla, R-TR, DTR and Switch built for one seed share weights, noise and data order."""

import pytest
import torch
from helpers import REPO

from dtr_lab.errors import DTRLabError
from dtr_lab.pairing import check_paired, instantiate
from dtr_lab.routing import own_parameters

ROUTINGS = ("vanilla", "rtr", "dtr", "switch")
NAMES = {"rtr": "RandomRouting", "dtr": "DTRRouting", "switch": "SwitchRouting"}


def build(routing: str, seed: int, *extra: str):
    return instantiate(
        [
            "--config",
            str(REPO / "experiments/repro/base.yaml"),
            "--config",
            str(REPO / f"experiments/routing/{routing}.yaml"),
            "--seed_everything",
            str(seed),
            "--model.seed",
            str(seed),
            "--data.init_args.seed",
            str(seed),
            *extra,
        ]
    )


def first_batches(model, datamodule, n: int = 2):
    datamodule.setup("fit")
    batches = []
    for i, (x0, y) in enumerate(datamodule.train_dataloader()):
        if i == n:
            break
        batches.append((x0, y, *model.draw(x0, y)))  # data, then t, noise, dropped labels
    return batches


@pytest.fixture(scope="module")
def arms():
    return {r: build(r, 3) for r in ROUTINGS}


def test_arms_of_one_seed_start_identical(arms):
    vanilla, _ = arms["vanilla"]
    for routing in NAMES:
        model, _ = arms[routing]
        assert type(model.routing).__name__ == NAMES[routing]
        check_paired(vanilla.net, model.net, ("vanilla", routing))  # raises if anything differs
        own = dict(model.net.named_parameters())
        for n, a in vanilla.net.named_parameters():
            assert torch.equal(a, own.pop(n)), n
        # what is left is the routing's own: Switch's gates and experts, the experts at zero
        assert set(own) == own_parameters(model.net), sorted(own)[:3]
        assert all(not p.any() for n, p in own.items() if ".expert_" in n)
        assert len(own) == (4 * 4 if routing == "switch" else 0)  # 4 blocks × (gate W, b, expert W, b)
    batches = {r: first_batches(*arms[r]) for r in ROUTINGS}
    for routing in NAMES:
        for ref, other in zip(batches["vanilla"], batches[routing], strict=True):
            for a, b in zip(ref, other, strict=True):  # x0, y, t, noise, labels after dropout
                assert torch.equal(a, b)
    # the two first batches differ from each other: the check compares real draws, not constants
    assert not torch.equal(batches["vanilla"][0][2], batches["vanilla"][1][2])


def test_another_seed_differs(arms):
    other, _ = build("vanilla", 4)
    vanilla, dm = arms["vanilla"]
    assert not torch.equal(vanilla.net.blocks[0].attn.qkv.weight, other.net.blocks[0].attn.qkv.weight)


def test_networks_that_differ_beyond_their_routing_are_refused(arms):
    vanilla, _ = arms["vanilla"]
    wider, _ = build("dtr", 3, "--model.net.init_args.learn_sigma", "true")
    with pytest.raises(DTRLabError, match="different parameters .*compare these arms unpaired"):
        check_paired(vanilla.net, wider.net, ("vanilla", "dtr"))
    reseeded, _ = build("dtr", 5)
    with pytest.raises(DTRLabError, match="start from different weights"):
        check_paired(vanilla.net, reseeded.net, ("vanilla", "dtr"))


def test_pairing_exempts_a_routing_s_own_parameters_by_the_protocol(arms):
    """What check_paired exempts is what the routing calls its own, wherever the network keeps it."""
    vanilla, _ = arms["vanilla"]
    switch, _ = arms["switch"]
    own = own_parameters(switch.net)
    assert own and own_parameters(vanilla.net) == set()
    names = {n for n, _ in switch.net.named_parameters()} - {n for n, _ in vanilla.net.named_parameters()}
    assert own == names

    class Wrapped(torch.nn.Module):  # the same network one level down: its routing's parameters move with it
        def __init__(self, net):
            super().__init__()
            self.inner = net

    assert own_parameters(Wrapped(switch.net)) == {f"inner.{n}" for n in own}
    check_paired(Wrapped(vanilla.net), Wrapped(switch.net), ("vanilla", "switch"))
