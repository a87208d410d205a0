"""Switch-DiT routing: starts as the unrouted model, uses exactly k experts, its diffusion prior by hand,
learned-routing runs resume bit for bit, and bad options are one line."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DIGITS, REPO, run_dir, scalars, tiny

from dtr_lab.cli import main
from dtr_lab.models import DiT, UNet
from dtr_lab.routing import NoRouting
from dtr_lab.routing.switch import (
    SwitchRouting,
    diffusion_prior_loss,
    jensen_shannon,
    match_slots,
)

SWITCH = [*DIGITS, "--config", str(REPO / "experiments/routing/switch.yaml")]


def pair(make, seed: int = 0):
    """An unrouted and a Switch network from one seed, with every shared weight moved off its
    initialisation (adaLN-Zero starts both at zero output) the same way, so outputs are non-trivial."""
    torch.manual_seed(seed)
    plain = make(NoRouting())
    torch.manual_seed(seed)
    switch = make(SwitchRouting())
    gen = torch.Generator().manual_seed(1)
    own = dict(switch.named_parameters())
    with torch.no_grad():
        for name, p in plain.named_parameters():
            step = 0.05 * torch.randn(p.shape, generator=gen)
            p.add_(step)
            own[name].add_(step)
    return plain, switch


@pytest.mark.parametrize(
    "make",
    [
        lambda r: DiT(8, 1, 10, 100, r, size="DiT-T/2"),
        lambda r: UNet(8, 1, 10, 100, r, size="UNet-T"),
    ],
    ids=["dit", "unet"],
)
def test_zero_initialised_experts_give_the_unrouted_output(make):
    plain, switch = pair(make)
    x, t, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 5, 33, 50, 80, 99]), torch.arange(6)
    out = plain(x, t, y)
    assert out.abs().mean() > 1e-2  # a non-trivial output to compare
    # m = 1 exactly; z + (Block(z) − z) vs Block(z) differs only by float rounding
    torch.testing.assert_close(switch(x, t, y), out, rtol=0, atol=1e-6)
    # once the experts are non-zero, the output moves
    with torch.no_grad():
        switch.router.experts[0].expert_weight.normal_(std=0.3, generator=torch.Generator().manual_seed(2))
    assert (switch(x, t, y) - out).abs().max() > 1e-3


def test_the_gate_picks_exactly_k_experts_for_every_t():
    for num_experts, k in ((3, 2), (4, 1), (5, 5)):
        torch.manual_seed(0)
        net = DiT(8, 1, 10, 1000, SwitchRouting(num_experts, k), size="DiT-T/2")
        t = torch.arange(1000)
        for mask in net.router.masks(t, net.t_embedder(t)):
            assert ((mask.gates > 0).sum(1) == k).all()
        probs, chosen = net.router.choices(net.t_embedder)  # (T, depth, E)
        assert chosen.shape == (1000, 4, num_experts)
        assert (chosen.sum(-1) == k).all()
        # the chosen are the k most probable, and a sample's gate values are their probabilities
        if k < num_experts:
            least_kept = probs.masked_fill(chosen == 0, 2).amin(-1)
            most_dropped = probs.masked_fill(chosen == 1, -1).amax(-1)
            assert (least_kept >= most_dropped).all()
        gates = net.router.masks(t, net.t_embedder(t))[2].gates  # block 2
        torch.testing.assert_close(gates, (probs * chosen)[:, 2])


def test_experts_only_act_through_the_chosen_k():
    torch.manual_seed(0)
    net = DiT(8, 1, 10, 100, SwitchRouting(3, 1), size="DiT-T/2")
    t = torch.full((2,), 40)
    (mask, *_) = net.router.masks(t, net.t_embedder(t))
    unused = int((mask.gates[0] == 0).nonzero()[0])
    z = torch.randn(2, 16, 128)
    before = mask(z)
    with torch.no_grad():
        net.router.experts[0].expert_weight[unused].normal_()  # an expert this t did not pick
    torch.testing.assert_close(net.router.masks(t, net.t_embedder(t))[0](z), before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------- diffusion prior
# depth 2 × E 2 slots, k = 1, T = 3, α = 1: the window (β = 1/2: 2 of 4 slots) starts at round(2·t/2) = t
PRIOR = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float32)


def test_prior_window_is_dtr_over_depth_times_experts():
    net = DiT(8, 1, 10, 3, SwitchRouting(2, 1, alpha=1.0), size="DiT-T/2")
    # DiT-T has 4 blocks: 8 slots, window of 4 starting at round(4·t/2) = 0, 2, 4
    expected = torch.zeros(3, 8)
    for t, start in enumerate((0, 2, 4)):
        expected[t, start : start + 4] = 1
    assert torch.equal(net.router.prior, expected)


def test_matching_pairs_each_gate_slot_with_the_prior_column_it_equals():
    # block 0 uses prior columns 0 and 2 (each row one of them: top-1 of 2), block 1 columns 1 and 3
    choices = PRIOR[:, [0, 2, 1, 3]]
    for seed in range(5):  # the shuffles only break ties; this optimum (cost 0) is unique
        assert match_slots(choices, PRIOR, torch.Generator().manual_seed(seed)).tolist() == [0, 2, 1, 3]


def test_prior_loss_equals_a_hand_computation():
    choices = PRIOR[:, [0, 2, 1, 3]]
    probs = torch.tensor([[0.9, 0.1, 0.6, 0.4], [0.2, 0.8, 0.7, 0.3]])  # two samples, each block sums to 1
    t = torch.tensor([0, 2])
    loss = diffusion_prior_loss(probs, choices, PRIOR, t, depth=2, generator=torch.Generator().manual_seed(0))
    # matched prior rows: t = 0 -> PRIOR[0][[0, 2, 1, 3]] = [1, 0, 1, 0]; t = 2 -> [0, 1, 0, 1]; halved
    targets = [[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5]]
    eps = 1e-6
    total = 0.0
    for row, q in zip(probs.tolist(), targets, strict=True):
        p = [v / 2 for v in row]
        m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
        kl_p = sum(a * (math.log(a + eps) - math.log(c + eps)) for a, c in zip(p, m, strict=True))
        kl_q = sum(b * (math.log(b + eps) - math.log(c + eps)) for b, c in zip(q, m, strict=True))
        total += (kl_p + kl_q) / 2
    assert loss.item() == pytest.approx(total / 2, rel=1e-6)
    # a gate that already follows the matched prior pays (nearly) nothing
    exact = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    assert diffusion_prior_loss(exact, choices, PRIOR, t, depth=2).item() < 1e-5
    # JSD's bound: ln 2 for disjoint supports
    assert jensen_shannon(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(
        math.log(2), rel=1e-5
    )


def test_prior_gradient_reaches_the_gates_and_training_lowers_it():
    torch.manual_seed(0)
    net = DiT(8, 1, 10, 100, SwitchRouting(), size="DiT-T/2")
    gates = [p for n, p in net.named_parameters() if "gate" in n]
    opt = torch.optim.Adam(gates, lr=0.05)
    t = torch.arange(100)
    first = None
    for step in range(30):
        loss = net.routing_loss(t, torch.Generator().manual_seed(step)).value
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)
        opt.step()
    assert loss.item() < 0.7 * first  # 0.131 -> 0.068 in 30 steps


# -------------------------------------------------------------------------------------------- runs
def test_switch_runs_resume_bit_exactly_and_log_their_prior_and_maps(tmp_path):
    """8 steps straight == 3 + resume to 8: weights (gates and experts too), losses and the prior's JSD."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    every = ["--checkpoint.every_n_train_steps", "100"]
    main(["fit", *SWITCH, *tiny(straight, steps=8, batch=64), *every])
    logged: dict[str, dict[int, float]] = {"train/loss": {}, "train/prior_jsd": {}}
    ckpt: list[str] = []
    for steps in (3, 8):
        main(["fit", *SWITCH, *tiny(split, steps=steps, batch=64), *every, *ckpt])
        for tag in logged:
            logged[tag] |= dict(scalars(run_dir(split), tag))
        ckpt = ["--ckpt_path", str(run_dir(split) / "checkpoints/last.ckpt")]
    a = torch.load(run_dir(straight) / "checkpoints/last.ckpt", weights_only=False)
    b = torch.load(ckpt[1], weights_only=False)
    assert any(".expert_weight" in k for k in a["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    experts = [v for k, v in a["state_dict"].items() if k.startswith("net.router") and ".expert_weight" in k]
    assert all(v.abs().sum() > 0 for v in experts)  # the experts left zero: the masks are learned
    for tag, values in logged.items():
        assert values == dict(scalars(run_dir(straight), tag)), tag
        assert sorted(values) == list(range(8))
    # RoutingMaps (every 200 steps) drew the gates at fit start and at the end
    rows = (run_dir(straight) / "records/routing.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[0]) for r in rows}) == [0, 8]
    assert (run_dir(straight) / "routing/masks_experts.png").is_file()


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("k", "4", "k=4 must be an integer from 1 to num_experts=3"),
        ("num_experts", "0", "num_experts=0 must be an integer ≥ 1"),
        ("w_jsd", "-0.5", "w_jsd=-0.5 must be ≥ 0"),
    ],
)
def test_bad_switch_options_are_one_line_and_write_nothing(tmp_path, capsys, option, value, needle):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *SWITCH, *tiny(tmp_path, steps=2), f"--model.routing.init_args.{option}", value])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dtr_lab: error:")]
    assert len(lines) == 1 and needle in lines[0], lines
    assert not any(tmp_path.iterdir())


