"""Switch-DiT routing: timestep-gated experts make every block's channel mask (Park et al., ECCV 2024,
arXiv 2403.09176).

Followed: the official code, byeongjun-park/Switch-DiT — models/MoE.py (TaskMoE: gate, top-k, mask),
models/DiT/models.py (DiffusionPrior, the routed block, zero-initialised experts) and util/model_util.py
(bipartite_matching); defaults from config/routing/DMoE.yaml (E = 3, k = 2, w_JSD = 1).

Per routed block b, a gate on the timestep embedding e_t gives p_b(t) = softmax(W_b·SiLU(e_t) + c_b) over
E experts and keeps the top k. The chosen experts, linear maps of the block input z (…, C), weighted by
their gate probabilities, make the mask

    m = 1 + Σ_{e ∈ top-k(t)} p_{b,e}(t) · (z A_{b,e} + a_{b,e}),

used as DTR's in z + Block(m ⊙ z). The experts start at zero, so m = 1 and training starts from the
unrouted model. Unlike DTR's masks, m is real-valued and depends on z, per token and channel.

Diffusion prior: a Jensen–Shannon divergence between the gates' probabilities over all depth·E slots
(each block's sum to 1, so their concatenation is divided by the depth) and a DTR sliding window over
those slots (β = k/E, α = 4; the row of the sample's t, normalised). The window's columns are first
matched to the gates' columns by a minimum-cost bipartite matching (L1 distance over all T timesteps
between a slot's quantised choices, top-k as 0/1, and a window column), so the prior says *how* the
choices should shift with t, not which expert does what. The loss w_JSD · JSD is added to the
objective in training.

The window is DTR's table over the depth·E slots, so its width is the official int(depth·E·k/E) (one less
than depth·k for a few E in floating point, e.g. depth 5, E = 11, k = 3; never at E = 3, k = 2).
Where dtr_lab differs (no number changes at the defaults): the gates' table over all t is computed
without gradient (only the matching uses it; the gradient reaches the gates through the batch's own
timesteps, as in the official code, whose full-table rows are indexed by t); the experts are GEMMs per
expert in PyTorch rather than the official ParallelExperts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from dtr_lab.errors import DTRLabError
from dtr_lab.routing.base import BaseRouter, Drawing, Routing, RoutingLoss
from dtr_lab.routing.tables import DTRRouting
from dtr_lab.seeds import derive_seed

JSD_EPS = 1e-6  # inside the logs, as the official DiffusionPrior
SLOT_PIXELS = 8  # an expert slot's width in the drawn image (a mask table's channel is one pixel)


class SwitchRouting(Routing):
    """Switch-DiT: per block, a timestep gate picks k of E zero-initialised experts that make the mask."""

    label = "switch"

    def __init__(
        self,
        num_experts: int = 3,
        k: int = 2,
        w_jsd: float = 1.0,
        alpha: float = 4.0,
        seed: int | None = None,
    ) -> None:
        """
        Args:
            num_experts: E, experts per routed block (3 in the official config).
            k: experts each timestep uses per block (2 in the official config); 1 ≤ k ≤ E.
            w_jsd: weight of the diffusion-prior loss (1 in the official config, "to be fine-tuned").
            alpha: the prior window's shape over depth (DTR's α; 4 in the official DiffusionPrior).
            seed: seeds the gates' initial weights from a generator of their own (default: the run's
                seed, torch.initial_seed()), so the rest of the network starts as the unrouted one.
        """
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise DTRLabError(
                f"routing num_experts={num_experts!r} must be an integer ≥ 1; Switch-DiT uses 3"
            )
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
            raise DTRLabError(
                f"routing k={k!r} must be an integer from 1 to num_experts={num_experts}: each timestep "
                "picks k of the E experts; Switch-DiT uses k = 2 of E = 3"
            )
        if not w_jsd >= 0:  # also refuses NaN
            raise DTRLabError(
                f"routing w_jsd={w_jsd} must be ≥ 0 (0 trains without the diffusion prior); Switch-DiT uses 1"
            )
        self.window = DTRRouting(alpha, k / num_experts)  # checks alpha
        self.num_experts = num_experts
        self.k = k
        self.w_jsd = float(w_jsd)
        self.alpha = float(alpha)
        self.seed = seed

    def build(self, num_timesteps: int, widths: list[int], embed_dim: int) -> SwitchRouter:
        return SwitchRouter(self, num_timesteps, widths, embed_dim)

    def options(self) -> dict:
        return {"num_experts": self.num_experts, "k": self.k, "w_jsd": self.w_jsd, "alpha": self.alpha,
                "seed": self.seed}


@dataclass
class ExpertMask:
    """A block's gated experts for a batch: applied to z, gives m ⊙ z with m = 1 + Σ_e g_e (z A_e + a_e)."""

    gates: torch.Tensor  # (N, E): the top-k probabilities, zero elsewhere
    weight: torch.Tensor  # (E, C, C), z A_e
    bias: torch.Tensor  # (E, C)

    def __call__(self, z: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        zc = z.movedim(channel_dim, -1)  # (N, …, C)
        flat = zc.reshape(zc.shape[0], -1, zc.shape[-1])  # (N, L, C)
        N, L, C = flat.shape
        out = torch.zeros_like(flat)
        # Eager on the CPU: expert by expert over the samples that chose it, k·C² a token, one GEMM per
        # expert (measured faster on CPU than one combined C×C map per sample, or all E experts for every
        # sample). Which samples chose it is data (nonzero): its size must be read by the host, a sync on a
        # GPU and a graph break under torch.compile. There every expert runs on every sample, E·C² a token,
        # weighted by its gate, zero where not chosen: the same sum, rounded otherwise.
        gather = z.device.type == "cpu" and not torch.compiler.is_compiling()
        for e in range(self.gates.shape[1]):
            rows = self.gates[:, e].nonzero().squeeze(1) if gather else None  # (n_e,) or every sample
            chosen = flat if rows is None else flat[rows]
            y = torch.addmm(self.bias[e], chosen.reshape(-1, C), self.weight[e])  # (n_e·L, C)
            gate = self.gates[:, e] if rows is None else self.gates[rows, e]  # (n_e,)
            y = (y.view(-1, L, C) * gate[:, None, None]).to(out.dtype)  # bf16 GEMMs, fp32 gates
            out = out + y if rows is None else out.index_add(0, rows, y)
        return z * (1 + out.view(zc.shape).movedim(-1, channel_dim))


class TimestepExperts(nn.Module):
    """One block's gate (timestep embedding -> E probabilities) and its E experts (C -> C linear maps)."""

    def __init__(self, num_experts: int, k: int, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.k = k
        # plain Parameters, not nn.Linear: building them draws no random numbers, and the backbone's
        # initialisation (which re-initialises every nn.Linear) leaves them to SwitchRouter
        self.gate_weight = nn.Parameter(torch.empty(num_experts, embed_dim))
        self.gate_bias = nn.Parameter(torch.zeros(num_experts))
        self.expert_weight = nn.Parameter(torch.zeros(num_experts, channels, channels))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, channels))

    def probs(self, emb: torch.Tensor) -> torch.Tensor:
        """p(t) = softmax(W·SiLU(e_t) + c): (N, D_emb) -> (N, E)."""
        return torch.softmax(F.linear(F.silu(emb), self.gate_weight, self.gate_bias), dim=-1)

    def gates(self, emb: torch.Tensor) -> torch.Tensor:
        """The top-k probabilities in place, zero elsewhere: (N, D_emb) -> (N, E)."""
        probs = self.probs(emb)
        top, index = probs.topk(self.k, dim=-1)  # (N, k) each
        return torch.zeros_like(probs).scatter(-1, index, top)

    def mask(self, emb: torch.Tensor) -> ExpertMask:
        return ExpertMask(self.gates(emb), self.expert_weight, self.expert_bias)


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, eps: float = JSD_EPS) -> torch.Tensor:
    """Mean over rows of JSD(p, q) = ½ KL(p‖M) + ½ KL(q‖M), M = (p + q)/2, with eps inside the logs."""
    m = (p + q) / 2
    kl_p = (p * (torch.log(p + eps) - torch.log(m + eps))).sum(-1)
    kl_q = (q * (torch.log(q + eps) - torch.log(m + eps))).sum(-1)
    return ((kl_p + kl_q) / 2).mean()


