"""What Switch routing costs: training-step and sampling time of the digits DiT (DiT-T/2, 8×8, batch
128, the quickstart's) with Switch routing vs unrouted, DTR beside them, measured side by side.

Four training variants, alternated every round so drift on a shared machine hits all alike, medians:
unrouted, DTR, Switch's experts alone (w_JSD = 0: gates + experts in every block) and full Switch (the
experts plus the diffusion prior: the gates over all T, a bipartite matching, the JSD). Target: Switch /
unrouted ≤ 1.15. Sampling (the EMA network's forward, no gradient) is timed the same way.

    python benchmarks/switch_overhead.py [--rounds 5] [--steps 10] [--plot docs/routing/overhead.png] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from timing import add_tiny, dit_module

from dtr_lab.module import DiffusionModule
from dtr_lab.routing import DTRRouting, NoRouting, SwitchRouting

IMAGE, CHANNELS, CLASSES, BATCH, TINY_BATCH = 8, 1, 10, 128, 4


def make_module(routing) -> DiffusionModule:
    return dit_module(routing, "DiT-T/2", IMAGE, CHANNELS, CLASSES)


def step_times(module: DiffusionModule, steps: int, batch: int, prior: bool) -> list[float]:
    """Forward, the routing's prior (if any and asked for), backward, optimizer step, EMA update."""
    opt = module.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        x0 = torch.rand(batch, CHANNELS, IMAGE, IMAGE, generator=gen) * 2 - 1
        y = torch.randint(0, CLASSES, (batch,), generator=gen)
        start = time.perf_counter()
        t, noise, y = module.draw(x0, y)
        loss = module.training_loss(x0, t, noise, y)[0].mean()
        if prior:
            term = module.net.routing_loss(t, torch.Generator().manual_seed(step))
            loss = loss + term.weight * term.value
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.ema.update_parameters(module.net)
        times.append(time.perf_counter() - start)
    return times[1:]  # the first is warm-up


@torch.no_grad()
def sample_times(module: DiffusionModule, steps: int, batch: int) -> list[float]:
    """One denoising step of the EMA network on a batch (what sampling repeats T' times)."""
    gen = torch.Generator().manual_seed(1)
    times = []
    for _ in range(steps + 1):
        x = torch.randn(batch, CHANNELS, IMAGE, IMAGE, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        y = torch.randint(0, CLASSES, (batch,), generator=gen)
        start = time.perf_counter()
        module.ema.module(x, t, y)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--plot", type=Path, help="also draw the step times (median, quartiles) to this PNG")
    add_tiny(parser)
    args = parser.parse_args()
    batch = TINY_BATCH if args.tiny else BATCH
    if args.tiny:
        args.rounds, args.steps = 1, 2
    modules = {
        "vanilla": make_module(NoRouting()),
        "dtr": make_module(DTRRouting(4.0, 0.8)),
        "experts": make_module(SwitchRouting()),
        "switch": make_module(SwitchRouting()),
    }
    train: dict[str, list[float]] = {k: [] for k in modules}
    sample: dict[str, list[float]] = {k: [] for k in ("vanilla", "dtr", "switch")}
    for r in range(args.rounds):
        order = list(modules) if r % 2 == 0 else list(modules)[::-1]
        for name in order:
            train[name] += step_times(modules[name], args.steps, batch, prior=name == "switch")
        for name in sample if r % 2 == 0 else list(sample)[::-1]:
            sample[name] += sample_times(modules[name], args.steps, batch)
    med = {k: statistics.median(v) for k, v in train.items()}
    smp = {k: statistics.median(v) for k, v in sample.items()}
    parameters = {k: sum(p.numel() for p in m.net.parameters()) for k, m in modules.items()}
    print(
        f"DiT-T/2, {IMAGE}x{IMAGE}x{CHANNELS}, batch {batch}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps per variant"
    )
    print(
        f"parameters: unrouted {parameters['vanilla']:,}, Switch {parameters['switch']:,} "
        f"(+{parameters['switch'] / parameters['vanilla'] - 1:.1%}: E = 3 experts of 128 x 128 a block)"
    )
    print("median training step (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in med.items()))
    print(f"DTR / unrouted:                 {med['dtr'] / med['vanilla']:.3f}")
    print(f"Switch experts only / unrouted: {med['experts'] / med['vanilla']:.3f}")
    print(f"Switch / unrouted:              {med['switch'] / med['vanilla']:.3f}  (target <= 1.15)")
    print("median sampling step (ms): " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in smp.items()))
    print(f"sampling, Switch / unrouted:    {smp['switch'] / smp['vanilla']:.3f}")
    if args.plot:
        plot(train, sample, args.plot)


def plot(train: dict[str, list[float]], sample: dict[str, list[float]], path: Path) -> None:
    """Step time of each variant relative to the unrouted median: training and sampling side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = {"vanilla": "unrouted", "dtr": "DTR", "experts": "Switch,\nexperts only", "switch": "Switch"}
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True, constrained_layout=True)
    top = 1.5  # the shared y axis: room for every bar's label (1.31× touched the frame at a fixed 1.5)
    for ax, (title, times) in zip(axes, (("training step", train), ("sampling step", sample)), strict=True):
        base = statistics.median(times["vanilla"])
        for x, (name, values) in enumerate(times.items()):
            q1, med, q3 = np.percentile(np.array(values) / base, [25, 50, 75])
            ax.bar(x, med, color="#0173b2" if name != "vanilla" else "#949494")
            ax.errorbar(x, med, yerr=[[med - q1], [q3 - med]], color="black", capsize=3)
            ax.text(x, q3 + 0.02, f"{med:.2f}×", ha="center", fontsize=8)
            top = max(top, q3 + 0.2)
        ax.axhline(1.15, color="#d55e00", linestyle="--", linewidth=1, label="target 1.15×")
        ax.set_xticks(range(len(times)), [names[n] for n in times], fontsize=8)
        ax.set_title(f"{title} (÷ unrouted median)", fontsize=10)
    axes[0].set_ylim(0, top)
    axes[0].set_ylabel("relative time (median, quartiles)")
    axes[0].legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
