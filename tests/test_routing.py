"""Mask tables against hand-worked values, and the routed-block contract z + Block(m_t ⊙ z)."""

import pytest
import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.models.dit import DiT, DiTBlock
from dtr_lab.routing import DTRRouting, NoRouting, RandomRouting, Router, active_channels


def rows(*bits: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in b] for b in bits])


def test_dtr_linear_window_by_hand():
    # alpha=1, beta=0.5, C=4, T=3: C_beta=2, start(t) = round(2 * t / 2) = t
    assert torch.equal(DTRRouting(alpha=1.0, beta=0.5).table(3, 4), rows("1100", "0110", "0011"))


def test_dtr_alpha2_by_hand():
    # C=10, beta=0.5 -> C_beta=5; start = round(5 (t/4)^2):
    # round(0)=0, round(0.3125)=0, round(1.25)=1, round(2.8125)=3, round(5)=5
    m = DTRRouting(alpha=2.0, beta=0.5).table(5, 10)
    expected = rows("1111100000", "1111100000", "0111110000", "0001111100", "0000011111")
    assert torch.equal(m, expected)


def test_dtr_channels_not_divisible_by_ten():
    # C=7, beta=0.8 -> C_beta = int(5.6) = 5; T=2: start 0 and C - C_beta = 2
    m = DTRRouting(alpha=4.0, beta=0.8).table(2, 7)
    assert torch.equal(m, rows("1111100", "0011111"))
    assert active_channels(0.8, 7) == 5


