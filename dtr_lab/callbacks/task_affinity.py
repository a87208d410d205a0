"""TaskAffinity: lookahead inter-task affinity between timestep intervals (TAG; Fifty et al., NeurIPS 2021).

    Z_{i→j} = 1 − L_j(θ − η·u_i) / L_j(θ)

Z_{i→j} > 0: a step on interval i's gradient alone would lower interval j's loss. u_i is either
the plain gradient g_i (update="sgd") or the step the configured optimizer would take from its
current state given g_i (update="optimizer": Adam's moments and bias correction included). The
lookahead is evaluated with torch.func.functional_call on substituted tensors, so the trained
parameters are never written to, and the optimizer's state is replayed on a copy. Analysing a loaded
model (`validate`, no training), "optimizer" is the configured optimizer with the state saved in the
checkpoint, so the measurement equals fit's at that step. A checkpoint without one (an imported official
one) is measured with "sgd" instead, with a warning: a fresh Adam's first step, lr·g/(|g| + ε), is about
lr·sign(g), whatever the model learnt; each such measurement records a row ``update/sgd`` whose value is
η, since the run's config says "optimizer".
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.func import functional_call

from dtr_lab.callbacks.probe import IntervalProbe, Probe, write_matrix
from dtr_lab.errors import DTRLabError
from dtr_lab.mtl.intervals import Intervals

UPDATES = ("optimizer", "sgd")


def unflatten(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat (P,) vector into tensors shaped and typed like params."""
    sizes = [p.numel() for p in params]
    return [g.view_as(p).to(p.dtype) for g, p in zip(flat.split(sizes), params, strict=True)]