def test_switch_answers_the_protocol_without_a_fixed_table():
    """Switch is a Routing, not a table routing: it has no ``table`` to break; its router answers masks,
    its own weighted loss and what to draw."""
    assert not hasattr(SwitchRouting(), "table")
    net = DiT(input_size=8, in_channels=1, num_classes=10, num_timesteps=20, size="DiT-T/2",
              routing=SwitchRouting(w_jsd=0.5, seed=0))
    t = torch.tensor([0, 19])
    term = net.routing_loss(t, torch.Generator().manual_seed(0))
    assert term.name == "prior_jsd" and term.weight == 0.5 and term.value.dim() == 0
    drawing = net.routing_drawing()
    assert drawing.learned and drawing.tables["experts"][0].shape == (20, len(net.blocks) * 3)
    # drawn as expert slots, E = 3 per block, the gates' probabilities with what their colours mean
    assert (drawing.columns, drawing.group) == ("expert", 3)
    probs = drawing.images["expert_probs"]  # (T, depth·E): each block's E probabilities sum to 1
    assert probs.shape == (20, len(net.blocks) * 3)
    torch.testing.assert_close(probs.view(20, -1, 3).sum(dim=2), torch.ones(20, len(net.blocks)))
    assert drawing.labels == {"masks_experts": "chosen", "expert_probs": "gate probability p_b,e(t)"}