@torch.no_grad()
def match_slots(
    choices: torch.Tensor, prior: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For every gate slot s, the prior column matched to it: (S,) long.

    choices, prior: (T, S) 0/1 tables. Cost of pairing gate slot i with prior column j is
    Σ_t |choices[t, i] − prior[t, j]|; the assignment minimises the total cost. Both column orders are
    shuffled first (as the official code does) so that ties are broken at random, not by slot index.
    """
    S = choices.shape[1]
    gate_perm = torch.randperm(S, generator=generator)
    prior_perm = torch.randperm(S, generator=generator)
    a, b = choices[:, gate_perm].float(), prior[:, prior_perm].float()
    cost = (a[:, :, None] - b[:, None, :]).abs().sum(0)  # (S, S)
    _, cols = linear_sum_assignment(cost.cpu().numpy())
    match = torch.empty(S, dtype=torch.long)
    match[gate_perm] = prior_perm[torch.as_tensor(cols, dtype=torch.long)]
    return match.to(choices.device)


def diffusion_prior_loss(
    probs: torch.Tensor,
    choices: torch.Tensor,
    prior: torch.Tensor,
    t: torch.Tensor,
    depth: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """JSD between the gates' probabilities (N, depth·E) / depth and the matched prior rows of t, normalised.

    choices: the gates' quantised choices over every t, (T, depth·E); prior: the window table (T, depth·E).
    """
    match = match_slots(choices, prior, generator)
    target = prior[t][:, match].float()  # (N, depth·E)
    return jensen_shannon(probs / depth, target / target.sum(-1, keepdim=True))


class SwitchRouter(BaseRouter):
    """Every routed block's TimestepExperts, and the diffusion prior over their depth × E slots."""

    learned = True

    def __init__(
        self, strategy: SwitchRouting, num_timesteps: int, widths: list[int], embed_dim: int
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.num_timesteps = num_timesteps
        self.widths = list(widths)
        E = strategy.num_experts
        self.experts = nn.ModuleList(TimestepExperts(E, strategy.k, c, embed_dim) for c in widths)
        prior = strategy.window.table(num_timesteps, len(widths) * E)  # (T, depth·E)
        self.register_buffer("prior", prior.float(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gates Xavier-uniform with zero bias (the official nn.Linear init), experts zero; from a generator
        of their own, seeded per block, so the global random stream is not touched."""
        seed = torch.initial_seed() if self.strategy.seed is None else self.strategy.seed
        for block, experts in enumerate(self.experts):
            gen = torch.Generator().manual_seed(derive_seed(seed, block))
            with torch.no_grad():
                experts.gate_weight.copy_(
                    nn.init.xavier_uniform_(torch.empty_like(experts.gate_weight), generator=gen)
                )
                experts.gate_bias.zero_()
                experts.expert_weight.zero_()
                experts.expert_bias.zero_()

    def masks(self, t: torch.Tensor, emb: torch.Tensor) -> list[ExpertMask]:
        """Per routed block, the gated experts of each sample's timestep (emb: its embedding, (N, D_emb))."""
        return [experts.mask(emb) for experts in self.experts]

    @torch.no_grad()
    def choices(self, embedder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The gates over every t: probabilities and quantised (top-k = 1) choices, (T, depth, E) each."""
        emb = embedder(torch.arange(self.num_timesteps, device=self.prior.device))  # (T, D_emb)
        probs = torch.stack([experts.probs(emb) for experts in self.experts], dim=1)  # (T, depth, E)
        index = probs.topk(self.strategy.k, dim=-1).indices
        return probs, torch.zeros_like(probs).scatter(-1, index, 1.0)

    def loss(
        self, embedder: nn.Module, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> RoutingLoss:
        """The diffusion prior's JSD for timesteps t (N,), weighted by w_JSD and logged as prior_jsd; its
        gradient reaches the gates and the embedder."""
        _, chosen = self.choices(embedder)
        emb = embedder(t)  # (N, D_emb)
        probs = torch.cat([experts.probs(emb) for experts in self.experts], dim=1)  # (N, depth·E)
        jsd = diffusion_prior_loss(probs, chosen.flatten(1), self.prior, t, len(self.experts), generator)
        return RoutingLoss("prior_jsd", jsd, self.strategy.w_jsd)

    def drawing(self, embedder: nn.Module) -> Drawing:
        """The gates over every t: chosen slots (T, depth·E, block-major) as a table, probabilities beside."""
        probs, chosen = self.choices(embedder)  # (T, depth, E) each
        images = {"expert_probs": probs.flatten(1).cpu()}
        return Drawing(
            {"experts": [chosen.flatten(1).cpu()]},
            images,
            SLOT_PIXELS,
            learned=True,
            columns="expert",
            group=probs.shape[2],
            labels={"masks_experts": "chosen", "expert_probs": "gate probability p_b,e(t)"},
        )

    def extra_repr(self) -> str:
        return f"{self.strategy!r}, T={self.num_timesteps}, blocks={len(self.widths)}"
