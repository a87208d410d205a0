"""Routing overhead and Lightning overhead, measured side by side in one process.

1. Training-step time of a DTR-routed vs an unrouted DiT-S/2 on 16×16 inputs at batch 32
   (alternating the two, several rounds, medians). Target ratio ≤ 1.03: routing is one
   multiply per block.
2. A Lightning `fit` step vs a bare PyTorch loop over the same DiffusionModule and data.
   Target ratio ≤ 1.05.

    python benchmarks/routing_overhead.py [--rounds 5] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timing import dit_module, lightning_step_times
from torch.utils.data import DataLoader, TensorDataset

from dtr_lab.module import DiffusionModule
from dtr_lab.routing import DTRRouting, NoRouting

IMAGE, CHANNELS, CLASSES, BATCH = 16, 4, 10, 32


def make_module(routing) -> DiffusionModule:
    return dit_module(routing, "DiT-S/2", IMAGE, CHANNELS, CLASSES)


def loader(num_batches: int) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(num_batches * BATCH, CHANNELS, IMAGE, IMAGE, generator=gen) * 2 - 1
    y = torch.randint(0, CLASSES, (num_batches * BATCH,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, drop_last=True)


def bare_loop_step_times(module: DiffusionModule, steps: int) -> list[float]:
    """Plain PyTorch: forward, backward, optimizer step, EMA update; times between batch starts."""
    opt = module.configure_optimizers()
    stamps = []
    for x0, y in loader(steps + 1):
        stamps.append(time.perf_counter())
        t, noise, y = module.draw(x0, y)
        loss = module.training_loss(x0, t, noise, y)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.ema.update_parameters(module.net)
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # drop the first (warm-up) step


def lightning_times(module: DiffusionModule, steps: int) -> list[float]:
    return lightning_step_times(module, loader(steps + 1), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    routed, unrouted = make_module(DTRRouting(4.0, 0.8)), make_module(NoRouting())
    times: dict[str, list[float]] = {"dtr": [], "vanilla": [], "lightning": [], "bare": []}
    for r in range(args.rounds):
        # alternate the order each round so drift on a shared machine hits both sides alike
        pairs = [("dtr", routed), ("vanilla", unrouted)]
        for name, module in pairs if r % 2 == 0 else pairs[::-1]:
            times[name] += bare_loop_step_times(module, args.steps)
        for name in ["lightning", "bare"] if r % 2 == 0 else ["bare", "lightning"]:
            fn = lightning_times if name == "lightning" else bare_loop_step_times
            times[name] += fn(unrouted, args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"DiT-S/2, {IMAGE}x{IMAGE}x{CHANNELS}, batch {BATCH}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps per variant"
    )
    print(f"median step: DTR {med['dtr'] * 1e3:.1f} ms, vanilla {med['vanilla'] * 1e3:.1f} ms")
    print(f"routing overhead ratio (DTR / vanilla):      {med['dtr'] / med['vanilla']:.3f}  (target <= 1.03)")
    print(f"median step: Lightning fit {med['lightning'] * 1e3:.1f} ms, bare loop {med['bare'] * 1e3:.1f} ms")
    print(
        f"Lightning overhead ratio (fit / bare loop):  {med['lightning'] / med['bare']:.3f}  (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
