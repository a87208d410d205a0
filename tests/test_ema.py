"""The EMA's two rules (dtr_lab.optim.ema) against averages worked by hand; the warm-up rule's own hand check
across a reload is tests/test_compile.py's test_ema_follows_the_warm_up_formula_across_a_reload."""

from __future__ import annotations

import pytest
import torch

from dtr_lab.optim.ema import EMA


def averages(warmup: bool, weights: list[float], decay: float = 0.5) -> list[float]:
    """The EMA of a scalar weight that starts at 1 and is set to each of `weights` before an update."""
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay, warmup=warmup)  # built from the step-0 weights, as the module builds it
    out = []
    for w in weights:
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update_parameters(net)
        out.append(ema.module.weight.item())
    return out


def test_the_official_rule_decays_from_the_step_0_copy():
    """DiT's and DTR's train.py: e_0 = θ_0 = 1, then e ← ½e + ½θ for θ = 2, 4, 8: 1.5, 2.75, 5.375."""
    assert averages(False, [2.0, 4.0, 8.0]) == [1.5, 2.75, 5.375]


def test_the_warm_up_rule_copies_at_the_first_update_then_warms_up():
    """Update 0 copies θ = 2 (the step-0 weights are forgotten); update n decays by min(½, (1 + n)/(10 + n)):
    2/11 then 3/12, so 2·2/11 + 4·9/11 = 40/11, then 40/11·1/4 + 8·3/4 = 76/11."""
    assert averages(True, [2.0, 4.0, 8.0]) == pytest.approx([2.0, 40 / 11, 76 / 11], rel=1e-6)
