"""DiT: the size registry, shapes, conditioning and bad options."""

import math

import pytest
import torch

from dtr_lab.errors import DTRLabError
from dtr_lab.models.dit import DiT, parse_size, sincos_pos_embed_2d
from dtr_lab.routing import DTRRouting


def test_registry_has_paper_sizes():
    assert parse_size("DiT-XL/2")[0].hidden_size == 1152 and parse_size("DiT-XL/2")[1] == 2
    assert parse_size("DiT-B/4")[0].depth == 12
    with pytest.raises(DTRLabError, match="DiT-S/2"):
        parse_size("DiT-Huge/2")


def test_param_count_matches_paper_dit_s2():
    # Peebles & Xie report 33.0M parameters for DiT-S/2
    # (ImageNet 256: 32×32×4 latents, 1000 classes, learned σ)
    m = DiT(32, 4, 1000, 1000, size="DiT-S/2", learn_sigma=True)
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(33.0, abs=0.2)


def test_forward_shapes_and_zero_init():
    m = DiT(16, 3, 10, 1000, DTRRouting(), size="DiT-T/4", learn_sigma=True)
    x = torch.randn(2, 3, 16, 16)
    out = m(x, torch.tensor([0, 999]), torch.tensor([1, 10]))
    assert out.shape == (2, 6, 16, 16)
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: the untrained model predicts zeros


def test_unconditional_model_and_null_label():
    m = DiT(8, 1, 0, 100, size="DiT-T/2")
    assert m.y_embedder is None and m(torch.randn(1, 1, 8, 8), torch.tensor([3])).shape == (1, 1, 8, 8)
    c = DiT(8, 1, 10, 100, size="DiT-T/2")
    assert c.null_label == 10 and c.y_embedder.table.num_embeddings == 11


def test_image_size_not_divisible_by_patch():
    with pytest.raises(DTRLabError, match="not divisible by the patch size 4"):
        DiT(10, 1, 10, 100, size="DiT-T/4")


def test_sincos_position_embedding():
    pe = sincos_pos_embed_2d(8, 3)
    assert pe.shape == (9, 8)
    assert torch.allclose(pe[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))  # sin 0, cos 0 per axis
    assert not torch.allclose(pe[1], pe[3])  # (0,1) and (1,0) differ


def test_position_embedding_is_the_official_column_first_formula():
    """DiT models.py get_2d_sincos_pos_embed, from its definition: grid = meshgrid(w, h) ("w goes first"),
    so for token n = r·g + c (row r, column c) and ω_k = 10000^(−k/(D/4)), k < D/4:
    channels [0, D/4) sin(c ω_k), [D/4, D/2) cos(c ω_k), [D/2, 3D/4) sin(r ω_k), [3D/4, D) cos(r ω_k)."""
    D, g = 16, 3
    q = D // 4
    expected = torch.zeros(g * g, D, dtype=torch.float64)
    for r in range(g):
        for c in range(g):
            for k in range(q):
                omega = 10000.0 ** (-k / q)
                expected[r * g + c, k] = math.sin(c * omega)
                expected[r * g + c, q + k] = math.cos(c * omega)
                expected[r * g + c, 2 * q + k] = math.sin(r * omega)
                expected[r * g + c, 3 * q + k] = math.cos(r * omega)
    torch.testing.assert_close(sincos_pos_embed_2d(D, g), expected.float(), atol=1e-7, rtol=0)
    # token (0, 1) is column 1: its first channel is sin(1); token (1, 0) carries sin(1) in channel D/2
    assert sincos_pos_embed_2d(D, g)[1, 0].item() == pytest.approx(math.sin(1.0))
    # dtr_lab's layout before issue 21 is the same embedding with its halves swapped
    old = sincos_pos_embed_2d(D, g, "row_first")
    assert torch.equal(old, torch.cat([expected[:, D // 2 :], expected[:, : D // 2]], dim=1).float())
    assert torch.equal(DiT(6, 1, 10, 100, size="DiT-T/2").pos_embed[0], sincos_pos_embed_2d(128, 3))
    with pytest.raises(DTRLabError, match="pos_embed_layout='rows' is unknown"):
        DiT(6, 1, 10, 100, size="DiT-T/2", pos_embed_layout="rows")


def test_hidden_size_overrides_width_only():
    # DiT-T/2 at width 64 on 8×8×1 digits: 4 blocks of 64-wide adaLN-Zero transformer layers.
    # Per block: qkv 64·192+192, proj 64·64+64, MLP 64·256+256 + 256·64+64, adaLN 64·384+384.
    block = (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64) + (64 * 384 + 384)
    # patch embed 1·2·2·64+64, t-MLP 256·64+64 + 64·64+64, labels 11·64,
    # final adaLN 64·128+128 + linear 64·4+4
    rest = (4 * 64 + 64) + (256 * 64 + 64 + 64 * 64 + 64) + 11 * 64 + (64 * 128 + 128) + (64 * 4 + 4)
    m = DiT(8, 1, 10, 100, size="DiT-T/2", hidden_size=64)
    assert len(m.blocks) == 4 and m.blocks[0].attn.num_heads == 4
    assert sum(p.numel() for p in m.parameters()) == 4 * block + rest
    assert m(torch.randn(2, 1, 8, 8), torch.tensor([0, 99]), torch.tensor([1, 2])).shape == (2, 1, 8, 8)
    with pytest.raises(DTRLabError, match="hidden_size=66 must be a positive multiple of 4"):
        DiT(8, 1, 10, 100, size="DiT-T/2", hidden_size=66)


def test_small_beta_routes_one_position_axis_away():
    """DTR at β = 0.5 on DiT-T/2 digits (README, "Why β = 0.5 fails"): the official 2-D sin-cos embedding
    puts the column position in channels [0, C/2) and the row position in [C/2, C), and the window at
    β = 0.5 is exactly one half at the ends of t, so blocks of the highest-noise tasks never see a token's
    column (nor low-noise tasks its row); β = 0.8 always sees both."""
    C, grid = 128, 4  # 8×8 digits, patch 2
    pe = sincos_pos_embed_2d(C, grid).view(grid, grid, C)  # (row, col, C)
    varies_by_row = (pe.amax(0) - pe.amin(0)).amax(0) > 0.1  # (C,)
    varies_by_col = (pe.amax(1) - pe.amin(1)).amax(0) > 0.1
    assert not varies_by_col[C // 2 :].any() and not varies_by_row[: C // 2].any()
    half = DTRRouting(alpha=4.0, beta=0.5).table(1000, C)
    assert half[999].nonzero().flatten().tolist() == list(range(64, 128))
    blind = (half & varies_by_col).sum(1) == 0  # tasks whose blocks see no column position
    assert blind[999] and blind[900] and not blind[0]
    assert (((half & varies_by_row).sum(1) == 0)[:200]).all()  # and low-t tasks no row position
    wide = DTRRouting(alpha=4.0, beta=0.8).table(1000, C)
    assert ((wide & varies_by_row).sum(1) > 0).all() and ((wide & varies_by_col).sum(1) > 0).all()
