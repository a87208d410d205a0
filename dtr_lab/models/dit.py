"""Diffusion Transformer (Peebles & Xie, 2023) with Denoising Task Routing in every block.

Each block computes z + Block(m_t ⊙ z): the mask of the sample's own timestep zeroes the
inactive channels at the block input, the skip connection carries all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.models.denoiser import Denoiser
from dtr_lab.routing import Drawing, NoRouting, Routing, RoutingLoss, route


@dataclass(frozen=True)
class DiTSize:
    depth: int
    hidden_size: int
    num_heads: int


# The paper's sizes (Table 1 of Peebles & Xie), plus two that train on a laptop CPU.
SIZES = {
    "T": DiTSize(depth=4, hidden_size=128, num_heads=4),
    "XS": DiTSize(depth=6, hidden_size=256, num_heads=4),
    "S": DiTSize(depth=12, hidden_size=384, num_heads=6),
    "B": DiTSize(depth=12, hidden_size=768, num_heads=12),
    "L": DiTSize(depth=24, hidden_size=1024, num_heads=16),
    "XL": DiTSize(depth=28, hidden_size=1152, num_heads=16),
}
PATCH_SIZES = (1, 2, 4, 8)
MODEL_NAMES = [f"DiT-{s}/{p}" for s in SIZES for p in PATCH_SIZES]


def parse_size(name: str) -> tuple[DiTSize, int]:
    """'DiT-B/2' -> (DiTSize(12, 768, 12), 2)."""
    try:
        size, patch = name.removeprefix("DiT-").split("/")
        if int(patch) not in PATCH_SIZES:  # e.g. /0, which would divide by zero further on
            raise ValueError(patch)
        return SIZES[size], int(patch)
    except (KeyError, ValueError):
        raise DTRLabError(f"model size {name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}") from None


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


# which token axis the first half of the position embedding's channels encodes
POS_EMBED_LAYOUTS = ("column_first", "row_first")


def sincos_pos_embed_2d(dim: int, grid: int, layout: str = "column_first") -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of row-major tokens: (grid*grid, dim), half the channels per axis.

    "column_first" is the official layout (DiT models.py ``get_2d_sincos_pos_embed``: meshgrid(w, h),
    "w goes first", copied by DTR and Switch-DiT): the column position in channels [0, dim/2), the row
    in [dim/2, dim); official checkpoints depend on it. "row_first" swaps the halves: dtr_lab's layout
    before issue 21, kept so its checkpoints load with the embedding they were trained with.
    """
    if layout not in POS_EMBED_LAYOUTS:
        raise DTRLabError(
            f"model.net.init_args.pos_embed_layout={layout!r} is unknown; "
            f"choose one of {', '.join(POS_EMBED_LAYOUTS)}"
        )

    def axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.flatten()[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    coords = torch.arange(grid, dtype=torch.float64)
    row, col = torch.meshgrid(coords, coords, indexing="ij")  # (grid, grid) each, token r·grid + c
    first, second = (col, row) if layout == "column_first" else (row, col)
    return torch.cat([axis(dim // 2, first), axis(dim // 2, second)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> vectors: sinusoidal features then a two-layer MLP."""

    def __init__(self, hidden_size: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; index num_classes is the null label of classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.null_label = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)  # (N, D)


class Attention(nn.Module):
    """Multi-head self-attention over tokens (fused scaled-dot-product kernel)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, C = x.shape
        qkv = self.qkv(x).view(N, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        # unbind, not qkv[0], qkv[1], qkv[2]: indexing makes backward build and sum three zero tensors
        # the size of qkv (timm's Attention splits the same way)
        q, k, v = qkv.unbind(0)  # (N, H, L, C/H) each
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, C/H)
        return self.proj(out.transpose(1, 2).reshape(N, L, C))  # (N, L, C)


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block, routed: returns z + Block(m_t ⊙ z)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden_size)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, z: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 × (N, D)
        u = route(z, mask)  # (N, L, D): m_t ⊙ z, the only cost of routing
        h = u + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(u), shift1, scale1))
        h = h + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(h), shift2, scale2))
        if mask is None:
            return h
        return z + (h - u)  # the skip carries all channels; Block's output reaches all of them


class FinalLayer(nn.Module):
    """adaLN then a linear map from tokens to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, L, p*p*C_out)


class DiT(Denoiser):
    """Class-conditional DiT predicting ε (and a log-variance interpolation when learn_sigma)."""

    block_pattern = r"blocks\.[^.]+"  # each transformer block, for the per-block analyses

    def __init__(
        self,
        input_size: int,
        in_channels: int,
        num_classes: int,
        num_timesteps: int,
        routing: Routing | None = None,
        size: str = "DiT-S/2",
        mlp_ratio: float = 4.0,
        learn_sigma: bool = False,
        hidden_size: int | None = None,
        pos_embed_layout: str = "column_first",
    ) -> None:
        """
        Args:
            input_size: image (or latent) side length; must be divisible by the patch size.
            in_channels: image (or latent) channels.
            num_classes: label classes; 0 for an unconditional model.
            num_timesteps: T, the number of denoising tasks (rows of the mask tables).
            routing: how channels are routed per timestep; None is NoRouting.
            size: a name from the registry, 'DiT-{T,XS,S,B,L,XL}/{1,2,4,8}'.
            mlp_ratio: MLP hidden width over the token width.
            learn_sigma: also output the ADM log-variance interpolation v (2× output channels).
            hidden_size: token width instead of the size's (depth and heads kept), e.g. 64 for an
                unrouted DiT-T as wide as a β = 0.5 routed one's active channels; a multiple of
                4 (the 2-D sin-cos position embedding) and of the head count.
            pos_embed_layout: "column_first" (the official DiT's, the default) or "row_first" (dtr_lab's
                before issue 21; a checkpoint records its layout and loads with it).
        """
        super().__init__()
        dims, patch = parse_size(size)
        if hidden_size is not None:
            if hidden_size < 4 or hidden_size % 4 or hidden_size % dims.num_heads:
                raise DTRLabError(
                    f"model.net.init_args.hidden_size={hidden_size} must be a positive multiple of 4 and of "
                    f"{size}'s {dims.num_heads} heads"
                )
            dims = DiTSize(dims.depth, hidden_size, dims.num_heads)
        if input_size % patch:
            raise DTRLabError(
                f"image size {input_size} is not divisible by the patch size {patch} of {size}; "
                "pick a model with a smaller patch or resize the data (data.image_size)"
            )
        self.size = size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.patch_size = patch
        self.num_classes = num_classes
        self.null_label = num_classes
        D = dims.hidden_size
        self.x_embedder = nn.Conv2d(in_channels, D, kernel_size=patch, stride=patch)
        self.grid = input_size // patch
        self.pos_embed_layout = pos_embed_layout
        pos_embed = sincos_pos_embed_2d(D, self.grid, pos_embed_layout)[None]  # (1, L, D)
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(num_classes, D) if num_classes > 0 else None
        self.router = (routing or NoRouting()).build(num_timesteps, [D] * dims.depth, D)
        self.blocks = nn.ModuleList(DiTBlock(D, dims.num_heads, mlp_ratio) for _ in range(dims.depth))
        self.final_layer = FinalLayer(D, patch, self.out_channels)
        self.initialize_weights()

    def set_pos_embed_layout(self, layout: str) -> None:
        """Rebuild the fixed position embedding in another layout (a checkpoint's own, on loading it)."""
        pe = sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid, layout)[None]
        self.pos_embed = pe.to(self.pos_embed)
        self.pos_embed_layout = layout

    def initialize_weights(self) -> None:
        """Xavier linears, zero-initialised adaLN and output (the 'Zero' of adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        for layer in [*self.blocks, self.final_layer]:
            nn.init.zeros_(layer.adaLN_modulation[-1].weight)
            nn.init.zeros_(layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        N, L, _ = x.shape
        p, c, g = self.patch_size, self.out_channels, int(math.isqrt(x.shape[1]))
        x = x.view(N, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)  # (N, C, g, p, g, p)
        return x.reshape(N, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, C, H, W), t (N,) long, y (N,) long or None (unconditional) -> (N, C_out, H, W)."""
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, L, D)
        emb = self.t_embedder(t)  # (N, D)
        c = emb
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.null_label)
            c = c + self.y_embedder(y)  # (N, D)
        masks = self.router.masks(t, emb)  # per block: (N, D), gated experts (Switch) or None
        for block, mask in zip(self.blocks, masks, strict=True):
            h = block(h, c, mask)  # (N, L, D)
        return self.unpatchify(self.final_layer(h, c))  # (N, C_out, H, W)

    def routing_loss(self, t: torch.Tensor, generator: torch.Generator | None = None) -> RoutingLoss | None:
        """The routing's own weighted loss term for timesteps t (Switch's diffusion prior), or None."""
        return self.router.loss(self.t_embedder, t, generator)

    def routing_drawing(self) -> Drawing:
        """What its routing draws (tables, or a learned router's gates over every t)."""
        return self.router.drawing(self.t_embedder)
