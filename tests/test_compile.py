"""The hot path compiles whole and never waits for the device (issue 33).

- The training loss (forward with learned σ and label dropout, the ε-MSE and L_vb, the weighting) of every
  routing is captured by torch.compile as one graph (``fullgraph=True`` fails on any graph break), once:
  three optimizer steps at one batch shape do not recompile, and give the eager losses.
- A training step and the EMA update read no device tensor on the host (``.item()``, ``.cpu()``,
  ``bool(tensor)``, printing...): counted during a real fit whose steps are not logging steps. On a GPU each
  read waits for every kernel queued before it. (A branch on a tensor breaks a graph; a bare ``.item()``
  does not in torch 2.13, which captures it into the graph, so the count is the check for those.)

The default suite compiles with dynamo's ``eager`` backend (graph capture, guards and recompilation, which
is where graph breaks and host reads show, in seconds); the ``slow`` test runs inductor's kernels.
"""

from __future__ import annotations

import traceback
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import torch._dynamo

from dtr_lab.data import DigitsDataModule
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import Intervals, UncertaintyWeighting
from dtr_lab.optim.ema import EMA
from dtr_lab.routing import DTRRouting, NoRouting, RandomRouting, SwitchRouting

ROUTINGS = {"unrouted": NoRouting, "dtr": DTRRouting, "rtr": RandomRouting, "switch": SwitchRouting}
DTR_LAB = str(Path(__file__).resolve().parents[1] / "dtr_lab")
# Switch-DiT's diffusion prior matches gate slots to window columns with the Hungarian algorithm on the host
# (scipy's linear_sum_assignment, as the official code): one read of an S×S cost matrix a step, by design
HOST_BY_DESIGN = {"match_slots"}


def tiny_module(routing: str, **kwargs) -> DiffusionModule:
    """A tiny DiT with learned σ, seeded: every module of these tests."""
    torch.manual_seed(0)
    return DiffusionModule(
        net=partial(DiT, size="DiT-T/2", hidden_size=32, learn_sigma=True),
        routing=ROUTINGS[routing](),
        num_timesteps=100,
        sample_steps=10,
        **kwargs,
    )


def module_for(routing: str, **kwargs) -> DiffusionModule:
    """A tiny DiT as the imagenet256 configs train one: learned σ, labels dropped for guidance."""
    return tiny_module(
        routing,
        class_dropout_prob=0.5,  # dropped labels in every batch of 8
        image_size=8,
        in_channels=4,
        num_classes=10,
        **kwargs,
    )


def losses_eager_and_compiled(routing: str, backend: str, steps: int = 3) -> tuple[list, list]:
    """Per-step losses of the same training (AdamW steps) with the loss eager and compiled whole, once."""
    torch._dynamo.reset()  # a fresh cache: a recompile below is one of this routing's own steps
    gen = torch.Generator().manual_seed(1)
    x0, y = torch.randn(8, 4, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    out = []
    for compiled in (False, True):
        module = module_for(routing)
        loss_fn = module.training_loss
        if compiled:
            loss_fn = torch.compile(loss_fn, fullgraph=True, backend=backend)  # a graph break raises
        optimizer = torch.optim.AdamW(module.net.parameters(), lr=1e-3)
        losses = []
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(steps):
                t, noise, y_dropped = module.draw(x0, y)
                loss = loss_fn(x0, t, noise, y_dropped)[0].mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.detach())
        out.append(losses)
    return out[0], out[1]


@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_the_training_loss_compiles_as_one_graph_once(routing):
    eager, compiled = losses_eager_and_compiled(routing, backend="eager")
    assert len(set(float(v) for v in eager)) == 3  # the steps train: three different losses
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)  # the captured graph is the same computation, op for op


@pytest.mark.slow
@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_inductor_kernels_give_the_eager_losses(routing):
    eager, compiled = losses_eager_and_compiled(routing, backend="inductor")
    # fused kernels sum in other orders: float32 rounding, 1e-7 to 1e-6 of the loss over three steps
    torch.testing.assert_close(torch.stack(compiled), torch.stack(eager), rtol=1e-5, atol=0)


def test_a_branch_on_a_tensor_in_the_loss_breaks_the_graph(monkeypatch):
    """The check has teeth: a weighting that branches on a tensor's value fails it. (A bare ``.item()`` does
    not break a graph in torch 2.13, which captures scalars, yet still waits for the device: the host-read
    count below is what catches it.)"""
    module = module_for("dtr")
    monkeypatch.setattr(module, "weighting", lambda snr: snr.clamp(max=5.0) if bool(snr.max() > 5) else snr)
    t = torch.arange(8)
    torch._dynamo.reset()
    compiled = torch.compile(module.training_loss, fullgraph=True, backend="eager")
    with pytest.raises(torch._dynamo.exc.TorchDynamoException):
        compiled(torch.randn(8, 4, 8, 8), t, torch.randn(8, 4, 8, 8), t)


