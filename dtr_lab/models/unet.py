"""ADM U-Net (Dhariwal & Nichol, 2021, "Diffusion Models Beat GANs") with Denoising Task Routing.

Every residual block — ResBlock and self-attention block alike — computes skip(z) + Block(m_t ⊙ z),
with m_t the mask of the sample's own timestep for the block's *input* width. The skip sees the
unmasked z (identity, or a 1×1 conv where the width changes), so inactive channels still reach
the next block; only the block's transform is task-routed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.models.denoiser import Denoiser
from dtr_lab.models.dit import Attention, LabelEmbedder, TimestepEmbedder
from dtr_lab.routing import Drawing, NoRouting, Routing, RoutingLoss, route


@dataclass(frozen=True)
class UNetSize:
    base_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    # downsampling factors (input_size / resolution) with attention, so one size fits several inputs
    attention_ds: tuple[int, ...]
    num_head_channels: int
    resblock_updown: bool
    dropout: float


SIZES = {
    # CPU-sized: two levels, attention at the lower one; runs on 8×8 and 16×16 digits
    "UNet-T": UNetSize(32, (1, 2), 1, (2,), 32, False, 0.0),
    # Ho et al. (2020) CIFAR-10 layout (attention at 16×16 for 32×32 inputs), ADM blocks
    "UNet-CIFAR": UNetSize(128, (1, 2, 2, 2), 2, (2,), 64, False, 0.1),
    # ADM's ImageNet 64×64 model: attention at 32, 16 and 8, BigGAN-style resampling blocks
    "UNet-ADM64": UNetSize(192, (1, 2, 3, 4), 3, (2, 4, 8), 64, True, 0.1),
}


def resolve_size(
    size: str,
    input_size: int,
    base_channels: int | None = None,
    channel_mult: tuple[int, ...] | list[int] | None = None,
    num_res_blocks: int | None = None,
    attention_resolutions: tuple[int, ...] | list[int] | None = None,
    dropout: float | None = None,
) -> UNetSize:
    """The named size with the given overrides applied, checked against the input size."""
    if size not in SIZES:
        raise DTRLabError(f"model size {size!r} is unknown; choose one of {', '.join(SIZES)}")
    dims = SIZES[size]
    if base_channels is not None:
        dims = replace(dims, base_channels=int(base_channels))
    if channel_mult is not None:
        dims = replace(dims, channel_mult=tuple(int(m) for m in channel_mult))
    if num_res_blocks is not None:
        dims = replace(dims, num_res_blocks=int(num_res_blocks))
    if dropout is not None:
        dims = replace(dims, dropout=float(dropout))
    if input_size < 1:
        raise DTRLabError(f"U-Net input_size={input_size} must be a positive image side (data.image_size)")
    if dims.base_channels < 1 or dims.num_res_blocks < 1:
        raise DTRLabError(
            f"U-Net base_channels={dims.base_channels} and num_res_blocks={dims.num_res_blocks} "
            "must both be ≥ 1 (model.net.init_args)"
        )
    if not 0.0 <= dims.dropout < 1.0:
        raise DTRLabError(f"U-Net dropout={dims.dropout} must be in [0, 1); ADM uses 0.1")
    mult = dims.channel_mult
    if not mult or min(mult) < 1:
        raise DTRLabError(
            f"U-Net channel_mult={list(mult)} must be a non-empty list of positive integers, "
            "e.g. [1, 2, 2, 2] (model.net.init_args.channel_mult)"
        )
    halvings = len(mult) - 1
    if input_size % 2**halvings:
        raise DTRLabError(
            f"U-Net channel_mult={list(mult)} halves the image {halvings} times, but input_size={input_size} "
            f"is not divisible by {2**halvings}; use a shorter model.net.init_args.channel_mult "
            "or another data.image_size"
        )
    levels_ds = [2**level for level in range(len(mult))]
    reachable = [input_size // ds for ds in levels_ds]
    if attention_resolutions is not None:
        bad = [r for r in attention_resolutions if r not in reachable]
        if bad:
            raise DTRLabError(
                f"U-Net attention_resolutions={list(attention_resolutions)} includes {bad}, which the "
                f"network never reaches; choose from {reachable} (model.net.init_args.attention_resolutions)"
            )
        dims = replace(dims, attention_ds=tuple(input_size // r for r in attention_resolutions))
    unreached = [input_size // ds for ds in dims.attention_ds if ds not in levels_ds]
    if unreached:
        raise DTRLabError(
            f"U-Net size {size} puts attention at resolutions {unreached}, which channel_mult={list(mult)} "
            f"never reaches; set model.net.init_args.attention_resolutions to a subset of {reachable}"
        )
    return dims


def group_norm(channels: int) -> nn.GroupNorm:
    """ADM's 32-group GroupNorm, with fewer groups where the width is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """Nearest-neighbour ×2 ('up'), 2×2 average pooling ('down') or nothing (None)."""
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2)
    return x