def test_active_channels_are_the_official_truncated_float_product():
    """DTR models/taskrouting.py create_mask_tasks: num_filled_channel = int(unit_count * beta). Where β·C
    is an integer the float product can fall just below it: 90 × 0.7 = 62.99999999999999 -> 62."""
    assert 90 * 0.7 < 63 and active_channels(0.7, 90) == 62
    assert active_channels(0.8, 128) == 102 and active_channels(0.5, 7) == 3
    betas = [b / 20 for b in range(1, 21)] + [0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    for beta in betas:
        for channels in range(1, 1153):
            assert active_channels(beta, channels) == max(1, int(channels * beta)), (beta, channels)


def test_dtr_table_equals_the_official_create_mask_tasks():
    """The official table, written out (DTR models/taskrouting.py): start = round((C − C_β)·linspace(0, 1,
    T)^α) with NumPy's rounding (half to even), window [start, start + C_β)."""
    np = pytest.importorskip("numpy")

    def official(T: int, C: int, beta: float, alpha: float) -> torch.Tensor:
        c_beta = int(C * beta)
        index = ((np.linspace(0, 1, T) ** alpha) * (C - c_beta)).round().astype(np.int64)
        table = np.zeros((T, C), dtype=bool)
        for t in range(T):
            table[t, index[t] : index[t] + c_beta] = True
        return torch.from_numpy(table)

    for T, C, beta, alpha in [
        (1000, 90, 0.7, 4.0), (1000, 128, 0.8, 4.0), (1000, 128, 0.5, 4.0), (1000, 1152, 0.8, 4.0),
        (3, 5, 0.4, 1.0), (3, 7, 0.5, 1.0), (5, 10, 0.5, 1.0), (9, 10, 0.5, 1.0),  # α = 1: exact halves
        (100, 33, 0.3, 2.0), (250, 384, 0.8, 4.0),
    ]:  # fmt: skip
        assert torch.equal(DTRRouting(alpha=alpha, beta=beta).table(T, C), official(T, C, beta, alpha))
    # a tie worked by hand: T = 5, C = 10, β = 0.5, α = 1: starts 5·(0, ¼, ½, ¾, 1) = 0, 1.25, 2.5, 3.75, 5
    # -> 0, 1, 2 (2.5 to even), 4, 5
    starts = DTRRouting(alpha=1.0, beta=0.5).table(5, 10).float().argmax(1).tolist()
    assert starts == [0, 1, 2, 4, 5]


def test_dtr_paper_defaults_endpoints_and_counts():
    m = DTRRouting().table(1000, 384)
    c_beta = int(0.8 * 384)
    assert (m.sum(1) == c_beta).all()
    assert m[0, :c_beta].all() and not m[0, c_beta:].any()  # first C_beta channels at t=0
    assert m[-1, -c_beta:].all() and not m[-1, :-c_beta].any()  # last C_beta at t=T-1
    # alpha=4: the window barely moves at low t, fast at high t
    start = m.float().argmax(1)
    assert start[250] <= 1 and start[999] - start[900] > start[500] - start[0]


def test_beta_one_is_all_channels():
    assert DTRRouting(alpha=4.0, beta=1.0).table(10, 6).all()
    assert RandomRouting(beta=1.0).table(10, 6).all()
    assert NoRouting().table(10, 6).all()


def test_adjacent_timesteps_overlap_more_than_distant():
    for strategy in (DTRRouting(alpha=4.0, beta=0.8), DTRRouting(alpha=1.0, beta=0.5)):
        m = strategy.table(1000, 128).float()
        overlap = m @ m.T  # (T, T) shared channels
        for t in (100, 500, 900):
            assert overlap[t, t + 1] >= overlap[t, t + 50] >= overlap[t, 0]
        assert overlap[998, 999] > overlap[0, 999]


def test_random_routing_is_seeded_and_sized():
    for per_block in (True, False):
        a, b, c = (
            RandomRouting(0.5, seed=1, per_block=per_block).table(50, 20),
            RandomRouting(0.5, seed=1, per_block=per_block).table(50, 20),
            RandomRouting(0.5, seed=2, per_block=per_block).table(50, 20),
        )
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert (a.sum(1) == 10).all()
        assert len({tuple(r.tolist()) for r in a}) > 40  # independent per timestep


def hypergeometric_overlap(channels: int, c_beta: int) -> tuple[float, float]:
    """Mean and variance of |A∩B| / C_β for two independent uniform C_β-subsets A, B of C channels.

    |A∩B| is hypergeometric (population C, C_β marked, C_β drawn): mean C_β²/C, variance
    C_β p(1−p)(C−C_β)/(C−1) with p = C_β/C.
    """
    p = c_beta / channels
    return p, c_beta * p * (1 - p) * (channels - c_beta) / (channels - 1) / c_beta**2


def test_per_block_random_tables_are_independent_draws():
    T, C, beta = 1000, 128, 0.8
    c_beta = active_channels(beta, C)  # 102
    strategy = RandomRouting(beta, seed=3)
    assert strategy.per_block
    tables = [strategy.table(T, C, block) for block in range(4)]
    assert all((m.sum(1) == c_beta).all() for m in tables)  # exactly C_β active in every row
    assert all(not torch.equal(tables[i], tables[j]) for i in range(4) for j in range(i))
    assert torch.equal(tables[2], RandomRouting(beta, seed=3).table(T, C, 2))  # deterministic
    mean, var = hypergeometric_overlap(C, c_beta)  # 0.797 and 3.3e-4 (sd 0.018 per row)
    assert abs(mean - beta) < 0.01
    for i, j in ((0, 1), (1, 3)):
        overlap = (tables[i] & tables[j]).sum(1).double() / c_beta  # (T,) |A∩B|/C_β per t
        # the mean of T independent rows: sd √(var/T) = 5.7e-4; five of them is a 1-in-10⁶ miss
        assert abs(overlap.mean().item() - mean) < 5 * (var / T) ** 0.5
        # the rows' spread is the hypergeometric one (the sample variance of 1000 rows is within ~5 %
        # of it; ±25 % leaves room while ruling out tables that are shifts or copies of each other)
        assert 0.75 < overlap.var().item() / var < 1.25
    # the shared variant: every block uses one table, the overlap is all C_β channels
    shared = RandomRouting(beta, seed=3, per_block=False)
    assert torch.equal(shared.table(T, C, 0), shared.table(T, C, 5))


def test_routed_dit_has_a_table_per_block_for_rtr_and_one_for_dtr():
    kw = dict(input_size=8, in_channels=1, num_classes=10, num_timesteps=100, size="DiT-T/2")
    rtr = DiT(**kw, routing=RandomRouting(beta=0.5))
    tables = [rtr.router.block_table(b) for b in range(4)]
    assert all((t.sum(1) == 64).all() for t in tables)
    assert all(not torch.equal(tables[i], tables[j]) for i in range(4) for j in range(i))
    assert [len(v) for v in rtr.router.tables().values()] == [4]
    assert not any(k.startswith("router.") for k in rtr.state_dict())  # the checkpoint layout is unchanged
    masks = rtr.router.masks(torch.tensor([5, 7]))
    assert len(masks) == 4 and torch.equal(masks[3], tables[3][[5, 7]])
    shared = DiT(**kw, routing=RandomRouting(beta=0.5, per_block=False))
    dtr = DiT(**kw, routing=DTRRouting())
    for model in (shared, dtr):
        assert [len(v) for v in model.router.tables().values()] == [1]
        assert all(model.router.block_table(b) is model.router.block_table(0) for b in range(4))


@pytest.mark.parametrize("routing", [RandomRouting(), RandomRouting(per_block=False), DTRRouting()])
def test_building_a_routed_model_leaves_the_global_rng_alone(routing):
    kw = dict(input_size=8, in_channels=1, num_classes=10, num_timesteps=1000, size="DiT-T/2")
    with torch.random.fork_rng():  # the seeds stay inside this test
        torch.manual_seed(11)
        vanilla = DiT(**kw, routing=NoRouting())
        after_vanilla = torch.rand(3)
        torch.manual_seed(11)
        routed = DiT(**kw, routing=routing)
        after_routed = torch.rand(3)
    for (name, a), (_, b) in zip(vanilla.state_dict().items(), routed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(after_vanilla, after_routed)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"beta": 1.5}, {"alpha": 0.0}, {"alpha": -1.0}])