class HostReads:
    """Counts, by the dtr_lab function that made them, the reads of tensor values on the host."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__repr__", "__format__")

    def __init__(self, monkeypatch, code: tuple[str, ...]) -> None:
        self.code = code  # whose reads count: files or folders
        self.by_function: dict[str, int] = {}
        self.counting = False
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self.wrap(getattr(torch.Tensor, name)))

    def wrap(self, method):
        def counted(tensor, *args, **kwargs):
            if self.counting:
                # reads made by dtr_lab's own code (Lightning's, and torch.optim's of the CPU-held step count
                # that AdamW keeps off the device on purpose, are not the hot path's)
                caller = traceback.extract_stack(limit=2)[0]
                if caller.filename.startswith(self.code):
                    self.by_function[caller.name] = self.by_function.get(caller.name, 0) + 1
            return method(tensor, *args, **kwargs)

        return counted


class CountSteps(L.Callback):
    """Counts host reads during steps 1 … (step 0 builds the generator and warms caches up)."""

    def __init__(self, reads: HostReads) -> None:
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.reads.counting = batch_idx > 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.reads.counting = False


def host_reads_of_a_fit(
    monkeypatch, tmp_path, module: DiffusionModule, steps: int = 4, code: tuple[str, ...] = (DTR_LAB,)
) -> dict[str, int]:
    reads = HostReads(monkeypatch, code)
    trainer = L.Trainer(
        max_steps=steps,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        log_every_n_steps=1000,  # no step below is a logging step
        callbacks=[CountSteps(reads)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(module, DigitsDataModule(batch_size=10, image_size=8))
    assert module.ema.n_averaged.item() == steps  # the EMA was updated every step
    return reads.by_function


@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_a_training_step_and_the_ema_update_read_nothing_on_the_host(monkeypatch, tmp_path, routing):
    reads = host_reads_of_a_fit(monkeypatch, tmp_path, tiny_module(routing))
    expected = HOST_BY_DESIGN if routing == "switch" else set()
    assert set(reads) == expected, f"host reads in the hot path, by function: {reads}"


def test_ant_uw_steps_read_nothing_on_the_host(monkeypatch, tmp_path):
    module = tiny_module("dtr", mtl=UncertaintyWeighting(Intervals(num_intervals=5)))
    assert host_reads_of_a_fit(monkeypatch, tmp_path, module) == {}


def test_the_count_sees_a_host_read(monkeypatch, tmp_path):
    """The check has teeth: a loss that prints its value every step is caught, by name."""
    module = tiny_module("dtr")
    loss = module.training_loss

    def training_loss(*args):
        out = loss(*args)
        print(out[0].mean())
        return out

    monkeypatch.setattr(module, "training_loss", training_loss)
    reads = host_reads_of_a_fit(monkeypatch, tmp_path, module, code=(DTR_LAB, __file__))
    assert reads == {"training_loss": 3}  # steps 1, 2, 3


def test_ema_follows_the_warm_up_formula_across_a_reload():
    """A scalar weight w_n = n + 1 at update n: the average is copied at n = 0, then moves by
    1 − min(decay, (1 + n)/(10 + n)); a copy loaded from a state after two updates continues alike."""
    net = torch.nn.Linear(1, 1, bias=False)
    ema, decay = EMA(net, decay=0.5), 0.5
    expected = 0.0
    for n in range(4):
        with torch.no_grad():
            net.weight.fill_(n + 1.0)
        ema.update_parameters(net)
        d = 0.0 if n == 0 else min(decay, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * (n + 1.0)
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
        if n == 1:
            state = {k: v.clone() for k, v in ema.state_dict().items()}
    # d: 0, 2/11, 3/12, 4/13 (all under the decay 0.5): the average after four updates, by hand
    assert expected == pytest.approx(((1 * 2 / 11 + 2 * 9 / 11) * 3 / 12 + 3 * 9 / 12) * 4 / 13 + 4 * 9 / 13)
    resumed = EMA(torch.nn.Linear(1, 1, bias=False), decay=0.5)
    resumed.load_state_dict(state)
    for n in (2, 3):
        with torch.no_grad():
            net.weight.fill_(n + 1.0)
        resumed.update_parameters(net)
    assert resumed.module.weight.item() == ema.module.weight.item()
    assert resumed.n_averaged.item() == 4
