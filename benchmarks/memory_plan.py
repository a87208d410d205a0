"""Memory and FLOP plan of the paper-scale configs, without a GPU: what one training step holds per device.

For each experiments/imagenet256 size config (composed on base.yaml) at its per-device batch, the network
is built on fake tensors (torch._subclasses.FakeTensorMode: shapes and dtypes, no storage, no arithmetic)
and one training loss is traced as `fit` runs it, under bf16 autocast:

- weights + gradients: fp32 (Lightning's bf16-mixed keeps fp32 master weights), 8 bytes a parameter, and
  the network's buffers (the position embedding, routing tables: R-TR holds one per block);
- AdamW: two fp32 moments, 8 bytes a parameter; EMA: an fp32 copy of the weights and buffers;
- activations: the bytes autograd saves for backward (each storage once; the bf16 copies of the weights
  that autocast makes are counted here), traced at the batch B and at 2B, so a + b·B is known and the
  largest batch that fits a budget follows. The trace runs CPU autocast, which casts the same matmuls to
  bf16 as CUDA's; attention saves its output and log-sum-exp, as a fused (flash) kernel does.
  Not counted: the allocator's fragmentation, the CUDA context, the data loader, DDP's gradient buckets
  (another fp32 copy of the gradients under DDP) and the temporaries of backward.
- model FLOPs per image: torch.utils.flop_counter (two FLOPs a multiply-add) on the forward pass, attention
  as its matmuls (the math kernel), compared with DiT's published forward Gflops at 256² (Peebles & Xie,
  Table 4; fvcore counts one per multiply-add, so ours are halved to compare).

    python benchmarks/memory_plan.py [--budget-gb 80] [--routings unrouted dtr rtr]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from timing import add_tiny
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.routing import DTRRouting, NoRouting, RandomRouting

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "imagenet256"
LATENT_SIZE, LATENT_CHANNELS, NUM_CLASSES = 32, 4, 1000  # ImageNet 256² as SD-VAE latents
# DiT's forward Gflops at 256² (Peebles & Xie 2023, Table 4), one per multiply-add (fvcore)
PUBLISHED_GMACS = {"DiT-B/2": 23.0, "DiT-L/2": 80.7, "DiT-XL/2": 118.6}
# Switch-DiT is left out: its experts gather the samples that chose them (a data-dependent shape that fake
# tensors cannot trace on the CPU); on a GPU they run dense, E/k of the experts' FLOPs
ROUTINGS = {"unrouted": NoRouting, "dtr": DTRRouting, "rtr": RandomRouting}
FP32 = 4


@dataclass
class Plan:
    """What one device holds in a training step of one config, in bytes, and its model FLOPs."""

    size: str
    routing: str
    batch: int
    parameters: int  # count
    weights_and_grads: int  # and buffers
    optimizer: int
    ema: int
    activations: int  # at the batch
    activations_per_image: float  # b of a + b·B
    forward_flops_per_image: float  # torch's count, two per multiply-add

    @property
    def total(self) -> int:
        return self.weights_and_grads + self.optimizer + self.ema + self.activations

    def largest_batch(self, budget: float) -> int:
        """The largest per-device batch whose total fits the budget (bytes)."""
        fixed = self.total - self.activations_per_image * self.batch  # a, and the weights' states
        return max(0, math.floor((budget - fixed) / self.activations_per_image))


def compose(*files: Path) -> dict:
    """Later YAML files override earlier ones key by key, as LightningCLI composes --config files."""

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    config: dict = {}
    for f in files:
        config = merge(config, yaml.safe_load(f.read_text()))
    return config


def fake_module(size: str, routing: str, learn_sigma: bool, image_size: int, channels: int, classes: int,
                mode: FakeTensorMode) -> DiffusionModule:
    """The config's DiffusionModule with its network (and EMA copy) on fake tensors of one mode."""

    def net(*args, **kwargs):
        with mode:
            return DiT(*args, size=size, learn_sigma=learn_sigma, **kwargs)

    return DiffusionModule(
        net=net, routing=ROUTINGS[routing](), image_size=image_size, in_channels=channels, num_classes=classes
    )


def saved_bytes(module: DiffusionModule, batch: int, image_size: int, channels: int, classes: int,
                mode: FakeTensorMode) -> int:
    """Bytes autograd saves for backward in one bf16-autocast training loss at this batch, each storage once
    (the weights themselves excluded: they are counted as weights)."""
    own = {p.untyped_storage()._cdata for p in module.net.parameters()}
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return x

    with mode:
        x0, noise, t, y = example(batch, image_size, channels, classes)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                module.training_loss(x0, t, noise, y)
    return sum(saved.values())


def example(batch: int, image_size: int, channels: int, classes: int) -> tuple[torch.Tensor, ...]:
    x0 = torch.randn(batch, channels, image_size, image_size)
    noise = torch.randn(batch, channels, image_size, image_size)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, classes, (batch,)) if classes else None
    return x0, noise, t, y