class ResBlock(nn.Module):
    """ADM residual block with scale-shift GroupNorm conditioning, routed: skip(z) + Block(m_t ⊙ z)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float,
        resample_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.route_index = 0  # this block's mask in the network's per-block list (set by UNet)
        self.resample_mode = resample_mode
        self.in_norm = group_norm(in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(
        self, z: torch.Tensor, emb: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> torch.Tensor:
        u = route(z, masks[self.route_index], channel_dim=1)  # (N, C_in, H, W): m_t ⊙ z
        # resampling between activation and conv, as in BigGAN's up/down blocks
        h = self.in_conv(resample(F.silu(self.in_norm(u)), self.resample_mode))  # (N, C_out, H', W')
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # 2 × (N, C_out, 1, 1)
        h = self.out_norm(h) * (1 + scale) + shift
        h = self.out_conv(self.dropout(F.silu(h)))  # (N, C_out, H', W')
        return self.skip(resample(z, self.resample_mode)) + h  # the skip sees the unmasked z


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, routed: z + Attn(GroupNorm(m_t ⊙ z))."""

    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        num_heads = max(1, channels // num_head_channels)
        if channels % num_heads:
            raise DTRLabError(
                f"U-Net attention width {channels} does not split into {num_heads} equal heads; pick model."
                f"net.init_args.base_channels so every attention width is a multiple of {num_head_channels}"
            )
        self.in_channels = channels
        self.route_index = 0  # this block's mask in the network's per-block list (set by UNet)
        self.norm = group_norm(channels)
        self.attn = Attention(channels, num_heads)

    def forward(
        self, z: torch.Tensor, emb: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> torch.Tensor:
        N, C, H, W = z.shape
        u = route(z, masks[self.route_index], channel_dim=1)  # (N, C, H, W)
        tokens = self.norm(u).flatten(2).transpose(1, 2)  # (N, HW, C)
        h = self.attn(tokens).transpose(1, 2).reshape(N, C, H, W)  # (N, C, H, W)
        return z + h


class Downsample(nn.Module):
    """Stride-2 3×3 convolution (not a residual block, so not routed)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(
        self, z: torch.Tensor, emb: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> torch.Tensor:
        return self.conv(z)  # (N, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution (not a residual block, so not routed)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(
        self, z: torch.Tensor, emb: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> torch.Tensor:
        return self.conv(resample(z, "up"))  # (N, C, 2H, 2W)


class Stage(nn.ModuleList):
    """Layers applied in order; one entry of the U-Net's encoder or decoder."""

    def forward(
        self, h: torch.Tensor, emb: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> torch.Tensor:
        for layer in self:
            h = layer(h, emb, masks)
        return h


class UNet(Denoiser):
    """Class-conditional ADM U-Net predicting ε (and a log-variance interpolation when learn_sigma)."""

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        num_classes: int,
        num_timesteps: int,
        routing: Routing | None = None,
        size: str = "UNet-T",
        learn_sigma: bool = False,
        base_channels: int | None = None,
        channel_mult: list[int] | None = None,
        num_res_blocks: int | None = None,
        attention_resolutions: list[int] | None = None,
        dropout: float | None = None,
    ) -> None:
        """
        Args:
            input_size: image (or latent) side length; must be divisible by 2^(len(channel_mult) − 1).
            in_channels: image (or latent) channels.
            num_classes: label classes; 0 for an unconditional model.
            num_timesteps: T, the number of denoising tasks (rows of the mask tables).
            routing: how channels are routed per timestep; None is NoRouting.
            size: a name from the registry: 'UNet-T', 'UNet-CIFAR' or 'UNet-ADM64'.
            learn_sigma: also output the ADM log-variance interpolation v (2× output channels).
            base_channels: width of the first level; None keeps the size's.
            channel_mult: width of each level over base_channels; each level after the first halves
                the resolution. None keeps the size's.
            num_res_blocks: residual blocks per level in the encoder (one more in the decoder).
            attention_resolutions: resolutions (pixels) with self-attention; None keeps the size's.
            dropout: dropout inside residual blocks; None keeps the size's.
        """
        super().__init__()
        dims = resolve_size(
            size, input_size, base_channels, channel_mult, num_res_blocks, attention_resolutions, dropout
        )
        self.size = size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.null_label = num_classes
        base = dims.base_channels
        emb_dim = 4 * base
        self.t_embedder = TimestepEmbedder(emb_dim, freq_dim=base)
        self.y_embedder = LabelEmbedder(num_classes, emb_dim) if num_classes > 0 else None

        def res_block(c_in: int, c_out: int, mode: str | None = None) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dims.dropout, mode)

        def attention(c: int) -> AttentionBlock:
            return AttentionBlock(c, dims.num_head_channels)

        ch = base * dims.channel_mult[0]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        skip_widths = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(dims.channel_mult):
            ds = 2**level
            for _ in range(dims.num_res_blocks):
                stage = Stage([res_block(ch, base * mult)])
                ch = base * mult
                if ds in dims.attention_ds:
                    stage.append(attention(ch))
                self.down.append(stage)
                skip_widths.append(ch)
            if level < len(dims.channel_mult) - 1:
                self.down.append(
                    Stage([res_block(ch, ch, "down") if dims.resblock_updown else Downsample(ch)])
                )
                skip_widths.append(ch)
        self.middle = Stage([res_block(ch, ch), attention(ch), res_block(ch, ch)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(dims.channel_mult))):
            ds = 2**level
            for i in range(dims.num_res_blocks + 1):
                stage = Stage([res_block(ch + skip_widths.pop(), base * mult)])
                ch = base * mult
                if ds in dims.attention_ds:
                    stage.append(attention(ch))
                if level > 0 and i == dims.num_res_blocks:
                    stage.append(res_block(ch, ch, "up") if dims.resblock_updown else Upsample(ch))
                self.up.append(stage)
        self.norm_out = group_norm(ch)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)

        routed = [m for m in self.modules() if isinstance(m, ResBlock | AttentionBlock)]
        for index, block in enumerate(routed):
            block.route_index = index
        self.router = (routing or NoRouting()).build(num_timesteps, [m.in_channels for m in routed], emb_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Zero-initialise every residual branch's last layer and the output conv: the net starts at 0."""
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.out_conv.weight)
                nn.init.zeros_(m.out_conv.bias)
            elif isinstance(m, AttentionBlock):
                nn.init.zeros_(m.attn.proj.weight)
                nn.init.zeros_(m.attn.proj.bias)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W), t (N,) long, y (N,) long or None (unconditional) -> (N, C_out, H, W)."""
        t_emb = self.t_embedder(t)  # (N, E)
        emb = t_emb
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.null_label)
            emb = emb + self.y_embedder(y)  # (N, E)
        masks = self.router.masks(t, t_emb)  # per routed block: (N, C_in of the block), experts or None
        h = self.conv_in(x)  # (N, C_0, H, W)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, masks)  # (N, C_level, H / 2^level, W / 2^level)
            skips.append(h)
        h = self.middle(h, emb, masks)  # (N, C_last, H / 2^(L−1), W / 2^(L−1))
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, masks)  # (N, C_level, ...)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, C_out, H, W)

    def routing_loss(self, t: torch.Tensor, generator: torch.Generator | None = None) -> RoutingLoss | None:
        """The routing's own weighted loss term for timesteps t (Switch's diffusion prior), or None."""
        return self.router.loss(self.t_embedder, t, generator)

    def routing_drawing(self) -> Drawing:
        """What its routing draws (tables, or a learned router's gates over every t)."""
        return self.router.drawing(self.t_embedder)
