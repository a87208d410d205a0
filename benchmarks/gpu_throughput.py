"""Training throughput and model FLOP utilisation of DiT-B/2 on one GPU: vanilla vs DTR, eager vs compiled.

A step is what `fit` does with experiments/imagenet256 (less data loading): bf16 autocast forward with
the learned-σ loss on 32×32×4 latents (ImageNet 256 in SD-VAE space), backward, fused AdamW, EMA update.
The four variants are timed in alternating order over several rounds and the medians reported.
Model FLOPs per image are counted once with torch.utils.flop_counter on a training step (matmuls,
convolutions and attention, forward and backward); routing adds only elementwise work, so all variants
are credited the same model FLOPs. MFU = images/s × FLOPs per image / the GPU's dense bf16 peak.
Targets (issue 7, H100): DTR within 3 % of vanilla; compiled MFU ≥ 35 %. About 2–3 minutes, mostly
compiling.

    python benchmarks/gpu_throughput.py [--batch-size 256] [--rounds 5] [--steps 10] [--peak-tflops 989]
    python benchmarks/gpu_throughput.py --tiny   # a CPU smoke run of the script (the test suite's)
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from timing import add_tiny
from torch.utils.flop_counter import FlopCounterMode

from dtr_lab.models import DiT
from dtr_lab.models.dit import parse_size
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import DTRRouting, NoRouting

LATENT_SIZE, LATENT_CHANNELS, NUM_CLASSES = 32, 4, 1000
# dense bf16 tensor-core peaks in TFLOP/s, first match of the device name wins (vendor datasheets)
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0)]


def peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def make_module(size: str, routing, compile: bool, device: torch.device) -> DiffusionModule:
    torch.manual_seed(0)
    module = DiffusionModule(
        net=partial(DiT, size=size, learn_sigma=True),
        routing=routing,
        optimizer=partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.0, fused=True),
        compile=compile,
        image_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        num_classes=NUM_CLASSES,
    )
    return module.to(device)


class Variant:
    """One DiffusionModule and its optimizer, stepped on a fixed batch of random latents."""

    def __init__(self, name: str, module: DiffusionModule, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.name, self.module, self.batch = name, module, batch
        self.optimizer = module.configure_optimizers()
        self.images_per_s: list[float] = []

    def step(self) -> None:
        x0, y = self.batch
        t, noise, y = self.module.draw(x0, y)
        with torch.autocast(x0.device.type, dtype=torch.bfloat16):
            loss = self.module.training_loss(x0, t, noise, y)[0].mean()
        loss.backward()  # outside autocast, as Lightning's bf16-mixed does
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.ema.update_parameters(self.module.net)

    def time(self, steps: int) -> None:
        synchronize(self.batch[0].device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.batch[0].device)
        self.images_per_s.append(steps * len(self.batch[0]) / (time.perf_counter() - start))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: time only finished work


def flops_per_image(size: str, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Model FLOPs of one training step (forward + backward) per image, counted on an eager copy."""
    module = make_module(size, NoRouting(), False, batch[0].device)
    x0, y = batch
    t, noise, y = module.draw(x0, y)
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast(x0.device.type, dtype=torch.bfloat16):
        module.training_loss(x0, t, noise, y)[0].mean().backward()
    return counter.get_total_flops() / len(x0)


def analytic_flops_per_image(size: str) -> float:
    """3 × forward FLOPs of the blocks' matmuls and attention (2 FLOPs a multiply-add), as a check."""
    dims, patch = parse_size(size)
    L, D = (LATENT_SIZE // patch) ** 2, dims.hidden_size
    # per block: qkv + projection + 4x MLP = 12·D² multiply-adds a token; QKᵀ and AV = 2·L·D a token
    forward = dims.depth * (2 * 12 * L * D * D + 2 * 2 * L * L * D)
    return 3 * forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DiT-B/2", help="DiT size (default DiT-B/2)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per step (default 256)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times every variant")
    parser.add_argument("--steps", type=int, default=10, help="training steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compilation)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, overriding the built-in table")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only smoke-tests the script")
    add_tiny(parser)
    args = parser.parse_args()
    modes = {"eager": False, "compiled": True}
    if args.tiny:  # on the CPU, eager only: compiling would take minutes
        args.device, args.model, args.batch_size = "cpu", "DiT-T/2", 2
        args.rounds, args.steps, args.warmup = 1, 1, 1
        modes = {"eager": False}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU visible; nothing to measure (run it on a GPU machine)")
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
    torch.backends.cuda.matmul.allow_tf32 = True  # the few fp32 matmuls outside autocast
    torch.backends.cudnn.allow_tf32 = True

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch_size, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=gen).to(device)
    flops = flops_per_image(args.model, (x0, y))

    variants = []
    for mode, compiled in modes.items():
        for routing_name, routing in (("vanilla", NoRouting()), ("dtr", DTRRouting(alpha=4.0, beta=0.8))):
            label = f"{routing_name} {mode}"
            variant = Variant(label, make_module(args.model, routing, compiled, device), (x0, y))
            start = time.perf_counter()
            for _ in range(args.warmup):
                variant.step()
            synchronize(device)
            print(f"warm-up {label}: {time.perf_counter() - start:.1f} s", flush=True)
            variants.append(variant)
    for r in range(args.rounds):
        # alternate the order each round so clock and thermal drift hit every variant alike
        for variant in variants if r % 2 == 0 else variants[::-1]:
            variant.time(args.steps)

    peak_text = "unknown (pass --peak-tflops)" if peak is None else f"{peak:.0f} TFLOP/s bf16 dense"
    print(f"\n{args.model} training, {LATENT_CHANNELS}x{LATENT_SIZE}x{LATENT_SIZE} latents, learned sigma, "
          f"batch {args.batch_size}, bf16 autocast, fused AdamW + EMA")
    print(f"device {name}, peak {peak_text}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps per variant")
    print(f"model FLOPs per image (forward + backward): {flops / 1e9:.1f} GFLOP counted, "
          f"{analytic_flops_per_image(args.model) / 1e9:.1f} GFLOP in the blocks by hand")
    print(f"{'variant':<18}{'images/s':>10}{'range':>20}{'step ms':>10}{'MFU':>8}")
    median = {}
    for variant in variants:
        med = median[variant.name] = statistics.median(variant.images_per_s)
        lo, hi = min(variant.images_per_s), max(variant.images_per_s)
        mfu = f"{100 * med * flops / (peak * 1e12):.1f}%" if peak else "n/a"
        print(f"{variant.name:<18}{med:>10.1f}{f'{lo:.1f}-{hi:.1f}':>20}"
              f"{1e3 * args.batch_size / med:>10.1f}{mfu:>8}")
    for mode in modes:
        ratio = median[f"dtr {mode}"] / median[f"vanilla {mode}"]
        print(f"DTR / vanilla throughput, {mode}: {ratio:.3f}  (target >= 0.97)")
    if peak and "compiled" in modes:
        best = max(median[f"{r} compiled"] for r in ("vanilla", "dtr"))
        print(f"best compiled MFU: {100 * best * flops / (peak * 1e12):.1f}%  (target >= 35% on an H100)")


if __name__ == "__main__":
    main()