def forward_flops(module: DiffusionModule, image_size: int, channels: int, classes: int,
                  mode: FakeTensorMode) -> float:
    """Model FLOPs of one image's forward pass (two per multiply-add), attention counted as its matmuls."""
    counter = FlopCounterMode(display=False)
    with mode, counter, sdpa_kernel(SDPBackend.MATH):
        x0, noise, t, y = example(1, image_size, channels, classes)
        module.net(x0, t, y)
    return float(counter.get_total_flops())


def plan(size: str, routing: str, batch: int, learn_sigma: bool = True, image_size: int = LATENT_SIZE,
         channels: int = LATENT_CHANNELS, classes: int = NUM_CLASSES) -> Plan:
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # the schedule's tables stay real
    module = fake_module(size, routing, learn_sigma, image_size, channels, classes, mode)
    params = sum(p.numel() for p in module.net.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.net.buffers())
    ema = sum(t.numel() * t.element_size() for t in (*module.ema.module.parameters(), *module.ema.buffers()))
    at_batch = saved_bytes(module, batch, image_size, channels, classes, mode)
    at_double = saved_bytes(module, 2 * batch, image_size, channels, classes, mode)
    return Plan(
        size=size,
        routing=routing,
        batch=batch,
        parameters=params,
        weights_and_grads=2 * FP32 * params + buffers,
        optimizer=2 * FP32 * params,
        ema=ema,
        activations=at_batch,
        activations_per_image=(at_double - at_batch) / batch,
        forward_flops_per_image=forward_flops(module, image_size, channels, classes, mode),
    )


def table(plans: list[Plan], budget: float) -> str:
    gb = 1e9
    columns = [("config", "<9"), ("routing", "<10"), ("B/dev", ">6"), ("params", ">9"), ("w+grad", ">8"),
               ("AdamW", ">7"), ("EMA", ">6"), ("activ.", ">8"), ("total", ">8"), ("fwd GMAC/img", ">14"),
               ("DiT paper", ">11"), ("diff", ">7"), ("train GFLOP/img", ">17"),
               (f"max B ({budget / gb:.0f} GB)", ">16")]
    head = "".join(f"{name:{align}}" for name, align in columns)
    lines = [head, "-" * len(head)]
    for p in plans:
        macs = p.forward_flops_per_image / 2e9
        published = PUBLISHED_GMACS.get(p.size)
        cells = [p.size, p.routing, p.batch, f"{p.parameters / 1e6:.1f}M", f"{p.weights_and_grads / gb:.2f}",
                 f"{p.optimizer / gb:.2f}", f"{p.ema / gb:.2f}", f"{p.activations / gb:.2f}",
                 f"{p.total / gb:.2f}", f"{macs:.2f}", "n/a" if published is None else f"{published:.1f}",
                 "n/a" if published is None else f"{100 * (macs / published - 1):+.1f}%",
                 f"{3 * p.forward_flops_per_image / 1e9:.1f}", p.largest_batch(budget)]
        lines.append("".join(f"{cell:{align}}" for cell, (_, align) in zip(cells, columns, strict=True)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gb", type=float, default=80.0, help="device memory, 10⁹ bytes (default 80)")
    parser.add_argument("--routings", nargs="+", default=list(ROUTINGS), choices=list(ROUTINGS))
    add_tiny(parser)
    args = parser.parse_args()
    if args.tiny:  # one small plan: the trace and the table, not the configs' minutes of tracing
        print(table([plan("DiT-S/2", "unrouted", 2)], args.budget_gb * 1e9))
        return
    plans = []
    for file in sorted(CONFIGS.glob("dit_*.yaml")):
        config = compose(CONFIGS / "base.yaml", file)
        net = config["model"]["net"]["init_args"]
        batch = config["data"]["init_args"]["batch_size"]
        for routing in args.routings:
            plans.append(plan(net["size"], routing, batch, net.get("learn_sigma", False)))
            print(f"traced {file.name} {routing}", flush=True)
    # DiT-XL/2 has no config here: its forward FLOPs only, against the paper's third published figure
    xl = plan("DiT-XL/2", "unrouted", 1)
    print(f"\nper device, {LATENT_CHANNELS}x{LATENT_SIZE}x{LATENT_SIZE} latents, bf16-mixed, AdamW, EMA; "
          "GB = 1e9 bytes; train GFLOP = 3 x forward; max B: activations a + b*B with the rest fixed\n")
    print(table(plans, args.budget_gb * 1e9))
    macs = xl.forward_flops_per_image / 2e9
    print(f"\nDiT-XL/2 forward: {macs:.2f} GMAC/img counted, {PUBLISHED_GMACS['DiT-XL/2']} published "
          f"({100 * (macs / PUBLISHED_GMACS['DiT-XL/2'] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