@torch.no_grad()
def optimizer_lookahead(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The values params would take if the optimizer stepped once from its current state with these
    gradients (others get none, so they don't move); the optimizer and parameters are left untouched."""
    copies = {}
    groups = []
    for group in optimizer.param_groups:
        clones = [p.detach().clone() for p in group["params"]]
        copies.update(zip(group["params"], clones, strict=True))
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": clones})
    replay = type(optimizer)(groups)
    # load_state_dict may share tensors with its argument: the deep copy keeps the real moments safe
    replay.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for p, g in zip(params, grads, strict=True):
        copies[p].grad = g
    replay.step()
    return [copies[p] for p in params]


class TaskAffinity(IntervalProbe):
    """Every N steps: the asymmetric K×K lookahead affinity Z_{i→j} between task intervals."""

    record_name = "affinity"

    def __init__(
        self,
        every_n_steps: int = 300,
        intervals: Intervals | None = None,
        probe_size: int | None = None,
        params: str | None = None,
        update: str = "optimizer",
        lr: float | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: measure after every N optimizer steps (and at step 0 and the last step when
                it is a multiple of N).
            intervals: the K task intervals; default the module's (model.intervals). Another split
                is measured with gradients of its own (another K backward passes).
            probe_size: n probe images; each interval sees all n at its own timesteps; null: n = B/K.
            params: regex selecting the parameters the lookahead step moves; null for all trainable ones.
            update: 'optimizer' (the configured optimizer's step from its current state; 'sgd' where a
                loaded checkpoint holds no optimizer state) or 'sgd' (θ − η·g_i).
            lr: η for update='sgd'; default the optimizer's learning rate.
            seed: seeds the probe's images, timesteps and noise (fixed for the whole run).
        """
        super().__init__(every_n_steps, intervals, probe_size, params, seed)
        if update not in UPDATES:
            raise DTRLabError(
                f"TaskAffinity.update={update!r} is unknown; choose one of {', '.join(UPDATES)}"
            )
        if lr is not None and not lr > 0:
            raise DTRLabError(f"TaskAffinity.lr={lr} must be > 0 (or null for the optimizer's learning rate)")
        self.update = update
        self.measured_with = update  # the update the lookaheads use: sgd where no optimizer state exists
        self.lr = lr
        self.fresh: list[torch.optim.Optimizer] = []  # the configured optimizer, when analysing without fit

    def analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        if not trainer.optimizers and not self.fresh:
            self.fresh = [self.saved_optimizer(trainer, pl_module)]
        super().analyse(trainer, pl_module, step)

    def saved_optimizer(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.optim.Optimizer:
        """The configured optimizer in the state the loaded checkpoint saved (validate doesn't restore it)."""
        optimizer = pl_module.build_optimizer()
        saved = None
        if trainer.ckpt_path:  # memory-mapped: the moments are read, the weights are not copied again
            checkpoint = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=True, mmap=True)
            saved = (checkpoint.get("optimizer_states") or [None])[0]
        if saved is not None:
            optimizer.load_state_dict(saved)
        elif self.update == "optimizer":
            self.measured_with = "sgd"
            rank_zero_warn(
                "TaskAffinity: the checkpoint holds no optimizer state (an imported official one?), and a "
                "fresh optimizer's step (Adam: about lr·sign(g)) says nothing of the model; the lookahead is "
                "θ − η·g (update: sgd) instead, recorded as update/sgd in records/affinity.csv"
            )
        return optimizer

    def optimizers(self, trainer: L.Trainer) -> list[torch.optim.Optimizer]:
        """fit's optimizers, or the configured one in a fresh state when analysing a loaded model."""
        return trainer.optimizers or self.fresh

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        optimized = {id(p) for opt in self.optimizers(trainer) for g in opt.param_groups for p in g["params"]}
        params = dict(pl_module.net.named_parameters())
        missing = [n for n in self.param_names if id(params[n]) not in optimized]
        if missing and (self.update == "optimizer" or self.lr is None):
            raise DTRLabError(
                f"TaskAffinity: parameter {missing[0]!r} is not trained by the configured optimizer; "
                "narrow TaskAffinity.params, or use update: sgd with an explicit lr"
            )
        super().on_fit_start(trainer, pl_module)

    def optimizer(self, trainer: L.Trainer, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        """The optimizer that trains the selected parameters."""
        return next(
            o
            for o in self.optimizers(trainer)
            if any(p is params[0] for g in o.param_groups for p in g["params"])
        )

    def lookahead(
        self, trainer: L.Trainer, params: list[torch.Tensor], grad: torch.Tensor
    ) -> list[torch.Tensor]:
        """θ − η·u_i for the selected parameters, from interval i's flat gradient (P,)."""
        grads = unflatten(grad, params)
        if self.measured_with == "optimizer":
            return optimizer_lookahead(self.optimizer(trainer, params), params, grads)
        lr = self.step_size(trainer, params)
        return [p.detach() - lr * g for p, g in zip(params, grads, strict=True)]

    def step_size(self, trainer: L.Trainer, params: list[torch.Tensor]) -> float:
        """η: the sgd lookahead's lr (default the optimizer's), or the optimizer's own lr."""
        if self.measured_with == "sgd" and self.lr is not None:
            return self.lr
        return self.optimizer(trainer, params).param_groups[0]["lr"]

    @torch.no_grad()
    def interval_losses(
        self, pl_module: L.LightningModule, probe: Probe, overrides: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """L_j for every interval j, (K,), in one forward over the probe, with some parameters substituted."""
        net = pl_module.net
        if overrides:
            net = lambda x, t, y: functional_call(pl_module.net, overrides, (x, t, y))  # noqa: E731
        losses = pl_module.per_sample_loss(probe.x0, probe.t, probe.noise, probe.y, net=net)  # (K·n,)
        return losses.view(probe.num_intervals, -1).mean(dim=1)  # (K,)

    def measure(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        probe: Probe,
        params: list[torch.Tensor],
        step: int,
    ) -> None:
        grads, _ = self.probe_gradients(pl_module, probe, params, step)  # (K, P)
        # the baseline goes through the same batched forward as the lookaheads, so a zero step gives Z = 0
        before = self.interval_losses(pl_module, probe)  # (K,)
        rows = []
        for i in range(probe.num_intervals):
            moved = dict(zip(self.param_names, self.lookahead(trainer, params, grads[i]), strict=True))
            after = self.interval_losses(pl_module, probe, moved)  # (K,)
            rows.append(1 - after / before)
        tag = torch.stack(rows).cpu()  # (K, K): row i = source interval, column j = target

        k = tag.shape[0]
        self.log_scalars(
            trainer, {f"affinity/i{i}_j{j}": tag[i, j].item() for i in range(k) for j in range(k)}, step
        )
        # Z spans decades (often ≪ 1): its fixed symmetric log scale (dtr_lab.plots.colour_scale)
        self.log_heatmaps(
            trainer, "affinity/tag", {"Z(i→j)": tag}, step, metric="tag", xlabel="target j", ylabel="source i"
        )
        write_matrix(self.writer, step, "tag", tag)
        if self.writer is not None and self.measured_with != self.update:  # not the config's update: say so
            self.writer.scalar(step, "update/sgd", self.step_size(trainer, params))
