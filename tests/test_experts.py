"""Independent experts per interval: each expert trains only on its interval's timesteps and samples only
there, checked with hand-made experts; width matching; the batch that K does not divide."""

import itertools
from functools import partial

import pytest
import torch
from helpers import DIGITS, EXPERIMENTS, tasks_of, tiny
from torch import nn

from dtr_lab.cli import main
from dtr_lab.diffusion import respaced_timesteps
from dtr_lab.errors import DTRLabError
from dtr_lab.models import Denoiser, DiT, IntervalExperts
from dtr_lab.models.experts import num_parameters
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import Intervals
from dtr_lab.pairing import check_paired
from dtr_lab.routing import NoRouting, RoutingLoss

T, K = 100, 4  # four uniform intervals of 25 timesteps: expert k serves t // 25


class ConstantExpert(Denoiser):
    """Hand-made expert k: ε̂ = w·x + k with one weight w = 1, recording the timesteps it is called with."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.w, self.seen = k, nn.Parameter(torch.ones(())), []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.extend(t.tolist())
        return self.w * x + self.k


def constant_experts():
    """A factory that numbers the experts it builds 0, 1, …"""
    count = itertools.count()
    return lambda *args, **options: ConstantExpert(next(count))


def experts_module(**kwargs) -> DiffusionModule:
    def net(*args):
        return IntervalExperts(*args, expert=constant_experts(), width_matched=False)

    return DiffusionModule(
        net=net, num_timesteps=T, intervals=Intervals(num_intervals=K), ema_decay=0.9, num_classes=0,
        **{"sample_steps": 10, **kwargs},
    )


def test_a_training_batch_gives_each_expert_only_its_intervals_timesteps():
    module = experts_module()
    assert module.tasks.stratified  # the experts get B/K samples each
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    t, noise, _ = module.draw(x0, None)
    module.training_loss(x0, t, noise, None)
    for k, expert in enumerate(module.net.experts):
        assert len(expert.seen) == 8 // K and all(k * 25 <= s < (k + 1) * 25 for s in expert.seen)


def test_an_expert_gets_gradient_only_from_its_intervals_samples():
    module = experts_module()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(6, 1, 8, 8, generator=gen)
    # only interval 2's timesteps: experts 0, 1 and 3 get no gradient at all
    module.training_loss(x0, torch.tensor([50, 60, 74, 51, 55, 70]), noise, None)[0].mean().backward()
    grads = [e.w.grad for e in module.net.experts]
    assert grads[0] is None and grads[1] is None and grads[3] is None and grads[2].abs() > 0
    module.net.zero_grad(set_to_none=True)
    # a mixed batch: d mean_n ‖w·x_t + k − ε‖² / dw_k, worked out per expert from its own samples only:
    # Σ_{n in k} mean_pixels 2 (x_t + k − ε) x_t / N at w = 1
    t = torch.tensor([0, 30, 99, 10, 60, 80])
    module.training_loss(x0, t, noise, None)[0].mean().backward()
    x_t = module.diffusion.q_sample(x0, t, noise)
    for k, expert in enumerate(module.net.experts):
        mine = t // 25 == k
        expected = (2 * (x_t[mine] + k - noise[mine]) * x_t[mine]).mean(dim=(1, 2, 3)).sum() / len(t)
        torch.testing.assert_close(expert.w.grad, expected)


def test_the_loss_is_each_samples_own_experts():
    module = experts_module()
    x0, noise = torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)
    # x_t = 0, ε = 0: the loss of a sample is k², k its expert
    _, mse = module.training_loss(x0, torch.tensor([99, 0, 26, 74]), noise, None)
    assert mse.tolist() == [9.0, 0.0, 1.0, 4.0]


def test_a_learned_routings_loss_is_each_experts_on_its_own_samples():
    class Gated(ConstantExpert):
        def routing_loss(self, t, generator=None):  # hand-made: expert k's loss is k on any samples
            return RoutingLoss("prior", torch.tensor(float(self.k)), 0.5)

    count = itertools.count()
    net = IntervalExperts(8, 1, 0, T, NoRouting(), lambda *a: Gated(next(count)), width_matched=False)
    net.bind(tasks_of(K, T))
    # samples of experts 0, 1, 1, 3 (none of 2): (0·1 + 1·2 + 3·1) / 4
    term = net.routing_loss(torch.tensor([5, 30, 40, 99]))
    assert term.value.item() == pytest.approx(5 / 4) and (term.name, term.weight) == ("prior", 0.5)
    plain = IntervalExperts(8, 1, 0, T, NoRouting(), constant_experts(), width_matched=False)
    plain.bind(tasks_of(K, T))
    assert plain.routing_loss(torch.tensor([5, 99])) is None  # experts without a learned routing


@pytest.mark.parametrize(("sampler", "respacing", "steps"), [("ddpm", "even", 7), ("ddim", "ddim", 10)])
def test_sampling_calls_the_right_expert_at_every_timestep(sampler, respacing, steps):
    module = experts_module(sampler=sampler, respacing=respacing, sample_steps=steps)
    module.sample(torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    experts = module.ema.module.experts  # samples are drawn with the EMA copy
    chain = respaced_timesteps(T, steps, respacing)
    called = sorted(s for e in experts for s in set(e.seen))
    assert called == chain  # every timestep of the respaced chain, each by one expert
    for k, expert in enumerate(experts):
        assert set(expert.seen) == {s for s in chain if s // 25 == k}
        assert len(expert.seen) == 3 * len(set(expert.seen))  # the whole batch at each of its steps


def test_width_matched_experts_hold_about_one_networks_parameters():
    dit = partial(DiT, size="DiT-T/2")
    one = num_parameters(dit(8, 1, 10, 1000, NoRouting()))
    matched = IntervalExperts(8, 1, 10, 1000, NoRouting(), dit, width_matched=True)
    state = torch.random.get_rng_state()
    matched.bind(tasks_of(5, 1000))
    assert not torch.equal(state, torch.random.get_rng_state())  # the experts' own initialisation only
    assert matched.hidden_size == 56 and len(matched.experts) == 5
    assert abs(num_parameters(matched) / one - 1) < 0.01  # 5 experts at width 56 ≈ one at width 128
    equal = IntervalExperts(8, 1, 10, 1000, NoRouting(), dit, width_matched=False)
    equal.bind(tasks_of(5, 1000))
    assert num_parameters(equal) == 5 * one
    with pytest.raises(DTRLabError, match="have different parameters"):  # compared unpaired by weights
        check_paired(dit(8, 1, 10, 1000, NoRouting()), equal, ("vanilla", "experts"))


def test_width_matching_needs_an_expert_with_a_hidden_size():
    def no_width(input_size, in_channels, num_classes, num_timesteps, routing):  # like UNet: no hidden_size
        return ConstantExpert(0)

    net = IntervalExperts(8, 1, 0, T, NoRouting(), no_width, width_matched=True)
    with pytest.raises(DTRLabError, match="width_matched needs an expert that takes hidden_size"):
        net.bind(tasks_of(K, T))


def test_a_batch_that_k_does_not_divide_names_the_batch_size_and_k():
    with pytest.raises(DTRLabError, match=r"data.batch_size=10 is not a multiple of .*num_intervals=4"):
        experts_module().check_batch_size(10)


def test_the_cli_refuses_that_batch_in_one_line(tmp_path, capsys):
    experts = ["--config", str(EXPERIMENTS / "sharing/experts.yaml")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *DIGITS, *experts, *tiny(tmp_path, steps=2, batch=32)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dtr_lab: error:")]
    assert exit_.value.code == 2 and len(lines) == 1
    assert "data.batch_size=32 is not a multiple of intervals.num_intervals=5" in lines[0]


def test_the_shipped_experts_config_trains_and_keeps_its_experts_in_the_checkpoint(tmp_path):
    experts = ["--config", str(EXPERIMENTS / "sharing/experts.yaml")]
    main(["fit", *DIGITS, *experts, *tiny(tmp_path, steps=2, batch=10)])  # K = 5: 2 samples per expert
    ckpt = torch.load(next(tmp_path.glob("digits/version_0/checkpoints/last.ckpt")), weights_only=False)
    assert ckpt["global_step"] == 2
    state = ckpt["state_dict"]
    for prefix in ("net", "ema.module"):
        names = [k.removeprefix(f"{prefix}.experts.") for k in state if k.startswith(f"{prefix}.experts.")]
        assert {name.split(".")[0] for name in names} == set("01234")
        assert state[f"{prefix}.experts.4.x_embedder.weight"].shape[0] == 56  # width-matched
