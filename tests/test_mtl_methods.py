"""Uncertainty weighting, PCGrad and Nash-MTL against hand-worked values, through the one protocol
of the MTL methods (``method(TaskBatch) -> Update``)."""

import itertools
import math

import pytest
import torch
from helpers import bound, linear_task_batch

from dtr_lab.errors import DTRLabError
from dtr_lab.mtl import CAGrad, Intervals, NashMTL, PCGrad, UncertaintyWeighting, nash_weights, pcgrad
from dtr_lab.seeds import derive_seed

# --- ANT uncertainty weighting ---


def test_uw_loss_and_gradient_of_s_at_hand_values():
    # ANT's and DTR's code feed L_k/K: Σ_k ½(e^{−s_k} L_k/K + s_k), here K = 2
    uw = bound(UncertaintyWeighting(), 2)
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, math.log(2.0)]))
    losses = torch.tensor([4.0, 6.0])
    loss = uw.weighted(losses)
    # ½(e⁰·4/2 + 0) + ½(½·6/2 + ln 2) = 1 + 0.75 + ½ ln 2
    assert loss.item() == pytest.approx(1.75 + 0.5 * math.log(2.0))
    (grad,) = torch.autograd.grad(loss, uw.log_var)
    # d/ds_k = ½(1 − e^{−s_k} L_k/K): ½(1 − 2) and ½(1 − 1.5)
    assert torch.allclose(grad, torch.tensor([-0.5, -0.25]))
    # the network sees weight ½e^{−s_k}/K per L_k: ¼ and ⅛
    losses = torch.tensor([4.0, 6.0], requires_grad=True)
    (weights,) = torch.autograd.grad(uw.weighted(losses), losses)
    assert torch.allclose(weights, torch.tensor([0.25, 0.125]))


def test_uw_gradient_vanishes_at_s_equal_log_loss_over_k():
    uw = bound(UncertaintyWeighting(), 3)
    losses = torch.tensor([0.2, 1.0, 3.0])
    with torch.no_grad():
        uw.log_var.copy_((losses / 3).log())
    (grad,) = torch.autograd.grad(uw.weighted(losses), uw.log_var)
    assert torch.allclose(grad, torch.zeros(3), atol=1e-6)


def test_uw_parameters_group_and_checkpoint_state():
    uw = bound(UncertaintyWeighting(lr=0.1), 4)
    assert uw.log_var.shape == (4,) and torch.equal(uw.log_var.detach(), torch.zeros(4))
    (group,) = uw.param_groups()
    assert group["lr"] == 0.1 and group["params"][0] is uw.log_var
    assert "log_var" in uw.state_dict()


def test_uw_update_is_the_weighted_loss_of_the_interval_losses():
    uw = bound(UncertaintyWeighting(), 2)
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.0, math.log(2.0)]))
    batch, theta = linear_task_batch(torch.tensor([[2.0, 0.0], [0.0, 4.0]]))
    update = uw(batch)
    assert update.grad is None and not uw.gradient_method
    # at θ = 0 every L_k is 0: the loss is ½ Σ s_k = ½ ln 2, and ∂/∂θ = Σ_k ½ e^{−s_k}/K g_k
    assert update.loss.item() == pytest.approx(0.5 * math.log(2.0))
    (grad,) = torch.autograd.grad(update.loss, theta)
    assert torch.allclose(grad, torch.tensor([0.25 * 2.0, 0.125 * 4.0]))
    assert set(update.metrics) == {"uw/s_0", "uw/s_1"}
    assert float(update.metrics["uw/s_1"]) == pytest.approx(math.log(2.0))


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
    # g1·g2 = −1: g1' = g1 + ½ g2 = (½, ½); g2' = g2 + g1 = (0, 1). With two tasks a self-projection
    # never fires: g1'·g1 = ‖g1‖² − (g1·g2)²/‖g2‖² ≥ 0 (Cauchy–Schwarz)
    projected, projections = pcgrad(grads, gen())
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    assert projections == 2


