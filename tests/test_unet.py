"""ADM U-Net: shapes per size, routed residual blocks, routing equivalences, bad configs."""

import pytest
import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.models.unet import SIZES, AttentionBlock, ResBlock, UNet
from dtr_lab.routing import DTRRouting, NoRouting, RandomRouting, Router

T = 100


def randomize(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Overwrite the zero-initialised weights so every branch contributes to the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(
    ("size", "input_size", "channels", "overrides", "learn_sigma"),
    [
        ("UNet-T", 8, 1, {}, False),
        ("UNet-T", 8, 1, {}, True),
        ("UNet-T", 16, 1, {}, False),
        ("UNet-CIFAR", 32, 3, {}, True),
        ("UNet-ADM64", 64, 3, {"base_channels": 16}, True),
    ],
)
def test_forward_shapes(size, input_size, channels, overrides, learn_sigma):
    model = UNet(
        input_size, channels, 10, T, routing=DTRRouting(), size=size, learn_sigma=learn_sigma, **overrides
    )
    x = torch.randn(2, channels, input_size, input_size)
    out = model(x, torch.tensor([0, T - 1]), torch.tensor([3, 7]))
    c_out = 2 * channels if learn_sigma else channels
    assert out.shape == (2, c_out, input_size, input_size)
    assert model.out_channels == c_out and model.in_channels == channels and model.learn_sigma == learn_sigma
    # zero-initialised output conv: the untrained model predicts ε = 0
    assert torch.equal(out, torch.zeros_like(out))


def test_labels_null_and_unconditional():
    model = UNet(8, 1, 10, T, size="UNet-T")
    randomize(model)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 50])
    assert model.null_label == 10 and model.y_embedder.table.num_embeddings == 11
    assert torch.allclose(model(x, t, None), model(x, t, torch.full((2,), 10)))
    assert not torch.allclose(model(x, t, torch.tensor([1, 1])), model(x, t, torch.tensor([2, 2])))
    uncond = UNet(8, 1, 0, T, size="UNet-T")
    assert uncond.y_embedder is None and uncond(x, t).shape == (2, 1, 8, 8)


