"""benchmarks/memory_plan.py: the memory and FLOP plan of a training step, from a fake-tensor trace, checked
on a tiny DiT against counts worked by hand, and on DiT-B/2 against DiT's published forward Gflops."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from dtr_lab.models import DiT
from dtr_lab.models.dit import parse_size
from dtr_lab.routing import DTRRouting

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_plan.py"
sys.path.insert(0, str(PATH.parent))  # its folder's shared library (timing.py), as when it runs as a script
spec = importlib.util.spec_from_file_location("memory_plan", PATH)
memory_plan = importlib.util.module_from_spec(spec)
sys.modules["memory_plan"] = memory_plan  # its dataclass looks its module up by name
spec.loader.exec_module(memory_plan)


def forward_macs(size: str, image_size: int, channels: int, learn_sigma: bool) -> int:
    """Multiply-adds of one image's forward pass, by hand: every matmul and convolution of DiT."""
    dims, p = parse_size(size)
    D, L = dims.hidden_size, (image_size // p) ** 2
    out = 2 * channels if learn_sigma else channels
    embed = L * channels * p * p * D + 256 * D + D * D  # patches; the timestep MLP (256 frequencies)
    # per block: adaLN, qkv, QKᵀ and AV, the projection, the 4×-wide MLP
    block = 6 * D * D + L * D * 3 * D + 2 * L * L * D + L * D * D + 2 * L * D * 4 * D
    final = 2 * D * D + L * D * p * p * out
    return embed + dims.depth * block + final


def test_the_plan_of_a_tiny_dit_matches_counts_by_hand():
    size, batch, image, channels, classes = "DiT-T/2", 4, 8, 4, 10
    plan = memory_plan.plan(size, "dtr", batch, True, image, channels, classes)
    net = DiT(image, channels, classes, 1000, DTRRouting(), size=size, learn_sigma=True)
    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers())
    assert plan.parameters == params
    assert plan.optimizer == 8 * params  # AdamW's two fp32 moments
    assert plan.weights_and_grads == 8 * params + 4 * buffers  # fp32 weights and gradients, and the buffers
    assert plan.ema == 4 * (params + buffers) + 8  # the fp32 copy, its buffers, and n_averaged (int64)
    assert plan.forward_flops_per_image == 2 * forward_macs(size, image, channels, learn_sigma=True)
    # the activations grow with the batch; the largest batch is the last whose total fits the budget
    assert plan.activations > plan.activations_per_image * batch / 2 > 0
    budget = plan.total + 10.5 * plan.activations_per_image
    assert plan.largest_batch(budget) == batch + 10


def test_the_configs_compose_base_then_size():
    config = memory_plan.compose(memory_plan.CONFIGS / "base.yaml", memory_plan.CONFIGS / "dit_l2.yaml")
    assert config["model"]["net"]["init_args"] == {"size": "DiT-L/2", "learn_sigma": True}
    assert config["data"]["init_args"]["batch_size"] == 32 and config["model"]["ema_decay"] == 0.9999


@pytest.mark.parametrize("size", ["DiT-B/2", pytest.param("DiT-XL/2", marks=pytest.mark.slow)])
def test_counted_flops_agree_with_dits_published_gflops(size):
    """DiT's Table 4 counts one FLOP per multiply-add (fvcore), torch's counter two."""
    plan = memory_plan.plan(size, "unrouted", 1)
    macs = plan.forward_flops_per_image / 2
    assert macs == forward_macs(size, 32, 4, learn_sigma=True)
    assert macs / 1e9 == pytest.approx(memory_plan.PUBLISHED_GMACS[size], rel=0.05)
