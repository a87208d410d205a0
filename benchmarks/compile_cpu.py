"""Does `model.compile` pay on the CPU? The digits study's training step, eager vs torch.compile, one thread.

The step is what `fit` does with experiments/digits (less data loading and Lightning): DiT-T/2 on 8×8
digits, a batch of 64, the ε-MSE, backward, AdamW and the EMA update. Both modules live in one process and
are timed in alternating rounds (the order flipped each round); the medians are reported, and the
compiled module's warm-up (its first steps, compiling forward and backward) against the eager first step.

    OMP_NUM_THREADS=1 python benchmarks/compile_cpu.py [--batch-size 64] [--rounds 7] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from timing import add_tiny

from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import DTRRouting


def make_module(compile: bool) -> DiffusionModule:
    torch.manual_seed(0)
    return DiffusionModule(
        net=partial(DiT, size="DiT-T/2"),
        routing=DTRRouting(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.0),
        compile=compile,
        ema_decay=0.999,
    )


class Variant:
    """One module and its optimizer, stepped on a fixed batch of digits-shaped images."""

    def __init__(self, name: str, module: DiffusionModule, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.name, self.module, self.batch = name, module, batch
        self.optimizer = module.configure_optimizers()
        self.step_seconds: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        x0, y = self.batch
        t, noise, y = self.module.draw(x0, y)
        self.module.training_loss(x0, t, noise, y)[0].mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.ema.update_parameters(self.module.net)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds; each times both variants")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--study-steps", type=int, default=1500, help="steps of the run to weigh it against")
    add_tiny(parser)
    args = parser.parse_args()
    if args.tiny:  # the code path only: compiling alone takes minutes on the CPU, so both variants run eager
        args.batch_size, args.rounds, args.steps = 4, 1, 1
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    batch = (torch.rand(args.batch_size, 1, 8, 8, generator=gen) * 2 - 1,
             torch.randint(0, 10, (args.batch_size,), generator=gen))
    eager = Variant("eager", make_module(False), batch)
    compiled = Variant("compiled", make_module(not args.tiny), batch)
    first = {v.name: [v.step() for _ in range(3)] for v in (eager, compiled)}  # compiling: forward, backward
    for r in range(args.rounds):
        for variant in (eager, compiled) if r % 2 == 0 else (compiled, eager):
            variant.step_seconds.append(statistics.median(variant.step() for _ in range(args.steps)))
    median = {v.name: statistics.median(v.step_seconds) for v in (eager, compiled)}
    warmup = sum(first["compiled"]) - sum(first["eager"])
    saved = median["eager"] - median["compiled"]
    print(f"DiT-T/2 DTR, digits 8x8, batch {args.batch_size}, 1 thread, torch {torch.__version__}; "
          f"{args.rounds} alternated rounds x {args.steps} steps, medians")
    for v in (eager, compiled):
        spread = f"{1e3 * min(v.step_seconds):.1f}-{1e3 * max(v.step_seconds):.1f}"
        print(f"{v.name:<9} step {1e3 * median[v.name]:7.1f} ms  (round medians {spread} ms); "
              f"first 3 steps {sum(first[v.name]):.1f} s")
    print(f"compiled / eager step time: {median['compiled'] / median['eager']:.3f}")
    print(f"compile warm-up: {warmup:.1f} s more than eager's first 3 steps")
    if saved > 0:
        print(f"pays after {warmup / saved:.0f} steps; over {args.study_steps} steps it saves "
              f"{args.study_steps * saved - warmup:.0f} s of {args.study_steps * median['eager']:.0f} s")
    else:
        print(f"never pays: each compiled step is {-1e3 * saved:.1f} ms slower")


if __name__ == "__main__":
    main()