def test_pcgrad_two_agreeing_vectors_are_summed():
    grads = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    projected, projections = pcgrad(grads, gen())
    assert torch.allclose(projected.sum(0), torch.tensor([2.0, 1.0])) and projections == 0


def test_pcgrad_three_agreeing_vectors_are_summed():
    grads = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    projected, projections = pcgrad(grads, gen())
    assert torch.allclose(projected.sum(0), torch.tensor([2.0, 2.0, 1.0])) and projections == 0


def test_pcgrad_three_vectors_depend_on_the_random_order():
    # g1 ⟂ g2, both conflict with g3 = (−1, −1, 1) (dot −1, ‖g3‖² = 3).
    # g1 after g3: (1,0,0) + ⅓(−1,−1,1) = (⅔, −⅓, ⅓); if g2 comes next, that conflicts with g2
    # (dot −⅓) and becomes (⅔, 0, ⅓). g2 is the mirror image. g3 after both (either order): (0, 0, 1).
    # No self-projection fires: (⅔, −⅓, ⅓)·g1 > 0, (⅔, 0, ⅓)·g1 > 0, (0, 0, 1)·g3 > 0.
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
        projected, projections = pcgrad(grads, gen(seed))
        total = projected.sum(0)
        match = [p for p, v in expected if p == projections and torch.allclose(total, torch.tensor(v))]
        assert match, (seed, total, projections)
        seen.add(projections)
        again, _ = pcgrad(grads, gen(seed))
        assert torch.equal(projected, again)
    assert len(seen) > 1


def test_pcgrad_projects_a_task_off_its_own_gradient_as_the_original_code():
    """g1 = (1, 0), g2 = (−2, 1), g3 = (−1, −1). Task 1 visiting g2 then g3 (‖g2‖² = 5, ‖g3‖² = 2):
    g1·g2 = −2 -> (1, 0) + ⅖(−2, 1) = (0.2, 0.4); ·g3 = −0.6 -> (0.2, 0.4) + 0.3(−1, −1) = (−0.1, 0.1),
    which now conflicts with g1 itself (dot −0.1): the original code projects it to (0, 0.1).
    Visiting g3 then g2: (0.5, −0.5), then (−0.1, −0.2), then self: (0, −0.2). Self visited first or
    between them finds no conflict (dots 1 and 0.2 or 0.5), leaving (−0.1, 0.1) or (−0.1, −0.2)."""
    grads = torch.tensor([[1.0, 0.0], [-2.0, 1.0], [-1.0, -1.0]])
    with_self = {(0.0, 0.1), (0.0, -0.2), (-0.1, 0.1), (-0.1, -0.2)}
    without_self = {(-0.1, 0.1), (-0.1, -0.2)}

    def task1(seed: int, self_projection: bool) -> tuple[float, ...]:
        projected, _ = pcgrad(grads, gen(seed), self_projection)
        return tuple(round(v, 6) + 0.0 for v in projected[0].tolist())

    seen = {task1(seed, True) for seed in range(40)}
    assert seen <= with_self and seen & {(0.0, 0.1), (0.0, -0.2)}  # self-projection fired for some order
    assert {task1(seed, False) for seed in range(40)} <= without_self


def test_pcgrad_update_averages_and_reports_projections():
    batch, _ = linear_task_batch(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
    update = PCGrad()(batch)
    assert update.loss is None and PCGrad.gradient_method
    assert torch.allclose(update.grad, torch.tensor([0.25, 0.75]))
    assert update.metrics == {"pcgrad/projection_rate": 0.5}  # 2 projections of K² = 4 visits
    paper = PCGrad(self_projection=False)(batch)
    assert torch.equal(paper.grad, update.grad) and paper.metrics == {"pcgrad/projection_rate": 1.0}
    assert batch.reported.tolist() == [0.0, 0.0]  # the per-sample values of the pass that ran


def test_pcgrad_orders_are_seeded_by_model_seed_and_step():
    grads = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 1.0]])
    for seed, step in ((0, 0), (3, 7)):
        update = PCGrad()(linear_task_batch(grads, step=step, seed=seed)[0])
        projected, _ = pcgrad(grads, gen(derive_seed(seed, step)))
        assert torch.equal(update.grad, projected.mean(0))


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


