"""GradientConflict: the cosine between per-interval gradients on a fixed probe, over training.

cos(g_i, g_j) < 0 means a step that lowers interval i's loss raises interval j's: the tasks
conflict. ANT (Go et al., NeurIPS 2023) calls this cosine the task affinity score.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from dtr_lab.callbacks.probe import AUTO, IntervalProbe, Probe, block_slices, write_matrix
from dtr_lab.mtl.intervals import Intervals


def gram(grads: torch.Tensor, ranges: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """G_ij = ⟨g_i, g_j⟩ over all of the flat gradients (K, P), or over the given [start, end) ranges."""
    if ranges is None:
        return grads @ grads.T  # (K, K)
    return sum(grads[:, a:b] @ grads[:, a:b].T for a, b in ranges)


def cosine_matrix(gram: torch.Tensor) -> torch.Tensor:
    """cos(g_i, g_j) from the Gram matrix (K, K); NaN where a gradient is zero (undefined)."""
    norm = gram.diagonal().clamp(min=0).sqrt()  # (K,)
    denom = norm[:, None] * norm[None, :]
    cos = (gram / denom).clamp(-1.0, 1.0)
    return torch.where(denom > 0, cos, torch.full_like(cos, float("nan")))


def neg_share(cos: torch.Tensor) -> float:
    """Share of interval pairs i < j whose gradients point apart (cos < 0), over the defined pairs."""
    i, j = torch.triu_indices(cos.shape[0], cos.shape[0], offset=1)
    pairs = cos[i, j]
    pairs = pairs[~pairs.isnan()]
    return float((pairs < 0).float().mean()) if pairs.numel() else float("nan")


def cos_by_distance(cos: torch.Tensor) -> torch.Tensor:
    """Mean cos(g_i, g_{i+d}) for interval distance d = 1 … K−1, (K−1,)."""
    k = cos.shape[0]
    return torch.stack([cos.diagonal(d).nanmean() for d in range(1, k)])


class GradientConflict(IntervalProbe):
    """Every N steps: the K×K cosine matrix of per-interval gradients, overall and per block."""

    record_name = "conflict"

    def __init__(
        self,
        every_n_steps: int = 100,
        intervals: Intervals | None = None,
        probe_size: int | None = None,
        params: str | None = None,
        block_pattern: str | None = AUTO,
        seed: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: measure after every N optimizer steps (and at step 0 and the last step when
                it is a multiple of N).
            intervals: the K task intervals; default the module's (model.intervals). Another split
                is measured with gradients of its own (another K backward passes).
            probe_size: n probe images; each interval sees all n at its own timesteps, so a measurement
                is a forward and backward pass over K·n samples; null: n = B/K (B = data.batch_size),
                about one training step.
            params: regex selecting the parameters whose gradients are compared (searched in names such
                as 'blocks.0.attn.qkv.weight'); null for all trainable parameters.
            block_pattern: regex whose match at the start of a parameter name names its block, for
                per-block metrics; 'auto' = the network's own (each DiT block); e.g. '(down|up)\\.\\d+|middle'
                for the U-Net; null for none.
            seed: seeds the probe's images, timesteps and noise (fixed for the whole run).
        """
        super().__init__(every_n_steps, intervals, probe_size, params, seed)
        self.block_pattern = block_pattern
        self.blocks: dict[str, list[tuple[int, int]]] = {}

    def setup_analysis(self, pl_module: L.LightningModule) -> None:
        with self.option_errors():
            self.blocks = block_slices(pl_module.net, self.param_names, self.block_pattern, "block_pattern")

    @torch.no_grad()
    def matrices(self, grads: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cosine matrix over all selected parameters ("cos") and per block ("cos/<block>")."""
        out = {"cos": cosine_matrix(gram(grads))}
        for name, ranges in self.blocks.items():
            out[f"cos/{name}"] = cosine_matrix(gram(grads, ranges))
        return out

    def measure(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        probe: Probe,
        params: list[torch.Tensor],
        step: int,
    ) -> None:
        grads, _ = self.probe_gradients(pl_module, probe, params, step)  # (K, P)
        matrices = {name: m.cpu() for name, m in self.matrices(grads).items()}
        grad_norm = grads.norm(dim=1).cpu()  # (K,)
        cos = matrices["cos"]
        by_distance = cos_by_distance(cos)
        k = cos.shape[0]

        scalars = {f"conflict/cos/i{i}_j{j}": cos[i, j].item() for i in range(k) for j in range(i + 1, k)}
        scalars["conflict/neg_share"] = neg_share(cos)
        scalars.update({f"conflict/grad_norm/i{i}": v for i, v in enumerate(grad_norm.tolist())})
        scalars.update({f"conflict/cos_by_distance/d{d + 1}": v for d, v in enumerate(by_distance.tolist())})
        # not conflict/neg_share/<block>: MLflow's file store keeps a tag as a file, never also a folder
        for name in self.blocks:
            scalars[f"conflict/neg_share_by_block/{name}"] = neg_share(matrices[f"cos/{name}"])
        self.log_scalars(trainer, {tag: v for tag, v in scalars.items() if math.isfinite(v)}, step)

        self.log_heatmaps(trainer, "conflict/cos", {"cos": cos}, step)
        if self.blocks:
            self.log_heatmaps(
                trainer, "conflict/cos_blocks", {n: matrices[f"cos/{n}"] for n in self.blocks}, step
            )

        if self.writer is not None:
            for name, matrix in matrices.items():
                write_matrix(self.writer, step, name, matrix)
                share = neg_share(matrix)
                if math.isfinite(share):
                    self.writer.scalar(step, name.replace("cos", "neg_share", 1), share)
            self.writer.vector(step, "grad_norm", grad_norm)
            self.writer.vector(step, "cos_by_distance", by_distance, index=range(1, k))