def test_adm64_block_counts_and_parameters():
    with torch.device("meta"):
        model = UNet(64, 3, 1000, 1000, size="UNet-ADM64", learn_sigma=True)
    res = [m for m in model.modules() if isinstance(m, ResBlock)]
    attn = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    # encoder 4 levels × 3 + 3 down blocks, middle 2, decoder 4 levels × 4 + 3 up blocks
    assert len(res) == 12 + 3 + 2 + 16 + 3
    # attention at 32, 16, 8 (levels 1-3): encoder 3 × 3, middle 1, decoder 3 × 4
    assert len(attn) == 9 + 1 + 12
    assert {m.attn.num_heads for m in attn} == {384 // 64, 576 // 64, 768 // 64}
    # ADM reports 296M parameters for its class-conditional ImageNet 64×64 model
    assert abs(sum(p.numel() for p in model.parameters()) - 296e6) < 1e6


def test_routed_widths_cover_every_block():
    model = UNet(16, 1, 10, T, routing=DTRRouting(), size="UNet-T")
    routed = [m for m in model.modules() if isinstance(m, ResBlock | AttentionBlock)]
    # UNet-T (32, 64): encoder 32->32, 32->64; decoder inputs 64+64, 64+32, 64+32, 32+32, 32+32, ...
    assert {m.in_channels for m in routed} == {32, 64, 96, 128}
    assert [m.route_index for m in routed] == list(range(len(routed)))
    for m in routed:
        assert model.router.block_table(m.route_index).shape == (T, m.in_channels)
    assert sorted(model.router.tables()) == [32, 64, 96, 128]  # DTR: one shared table per width
    assert all(len(tables) == 1 for tables in model.router.tables().values())


def test_rtr_unet_draws_a_table_per_routed_block():
    model = UNet(16, 1, 10, T, routing=RandomRouting(beta=0.5), size="UNet-T")
    routed = [m for m in model.modules() if isinstance(m, ResBlock | AttentionBlock)]
    tables = [model.router.block_table(m.route_index) for m in routed]
    assert all((t.sum(1) == m.in_channels // 2).all() for t, m in zip(tables, routed, strict=True))
    same_width = [t for t, m in zip(tables, routed, strict=True) if m.in_channels == 32]
    assert len(same_width) > 1 and not torch.equal(same_width[0], same_width[1])
    assert sum(len(v) for v in model.router.tables().values()) == len(routed)
    # block i reads mask i: perturbing block i's table changes the output, for a randomised model
    randomize(model)
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([3, 60]), torch.tensor([1, 2])
    before = model(x, t, y)
    model.router.block_table(routed[-1].route_index).fill_(1.0)
    assert not torch.allclose(model(x, t, y), before)


def make_block(width: int = 8, resample_mode=None) -> tuple[ResBlock, Router]:
    block = ResBlock(width, width, emb_dim=6, dropout=0.0, resample_mode=resample_mode)
    randomize(block)
    return block, Router(DTRRouting(alpha=1.0, beta=0.5), T, [width])


@pytest.mark.parametrize("block_kind", ["res", "attention"])
def test_inactive_channel_passes_through(block_kind):
    if block_kind == "res":
        block, router = make_block()
    else:
        block, router = (
            AttentionBlock(8, num_head_channels=4),
            Router(DTRRouting(alpha=1.0, beta=0.5), T, [8]),
        )
        # large weights make attention peaked; near-uniform attention averages the normed values to 0
        randomize(block, scale=1.0)
    t = torch.tensor([T - 1])
    (mask,) = router.masks(t)
    # β = 0.5 of 8 channels: at t = T−1 the window is the last 4, so channel 0 is inactive
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    z = torch.randn(1, 8, 4, 4)
    emb = torch.randn(1, 6)
    delta = torch.zeros_like(z)
    delta[:, 0] = torch.randn(4, 4)
    out = block(z, emb, [mask])
    out_changed = block(z + delta, emb, [mask])
    assert torch.allclose(out_changed - out, delta, atol=1e-6)
    # an active channel reaches the block, so it changes other channels too
    delta_active = torch.zeros_like(z)
    delta_active[:, 5] = torch.randn(4, 4)
    diff = block(z + delta_active, emb, [mask]) - out
    assert (diff - delta_active).abs().amax() > 1e-3


def test_masks_follow_each_samples_own_timestep():
    model = UNet(8, 1, 10, T, routing=DTRRouting(beta=0.5), size="UNet-T")
    randomize(model)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([2, 90]), torch.tensor([4, 6])
    batched = model(x, t, y)
    alone = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(2)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_beta_one_routing_equals_no_routing():
    unrouted = UNet(8, 1, 10, T, routing=NoRouting(), size="UNet-T", learn_sigma=True)
    randomize(unrouted)
    routed = UNet(8, 1, 10, T, routing=DTRRouting(alpha=4.0, beta=1.0), size="UNet-T", learn_sigma=True)
    routed.load_state_dict(unrouted.state_dict())
    assert routed.router.enabled
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 40, 99]), torch.tensor([1, 2, 3])
    assert torch.equal(routed(x, t, y), unrouted(x, t, y))
    # a real sharing ratio changes the function with the same weights
    half = UNet(8, 1, 10, T, routing=RandomRouting(beta=0.5), size="UNet-T", learn_sigma=True)
    half.load_state_dict(unrouted.state_dict())
    assert not torch.allclose(half(x, t, y), unrouted(x, t, y))


def test_explicit_overrides():
    model = UNet(
        16,
        1,
        0,
        T,
        size="UNet-T",
        base_channels=16,
        channel_mult=[1, 2, 2],
        num_res_blocks=2,
        attention_resolutions=[8, 4],
        dropout=0.2,
    )
    attn_widths = sorted(m.in_channels for m in model.modules() if isinstance(m, AttentionBlock))
    # 2 encoder + 3 decoder blocks at each of 8×8 and 4×4 (width 32), plus the middle block
    assert attn_widths == [32] * 11
    assert model(torch.randn(1, 1, 16, 16), torch.tensor([3])).shape == (1, 1, 16, 16)
    assert all(m.dropout.p == 0.2 for m in model.modules() if isinstance(m, ResBlock))
    assert SIZES["UNet-T"].base_channels == 32  # the registry is untouched by overrides


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"size": "UNet-XL"}, ["size", "UNet-T"]),
        ({"input_size": 12, "size": "UNet-CIFAR"}, ["channel_mult", "input_size"]),
        ({"input_size": 8, "channel_mult": [1, 2, 2, 2, 2]}, ["channel_mult", "input_size"]),
        ({"channel_mult": []}, ["channel_mult"]),
        ({"channel_mult": [1, 0]}, ["channel_mult"]),
        ({"attention_resolutions": [3]}, ["attention_resolutions"]),
        ({"attention_resolutions": [2]}, ["attention_resolutions"]),
        ({"channel_mult": [1]}, ["attention_resolutions"]),
        ({"num_res_blocks": 0}, ["num_res_blocks"]),
        ({"dropout": 1.0}, ["dropout"]),
        ({"input_size": 0}, ["input_size"]),
        ({"input_size": 32, "size": "UNet-CIFAR", "base_channels": 100}, ["base_channels"]),
    ],
)
def test_bad_config_raises_one_line(kwargs, names):
    args = {"input_size": 8, "in_channels": 1, "num_classes": 10, "num_timesteps": T} | kwargs
    with pytest.raises(DTRLabError) as info:
        UNet(**args)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message
