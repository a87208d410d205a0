"""Step time of PCGrad and Nash-MTL over K = 5 timestep intervals relative to plain training.

The digits DiT (DiT-T/2, batch 130), each variant trained through Lightning in the same
process, alternating the variants over several rounds; medians of per-step times. Target:
PCGrad ≤ 2.5× a plain step. Nash-MTL solves its weights every `update_every` steps and
between solves takes one ordinary backward, so its amortised (mean) cost is reported too.

    python benchmarks/mtl_overhead.py [--rounds 3] [--steps 25] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import add_tiny, lightning_step_times
from torch.utils.data import DataLoader

from dtr_lab.data import DigitsDataModule
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import Intervals, NashMTL, PCGrad
from dtr_lab.routing import DTRRouting

K, BATCH, TINY_BATCH = 5, 130, 10  # stratified: a batch is a multiple of K


def make_module(mtl) -> DiffusionModule:
    def net(*args):
        return DiT(*args, size="DiT-T/2")

    torch.manual_seed(0)
    return DiffusionModule(net=net, routing=DTRRouting(), mtl=mtl, ema_decay=0.999)


def digits_loader(batch: int) -> DataLoader:
    data = DigitsDataModule(batch_size=batch)
    data.setup("fit")
    return data.train_dataloader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25, help="timed steps per variant per round")
    parser.add_argument("--update-every", type=int, default=25, help="Nash-MTL solve cadence")
    add_tiny(parser)
    args = parser.parse_args()
    batch = TINY_BATCH if args.tiny else BATCH
    if args.tiny:
        args.rounds, args.steps = 1, 2
    variants = {
        "plain": lambda: None,
        "pcgrad": lambda: PCGrad(Intervals(K)),
        "nash": lambda: NashMTL(Intervals(K), update_every=args.update_every),
    }
    modules = {name: make_module(make()) for name, make in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            times[name] += lightning_step_times(modules[name], digits_loader(batch), args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    print(
        f"DiT-T/2 on digits, batch {batch}, K={K}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps per variant"
    )
    print(
        f"median step: plain {med['plain'] * 1e3:.1f} ms, PCGrad {med['pcgrad'] * 1e3:.1f} ms, "
        f"Nash-MTL {med['nash'] * 1e3:.1f} ms"
    )
    print(f"PCGrad / plain (median):            {med['pcgrad'] / med['plain']:.2f}  (target <= 2.5)")
    print(f"Nash-MTL / plain (median):          {med['nash'] / med['plain']:.2f}")
    print(
        f"Nash-MTL / plain (mean, amortised): {mean['nash'] / mean['plain']:.2f}  "
        f"(weights solved every {args.update_every} steps)"
    )


if __name__ == "__main__":
    main()