def nash(method: NashMTL, g: torch.Tensor, step: int = 0):
    """(update (P,), α (K,)) of one call on gradients g (K, P)."""
    update = method(linear_task_batch(g, step=step)[0])
    return update.grad, torch.tensor([update.metrics[f"nash/alpha_{k}"] for k in range(len(g))])


def test_nash_solves_on_the_raw_gram_so_the_update_has_norm_sqrt_k():
    # orthogonal g_k: α_k = 1/‖g_k‖, so Σ α_k g_k is the sum of K unit vectors, norm √K
    g = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0]])
    update, alpha = nash(NashMTL(max_norm=100.0), g)
    assert torch.allclose(alpha, torch.tensor([1 / 3, 2.0, 0.5]), rtol=1e-5)
    assert torch.allclose(update, torch.ones(3), rtol=1e-5)
    # at 60° with norms 1 and 1: α = √(2/3) each (see above), ‖Σ α g‖² = αᵀMα = Σ α_k (Mα)_k = K
    g60 = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    update60, _ = nash(NashMTL(max_norm=100.0), g60)
    assert update60.norm().item() == pytest.approx(math.sqrt(2), rel=1e-5)
    # the reference then clips to max_norm = 1
    clipped, _ = nash(NashMTL(), g)
    assert torch.allclose(clipped, torch.full((3,), 1 / math.sqrt(3)), rtol=1e-5)


def test_nash_divide_by_k_as_ant_scales_before_the_clip():
    """ANT's mtl_library/nash.py: Σ α_k g_k / K, then the clip. In the orthogonal case above the update
    (1, 1, 1) of norm √3 becomes (⅓, ⅓, ⅓), norm 1/√3 < 1: the clip no longer binds."""
    g = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0]])
    update, _ = nash(NashMTL(divide_by_k=True), g)
    assert torch.allclose(update, torch.full((3,), 1 / 3), rtol=1e-5)
    big, _ = nash(NashMTL(divide_by_k=True), 0.01 * g)  # α scales by 100: the same update, norm √3/3
    assert torch.allclose(big, torch.full((3,), 1 / 3), rtol=1e-5)


def test_nash_on_the_normalised_gram_scales_with_the_gradients():
    g = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    # Gram diag(9, ¼) over its norm c = √(81 + 1/16): α = √c·(⅓, 2), so d = √c·(1, 1)
    c = math.sqrt(81 + 1 / 16)
    update, alpha = nash(NashMTL(max_norm=100.0, normalize_gram=True), g)
    assert torch.allclose(update, torch.full((2,), math.sqrt(c)), rtol=1e-5)
    assert torch.allclose(alpha, math.sqrt(c) * torch.tensor([1 / 3, 2.0]), rtol=1e-5)


def test_nash_refreshes_every_update_every_steps_and_reuses_alpha_in_between():
    method = NashMTL(update_every=3, max_norm=1e6)
    g0 = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    g1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    _, alpha0 = nash(method, g0, step=10)
    assert method.due(13) and not method.due(12)
    for step in (11, 12):
        # between solves: the gradient of Σ α_k L_k, one backward instead of K
        update, alpha = nash(method, g1, step=step)
        assert torch.allclose(alpha, alpha0)
        assert torch.allclose(update, alpha0)  # α @ identity
    _, alpha3 = nash(method, g1, step=13)
    assert torch.allclose(alpha3[0], alpha3[1])  # equal-norm orthogonal gradients


def test_nash_between_solves_clips_the_weighted_gradient_too():
    method = NashMTL(update_every=2)  # max_norm 1
    g = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    nash(method, g, step=0)  # α = (⅓, ¼): update (1, 1), norm √2 -> clipped
    update, _ = nash(method, 2 * g, step=1)  # reused α: (2, 2), clipped to norm 1
    assert torch.allclose(update, torch.full((2,), 2**-0.5), rtol=1e-5)


