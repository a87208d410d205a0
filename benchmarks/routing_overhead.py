"""Routing overhead and Lightning overhead, measured side by side in one process.

1. Training-step time of a DTR-routed vs an unrouted DiT-S/2 on 16×16 inputs at batch 32
   (alternating the two, several rounds, medians). Target ratio ≤ 1.03: routing is one
   multiply per block.
2. A Lightning `fit` step vs a bare PyTorch loop over the same DiffusionModule and data.
   Target ratio ≤ 1.05.

    python benchmarks/routing_overhead.py [--rounds 5] [--steps 8] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import NamedTuple

import torch
from timing import add_tiny, dit_module, lightning_step_times
from torch.utils.data import DataLoader, TensorDataset

from dtr_lab.module import DiffusionModule
from dtr_lab.routing import DTRRouting, NoRouting


class Shape(NamedTuple):
    """The benchmarked network and its batch."""

    size: str = "DiT-S/2"
    image: int = 16
    channels: int = 4
    classes: int = 10
    batch: int = 32


TINY = Shape("DiT-T/2", 8, 1, 10, 4)


def make_module(routing, shape: Shape) -> DiffusionModule:
    return dit_module(routing, shape.size, shape.image, shape.channels, shape.classes)


def loader(num_batches: int, shape: Shape) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    n = num_batches * shape.batch
    x = torch.rand(n, shape.channels, shape.image, shape.image, generator=gen) * 2 - 1
    y = torch.randint(0, shape.classes, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=shape.batch, shuffle=False, drop_last=True)


def bare_loop_step_times(module: DiffusionModule, steps: int, shape: Shape) -> list[float]:
    """Plain PyTorch: forward, backward, optimizer step, EMA update; times between batch starts."""
    opt = module.configure_optimizers()
    stamps = []
    for x0, y in loader(steps + 1, shape):
        stamps.append(time.perf_counter())
        t, noise, y = module.draw(x0, y)
        loss = module.training_loss(x0, t, noise, y)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.ema.update_parameters(module.net)
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]  # drop the first (warm-up) step


def lightning_times(module: DiffusionModule, steps: int, shape: Shape) -> list[float]:
    return lightning_step_times(module, loader(steps + 1, shape), steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round")
    add_tiny(parser)
    args = parser.parse_args()
    shape = TINY if args.tiny else Shape()
    if args.tiny:
        args.rounds, args.steps = 1, 2
    torch.manual_seed(0)
    routed, unrouted = make_module(DTRRouting(4.0, 0.8), shape), make_module(NoRouting(), shape)
    times: dict[str, list[float]] = {"dtr": [], "vanilla": [], "lightning": [], "bare": []}
    for r in range(args.rounds):
        # alternate the order each round so drift on a shared machine hits both sides alike
        pairs = [("dtr", routed), ("vanilla", unrouted)]
        for name, module in pairs if r % 2 == 0 else pairs[::-1]:
            times[name] += bare_loop_step_times(module, args.steps, shape)
        for name in ["lightning", "bare"] if r % 2 == 0 else ["bare", "lightning"]:
            fn = lightning_times if name == "lightning" else bare_loop_step_times
            times[name] += fn(unrouted, args.steps, shape)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{shape.size}, {shape.image}x{shape.image}x{shape.channels}, batch {shape.batch}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps per variant"
    )
    print(f"median step: DTR {med['dtr'] * 1e3:.1f} ms, vanilla {med['vanilla'] * 1e3:.1f} ms")
    print(f"routing overhead ratio (DTR / vanilla):      {med['dtr'] / med['vanilla']:.3f}  (target <= 1.03)")
    print(f"median step: Lightning fit {med['lightning'] * 1e3:.1f} ms, bare loop {med['bare'] * 1e3:.1f} ms")
    print(
        f"Lightning overhead ratio (fit / bare loop):  {med['lightning'] / med['bare']:.3f}  (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
