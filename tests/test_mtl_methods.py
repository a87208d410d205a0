"""Uncertainty weighting, PCGrad and Nash-MTL against hand-worked values."""

import itertools
import math

import pytest
import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl import Intervals, NashMTL, PCGrad, UncertaintyWeighting, nash_weights, pcgrad

# --- ANT uncertainty weighting ---


def test_uw_loss_and_gradient_of_s_at_hand_values():
    # ANT's and DTR's code feed L_k/K: Σ_k ½(e^{−s_k} L_k/K + s_k), here K = 2
    uw = UncertaintyWeighting(Intervals(boundaries=[0, 500, 1000]))
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([4.0, 6.0])
    loss = uw(losses)
    # ½(e⁰·4/2 + 0) + ½(½·6/2 + ln 2) = 1 + 0.75 + ½ ln 2
    assert loss.item() == pytest.approx(1.75 + 0.5 * math.log(2.0))
    (grad,) = torch.autograd.grad(loss, uw.log_var)
    # d/ds_k = ½(1 − e^{−s_k} L_k/K): ½(1 − 2) and ½(1 − 1.5)
    assert torch.allclose(grad, torch.tensor([-0.5, -0.25]))
    # the network sees weight ½e^{−s_k}/K per L_k: ¼ and ⅛
    losses = torch.tensor([4.0, 6.0], requires_grad=True)
    (weights,) = torch.autograd.grad(uw(losses), losses)
    assert torch.allclose(weights, torch.tensor([0.25, 0.125]))


def test_uw_gradient_vanishes_at_s_equal_log_loss_over_k():
    uw = UncertaintyWeighting(Intervals(num_intervals=3))
    losses = torch.tensor([0.2, 1.0, 3.0])
    with torch.no_grad():
        uw.log_var.copy_((losses / 3).log())
    (grad,) = torch.autograd.grad(uw(losses), uw.log_var)
    assert torch.allclose(grad, torch.zeros(3), atol=1e-6)


def test_uw_parameters_group_and_checkpoint_state():
    uw = UncertaintyWeighting(Intervals(num_intervals=4), lr=0.1)
    assert uw.log_var.shape == (4,) and torch.equal(uw.log_var.detach(), torch.zeros(4))
    group = uw.param_group()
    assert group["lr"] == 0.1 and group["params"][0] is uw.log_var
    assert "log_var" in uw.state_dict()


def test_uw_bad_input():
    with pytest.raises(DTRLabError, match="lr"):
        UncertaintyWeighting(lr=0.0)
    with pytest.raises(DTRLabError, match=r"intervals\.num_intervals=1"):
        UncertaintyWeighting(Intervals(num_intervals=1))


# --- PCGrad ---


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pcgrad_two_conflicting_vectors():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    # g1·g2 = −1: g1' = g1 + ½ g2 = (½, ½); g2' = g2 + g1 = (0, 1)
    total, projections = pcgrad(grads, gen())
    assert torch.allclose(total, torch.tensor([0.5, 1.5]))
    assert projections == 2


def test_pcgrad_two_agreeing_vectors_are_summed():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    total, projections = pcgrad(grads, gen())
    assert torch.allclose(total, torch.tensor([2.0, 1.0])) and projections == 0


def test_pcgrad_three_agreeing_vectors_are_summed():
    grads = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    total, projections = pcgrad(grads, gen())
    assert torch.allclose(total, torch.tensor([2.0, 2.0, 1.0])) and projections == 0


def test_pcgrad_three_vectors_depend_on_the_random_order():
    # g1 ⟂ g2, both conflict with g3 = (−1, −1, 1) (dot −1, ‖g3‖² = 3).
    # g1 after g3: (1,0,0) + ⅓(−1,−1,1) = (⅔, −⅓, ⅓); if g2 comes next, that conflicts with g2
    # (dot −⅓) and becomes (⅔, 0, ⅓). g2 is the mirror image. g3 after both (either order): (0, 0, 1).
    grads = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 1.0]])
    task1 = {1: torch.tensor([2 / 3, -1 / 3, 1 / 3]), 2: torch.tensor([2 / 3, 0.0, 1 / 3])}
    task2 = {1: torch.tensor([-1 / 3, 2 / 3, 1 / 3]), 2: torch.tensor([0.0, 2 / 3, 1 / 3])}
    task3 = torch.tensor([0.0, 0.0, 1.0])
    expected = {
        (n1 + n2 + 2, tuple((task1[n1] + task2[n2] + task3).tolist()))
        for n1, n2 in itertools.product((1, 2), (1, 2))
    }
    seen = set()
    for seed in range(20):
        total, projections = pcgrad(grads, gen(seed))
        match = [p for p, v in expected if p == projections and torch.allclose(total, torch.tensor(v))]
        assert match, (seed, total, projections)
        seen.add(projections)
        again, _ = pcgrad(grads, gen(seed))
        assert torch.equal(total, again)
    assert len(seen) > 1