def test_nash_bad_input():
    with pytest.raises(DTRLabError, match="update_every"):
        NashMTL(update_every=0)
    with pytest.raises(DTRLabError, match="max_norm"):
        NashMTL(max_norm=0.0)
    with pytest.raises(DTRLabError, match=r"intervals\.num_intervals"):
        PCGrad(Intervals(num_intervals=1))


# --- CAGrad ---


def test_cagrad_at_a_boundary_weight_worked_by_hand():
    # g1 = (2, 0), g2 = (0, 1): g₀ = (1, ½), ‖g₀‖ = √1.25. On w = (t, 1−t), F(t) = ½ + 1.5t +
    # c√1.25·√(5t² − 2t + 1), and F'(t) = 1.5 + c√1.25 (5t − 1)/√(5t² − 2t + 1) ≥ 1.5 − 0.4·1.118 > 0 for
    # c = 0.4 (the fraction is ≥ −1 on [0, 1]): w = (0, 1), g_w = g2, and
    # d = (g₀ + c‖g₀‖ g2) / (1 + c²) = (1, ½ + 0.4√1.25) / 1.16
    batch, _ = linear_task_batch(torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    update = CAGrad()(batch)
    assert CAGrad.gradient_method and update.loss is None
    expected = torch.tensor([1.0, 0.5 + 0.4 * math.sqrt(1.25)], dtype=torch.float64) / 1.16
    torch.testing.assert_close(update.grad, expected, atol=1e-5, rtol=0)
    assert update.metrics["cagrad/w_0"] == pytest.approx(0.0, abs=1e-5)
    assert update.metrics["cagrad/w_1"] == pytest.approx(1.0, abs=1e-5)


def test_cagrad_of_symmetric_gradients_and_its_rescaling():
    # orthogonal unit gradients: by symmetry w = (½, ½), g_w = g₀, so d = (1 + c) g₀ before rescaling
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    g0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for rescale, scale in ((0, 1.0), (1, 1 + 0.4**2), (2, 1.4)):
        update = CAGrad(rescale=rescale)(linear_task_batch(g)[0])
        torch.testing.assert_close(update.grad, 1.4 / scale * g0, atol=1e-5, rtol=0)
    # the official NYUv2 code multiplies by K = 2 here "to match the sum loss"
    summed = CAGrad(multiply_by_k=True)(linear_task_batch(g)[0])
    torch.testing.assert_close(summed.grad, 2 * 1.4 / 1.16 * g0, atol=1e-5, rtol=0)
    # c = 0 is the plain mean gradient
    plain = CAGrad(c=0.0)(linear_task_batch(torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64))[0])
    torch.testing.assert_close(plain.grad, torch.tensor([1.0, 1.5], dtype=torch.float64), atol=1e-6, rtol=0)


def test_cagrad_improves_the_worst_task_more_than_the_mean_gradient():
    g = torch.randn(4, 12, generator=gen(3), dtype=torch.float64)
    update = CAGrad(rescale=0)(linear_task_batch(g)[0]).grad
    mean = g.mean(dim=0)
    # d is the best worst-task direction in the ball ‖d − g₀‖ ≤ c‖g₀‖, which holds g₀ itself
    assert (update - mean).norm() <= 0.4 * mean.norm() * (1 + 1e-4)
    assert (g @ update).min() >= (g @ mean).min() - 1e-6


def test_cagrad_bad_input():
    with pytest.raises(DTRLabError, match="c=-1"):
        CAGrad(c=-1.0)
    with pytest.raises(DTRLabError, match="rescale=3"):
        CAGrad(rescale=3)


def test_derived_seeds_of_a_64_bit_base_seed_are_valid_generator_seeds():
    """An unseeded interpreter's torch.initial_seed() can be near 2**64; its streams must still seed a
    Generator (seed·stride + index wraps modulo 2**63), and small seeds keep their plain values."""
    import torch

    base = 2**64 - 1
    seeds = {derive_seed(base, i) for i in range(3)}
    assert len(seeds) == 3 and all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(max(seeds))
    assert derive_seed(7, 5) == 7 * 1_000_003 + 5