def test_bad_routing_options(kwargs):
    with pytest.raises(DTRLabError, match="alpha|beta"):
        DTRRouting(**kwargs)


def test_router_gathers_each_samples_mask():
    router = Router(DTRRouting(alpha=1.0, beta=0.5), num_timesteps=3, widths=[4, 4])
    first, second = router.masks(torch.tensor([2, 0]))
    assert torch.equal(first.bool(), rows("0011", "1100")) and torch.equal(second, first)
    assert Router(NoRouting(), 3, [4]).masks(torch.tensor([0])) == [None]
    assert "table_4" not in router.state_dict()  # derived from config, not saved
    per_block = Router(RandomRouting(beta=0.5), 3, [4, 6])
    assert [per_block.block_table(b).shape for b in range(2)] == [(3, 4), (3, 6)]
    assert not per_block.state_dict()


def randomised(block: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return block


def test_routed_block_inactive_channel_passes_through_exactly():
    torch.manual_seed(0)
    D, T = 16, 10
    block = randomised(DiTBlock(D, num_heads=2)).double()
    router = Router(DTRRouting(alpha=1.0, beta=0.5), T, [D]).double()
    t = torch.tensor([0, 9])
    (mask,) = router.masks(t)  # t=0 -> channels 0..7 active, t=9 -> 8..15
    z = torch.randn(2, 5, D, dtype=torch.float64)
    c = torch.randn(2, D, dtype=torch.float64)
    out = block(z, c, mask)
    delta = 0.7
    for sample, channel in ((0, 12), (1, 3)):  # inactive for that sample's t
        z2 = z.clone()
        z2[sample, :, channel] += delta
        diff = block(z2, c, mask) - out
        expected = torch.zeros_like(diff)
        expected[sample, :, channel] = delta
        torch.testing.assert_close(diff, expected, atol=1e-12, rtol=0)
    # an active channel changes the block's output elsewhere too
    z3 = z.clone()
    z3[0, :, 2] += delta
    assert (block(z3, c, mask) - out)[0, :, 5].abs().max() > 1e-6


def test_beta_one_dtr_equals_no_routing_with_same_weights():
    torch.set_default_dtype(torch.float64)
    # float64: with weights of sd 0.3 the outputs reach ~50, and float32 kernels may round the routed
    # (re-allocated) activations differently by an ulp, which the blocks then amplify
    try:
        kw = dict(input_size=8, in_channels=1, num_classes=10, num_timesteps=100, size="DiT-T/2")
        plain = DiT(**kw, routing=NoRouting())
        randomised(plain)
        routed = DiT(**kw, routing=DTRRouting(alpha=4.0, beta=1.0))
        routed.load_state_dict(plain.state_dict())
        x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 50, 99]), torch.tensor([1, 2, 3, 10])
        torch.testing.assert_close(routed(x, t, y), plain(x, t, y), atol=1e-9, rtol=1e-9)
        # and a real DTR mask changes the function far beyond rounding
        dtr = DiT(**kw, routing=DTRRouting())
        dtr.load_state_dict(plain.state_dict())
        assert (dtr(x, t, y) - plain(x, t, y)).abs().max() > 0.1 * plain(x, t, y).abs().max()
    finally:
        torch.set_default_dtype(torch.float32)