def test_pcgrad_combine_averages_and_reports_projections():
    method = PCGrad(Intervals(num_intervals=2))
    update, stats = method.combine(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]), gen())
    assert torch.allclose(update, torch.tensor([0.25, 0.75]))
    assert stats == {"projections": 2, "projection_rate": 1.0}


# --- Nash-MTL ---


def test_nash_weights_of_orthogonal_gradients_are_inverse_norms():
    g = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    alpha = nash_weights(g @ g.T)
    assert torch.allclose(alpha, torch.tensor([1 / 3, 2.0]), rtol=1e-6)


def test_nash_weights_of_two_unit_gradients_at_60_degrees():
    # M = [[1, ½], [½, 1]]; by symmetry α1 = α2 = a with a(1 + ½) = 1/a, so a = √(2/3)
    g = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    alpha = nash_weights(g @ g.T)
    assert torch.allclose(alpha, torch.full((2,), math.sqrt(2 / 3), dtype=torch.float64), rtol=1e-6)


def test_nash_weights_solve_the_bargaining_equation():
    g = torch.randn(4, 10, generator=gen(1), dtype=torch.float64)
    gram = g @ g.T
    alpha = nash_weights(gram)
    assert (alpha > 0).all()
    # each task's directional derivative along d = Σ α_k g_k is 1/α_i
    assert torch.allclose(g @ (alpha @ g), 1 / alpha, rtol=1e-5)


def test_nash_weights_of_opposite_gradients_give_no_update():
    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    alpha = nash_weights(g @ g.T)
    assert torch.isfinite(alpha).all() and (alpha > 0).all()
    assert (alpha @ g).norm() < 1e-6 * alpha.max() * g.norm()


def test_nash_combine_solves_on_the_raw_gram_so_the_update_has_norm_sqrt_k():
    # orthogonal g_k: α_k = 1/‖g_k‖, so Σ α_k g_k is the sum of K unit vectors, norm √K
    g = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0]])
    update, stats = NashMTL(Intervals(num_intervals=3), max_norm=100.0).combine(g, step=0)
    assert torch.allclose(stats["alpha"], torch.tensor([1 / 3, 2.0, 0.5]), rtol=1e-5)
    assert torch.allclose(update, torch.ones(3), rtol=1e-5)
    assert stats["norm"] == pytest.approx(math.sqrt(3), rel=1e-5)
    # at 60° with norms 1 and 1: α = √(2/3) each (see above), ‖Σ α g‖² = αᵀMα = Σ α_k (Mα)_k = K
    g60 = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    _, stats60 = NashMTL(Intervals(num_intervals=2), max_norm=100.0).combine(g60, step=0)
    assert stats60["norm"] == pytest.approx(math.sqrt(2), rel=1e-5)
    # the reference then clips to max_norm = 1
    clipped, _ = NashMTL(Intervals(num_intervals=3)).combine(g, step=0)
    assert torch.allclose(clipped, torch.full((3,), 1 / math.sqrt(3)), rtol=1e-5)


def test_nash_combine_on_the_normalised_gram_scales_with_the_gradients():
    g = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    # Gram diag(9, ¼) over its norm c = √(81 + 1/16): α = √c·(⅓, 2), so d = √c·(1, 1)
    c = math.sqrt(81 + 1 / 16)
    method = NashMTL(Intervals(num_intervals=2), max_norm=100.0, normalize_gram=True)
    update, stats = method.combine(g, step=0)
    assert torch.allclose(update, torch.full((2,), math.sqrt(c)), rtol=1e-5)
    assert torch.allclose(stats["alpha"], math.sqrt(c) * torch.tensor([1 / 3, 2.0]), rtol=1e-5)


def test_nash_refreshes_every_update_every_steps():
    method = NashMTL(Intervals(num_intervals=2), update_every=3, max_norm=1e6)
    g0 = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    g1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    _, stats0 = method.combine(g0, step=10)
    assert stats0["refreshed"] and method.due(13) and not method.due(12)
    for step in (11, 12):
        update, stats = method.combine(g1, step=step)
        assert not stats["refreshed"]
        assert torch.allclose(stats["alpha"], stats0["alpha"])
        assert torch.allclose(update, stats0["alpha"])  # α @ identity
    _, stats3 = method.combine(g1, step=13)
    assert stats3["refreshed"]
    assert torch.allclose(stats3["alpha"][0], stats3["alpha"][1])  # equal-norm orthogonal gradients


def test_nash_bad_input():
    with pytest.raises(DTRLabError, match="update_every"):
        NashMTL(update_every=0)
    with pytest.raises(DTRLabError, match="max_norm"):
        NashMTL(max_norm=0.0)
    with pytest.raises(DTRLabError, match=r"intervals\.num_intervals"):
        PCGrad(Intervals(num_intervals=1))
