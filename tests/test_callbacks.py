"""MTL analysis callbacks against hand computations on a linear denoiser, and bad input at start-up."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from dtr_lab.callbacks import GradientConflict, RoutingMaps, SampleGrid, TaskAffinity, TimestepLoss
from dtr_lab.callbacks.gradient_conflict import cos_by_distance, cosine_matrix, gram, neg_share
from dtr_lab.callbacks.heatmap import heatmap_image
from dtr_lab.callbacks.probe import block_slices
from dtr_lab.callbacks.routing_maps import interval_iou, table_figure
from dtr_lab.callbacks.task_affinity import optimizer_lookahead
from dtr_lab.data import DigitsDataModule
from dtr_lab.errors import DTRLabError
from dtr_lab.models import Denoiser
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import PCGrad
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.runs import load_run

T = 100
ROOT = Path(__file__).resolve().parents[1]


class LinearDenoiser(Denoiser):
    """ε_θ(x_t) = W1 v + W2 v² with v = flat x_t: linear in its parameters, so gradients are closed-form."""

    block_pattern = r"blocks\.[^.]+"  # its two linear maps are its blocks

    def __init__(self, input_size, in_channels, num_classes, num_timesteps, routing) -> None:
        super().__init__()
        d = in_channels * input_size**2
        self.blocks = nn.ModuleList([nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)])
        gen = torch.Generator().manual_seed(7)
        for block in self.blocks:
            block.weight.data = 0.1 * torch.randn(d, d, generator=gen)

    def forward(self, x, t, y=None):
        v = x.flatten(1)  # (N, D)
        return (self.blocks[0](v) + self.blocks[1](v * v)).view_as(x)


def fit(tmp_path, callbacks, optimizer, max_steps=2, net=LinearDenoiser, **trainer_args):
    torch.manual_seed(0)
    module = DiffusionModule(net=net, num_timesteps=T, sample_steps=T, optimizer=optimizer, ema_decay=0.9)
    trainer = L.Trainer(
        max_steps=max_steps,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_args,
    )
    trainer.fit(module, DigitsDataModule(batch_size=16))
    return module, Path(tmp_path) / "run" / "version_0"


# --------------------------------------------------------------------------- hand computations
def noised(module, x0, t, noise):
    """x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε in float64, flattened (N, D)."""
    ab = module.diffusion.alpha_bar.double()[t][:, None]
    return ab.sqrt() * x0.double().flatten(1) + (1 - ab).sqrt() * noise.double().flatten(1)


def hand_loss_and_grads(W1, W2, v, eps):
    """L = mean (ε − W1 v − W2 v²)²; dL/dW1 = −2/(nD) rᵀv, dL/dW2 = −2/(nD) rᵀv²."""
    r = eps - v @ W1.T - (v * v) @ W2.T  # (n, D)
    n, d = r.shape
    return r.pow(2).mean(), -2 / (n * d) * r.T @ v, -2 / (n * d) * r.T @ (v * v)


def hand_interval_terms(module, probe):
    """Per interval k: (v, ε) of its sub-batch, in float64."""
    out = []
    for k in range(probe.num_intervals):
        x0, t, noise, _ = probe.interval(k)
        out.append((noised(module, x0, t, noise), noise.double().flatten(1)))
    return out


def weights(module):
    return [b.weight.detach().double() for b in module.net.blocks]


def record_matrix(frame, step, metric, k):
    rows = frame[(frame.step == step) & (frame.metric == metric)]
    m = torch.full((k, k), float("nan"), dtype=torch.float64)
    for i, j, v in zip(rows.i, rows.j, rows.value, strict=True):
        m[int(i), int(j)] = v
    return m


def cos_of(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- the linear run
@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    """Two steps with lr 0 (θ fixed), every analysis at every step, on the linear denoiser."""
    callbacks = [
        GradientConflict(every_n_steps=1, intervals=Intervals(num_intervals=3), probe_size=6),
        TaskAffinity(
            every_n_steps=1, intervals=Intervals(num_intervals=3), probe_size=6, update="sgd", lr=0.5
        ),
        TimestepLoss(
            every_n_steps=1, num_bins=4, probe_every_n_steps=1, probe_timesteps=[0, 37, 99], probe_size=5
        ),
    ]
    module, run_dir = fit(tmp_path_factory.mktemp("linear"), callbacks, partial(torch.optim.SGD, lr=0.0))
    return module, run_dir, callbacks, load_run(run_dir)


def test_conflict_cosines_match_closed_form_gradients(linear_run):
    module, _, (conflict, _, _), run = linear_run
    W1, W2 = weights(module)
    grads = [
        hand_loss_and_grads(W1, W2, v, eps)[1:] for v, eps in hand_interval_terms(module, conflict.probe)
    ]
    flat = [torch.cat([g1.flatten(), g2.flatten()]) for g1, g2 in grads]
    frame = run.conflict
    for step in (0, 1, 2):
        cos = record_matrix(frame, step, "cos", 3)
        for i in range(3):
            for j in range(3):
                assert cos[i, j] == pytest.approx(cos_of(flat[i], flat[j]), abs=1e-5)
        for b in (0, 1):
            block = record_matrix(frame, step, f"cos/blocks.{b}", 3)
            expected = [[cos_of(grads[i][b], grads[j][b]) for j in range(3)] for i in range(3)]
            torch.testing.assert_close(block, torch.tensor(expected, dtype=torch.float64), atol=1e-5, rtol=0)
        norms = frame[(frame.step == step) & (frame.metric == "grad_norm")].sort_values("i").value.tolist()
        assert norms == pytest.approx([float(f.norm()) for f in flat], rel=1e-4)
        # invariants of any cosine matrix
        assert torch.diagonal(cos).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
        assert torch.allclose(cos, cos.T, atol=1e-6)
        assert bool((cos.abs() <= 1).all())
        pairs = [cos_of(flat[i], flat[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
        share = frame[(frame.step == step) & (frame.metric == "neg_share")].value.item()
        assert share == pytest.approx(sum(p < 0 for p in pairs) / 3)
        by_d = frame[(frame.step == step) & (frame.metric == "cos_by_distance")].sort_values("i")
        assert by_d.i.tolist() == [1, 2]
        assert by_d.value.tolist() == pytest.approx([(pairs[0] + pairs[2]) / 2, pairs[1]], abs=1e-5)


def test_tag_affinity_matches_hand_lookahead(linear_run):
    """Z_{i→j} = 1 − L_j(W − η G_i) / L_j(W); on the diagonal, interval i's own lookahead loss drop."""
    module, _, (_, affinity, _), run = linear_run
    W1, W2 = weights(module)
    terms = hand_interval_terms(module, affinity.probe)
    grads = [hand_loss_and_grads(W1, W2, v, eps) for v, eps in terms]
    eta = 0.5
    z = record_matrix(run.affinity, 0, "tag", 3)
    for i in range(3):
        moved1, moved2 = W1 - eta * grads[i][1], W2 - eta * grads[i][2]
        for j, (v, eps) in enumerate(terms):
            after = hand_loss_and_grads(moved1, moved2, v, eps)[0]
            assert z[i, j] == pytest.approx(float(1 - after / grads[j][0]), abs=1e-5)
    assert torch.diagonal(z).gt(0).all()  # a small enough gradient step lowers its own loss


def test_timestep_probe_and_bins(linear_run):
    module, _, (_, _, timestep), run = linear_run
    frame = run.loss_by_t
    W1, W2 = weights(module)
    x0, _, noise = timestep.probe
    for t in (0, 37, 99):
        v = noised(module, x0, torch.full((x0.shape[0],), t), noise)
        expected = float(hand_loss_and_grads(W1, W2, v, noise.double().flatten(1))[0])
        for metric in ("probe_raw", "probe_ema"):  # lr 0: the EMA equals the raw weights
            row = frame[(frame.step == 1) & (frame.metric == metric) & (frame.i == t)]
            assert row.value.item() == pytest.approx(expected, rel=1e-5)
    train = frame[frame.metric == "train"]
    assert sorted(train.step.unique()) == [1, 2]
    assert set(train.i.unique()) <= {0, 25, 50, 75}
    edges = run.intervals[run.intervals.name == "loss_by_t"].sort_values("k")
    assert edges.start.tolist() == [0, 25, 50, 75] and edges.end.tolist() == [25, 50, 75, 100]


def test_binned_training_loss_is_the_mean_per_bin():
    cb = TimestepLoss(every_n_steps=2, num_bins=4, probe_size=2)
    module = DiffusionModule(
        net=LinearDenoiser, num_timesteps=T, sample_steps=T, image_size=8, in_channels=1, num_classes=10
    )
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    trainer = SimpleNamespace(
        datamodule=DigitsDataModule(batch_size=16), is_global_zero=True, loggers=[logger]
    )
    cb.setup(trainer, module, "fit")
    batches = [
        (torch.tensor([0, 24, 25, 99]), torch.tensor([1.0, 3.0, 5.0, 7.0])),
        (torch.tensor([10, 80]), torch.tensor([2.0, 9.0])),
    ]
    for step, (t, losses) in enumerate(batches, start=1):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, module, {"t": t, "per_sample_loss": losses}, None, step)
    # bin 0 holds t 0, 24, 10 → (1 + 3 + 2)/3; bin 1: 5; bin 2 empty (not logged); bin 3: (7 + 9)/2
    assert logged == [(2, {"loss_by_t/t0000": 2.0, "loss_by_t/t0025": 5.0, "loss_by_t/t0075": 8.0})]
    trainer.global_step = 4
    cb.on_train_batch_end(
        trainer, module, {"t": torch.tensor([60]), "per_sample_loss": torch.tensor([4.0])}, None, 3
    )
    assert logged[-1] == (4, {"loss_by_t/t0050": 4.0})  # the window restarts after each log


def test_tag_with_optimizer_update_is_adams_first_step(tmp_path):
    """From an empty Adam state the step is lr·m̂/(√v̂ + eps) with m̂ = g, v̂ = g²."""
    lr, eps = 1e-2, 1e-8
    cb = TaskAffinity(every_n_steps=1, intervals=Intervals(num_intervals=2), probe_size=4)
    module, run_dir = fit(
        tmp_path, [cb], partial(torch.optim.AdamW, lr=lr, eps=eps, weight_decay=0.0), max_steps=1
    )
    z = record_matrix(pd.read_csv(run_dir / "records" / "affinity.csv"), 0, "tag", 2)
    # θ at step 0 is the initial weights: the run took one step since
    init = LinearDenoiser(8, 1, 10, T, None)
    W1, W2 = (b.weight.detach().double() for b in init.blocks)
    terms = hand_interval_terms(module, cb.probe)
    grads = [hand_loss_and_grads(W1, W2, v, e) for v, e in terms]
    for i in range(2):
        g1, g2 = grads[i][1], grads[i][2]
        moved1, moved2 = W1 - lr * g1 / (g1.abs() + eps), W2 - lr * g2 / (g2.abs() + eps)
        for j, (v, e) in enumerate(terms):
            after = hand_loss_and_grads(moved1, moved2, v, e)[0]
            assert z[i, j] == pytest.approx(float(1 - after / grads[j][0]), abs=2e-4)


def count_backward_passes(monkeypatch) -> list[int]:
    """Counts torch.autograd.grad calls: one per interval sub-batch's backward pass."""
    calls = []
    original = torch.autograd.grad

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    return calls


class StepCounts(L.Callback):
    """Backward passes counted by the time each training batch ends."""

    def __init__(self, calls: list[int]) -> None:
        self.calls, self.at_end = calls, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.at_end.append(len(self.calls))


@pytest.mark.parametrize("order", [("conflict", "affinity"), ("affinity", "conflict")])
def test_interval_gradients_are_computed_once_per_step_for_conflict_affinity_and_pcgrad(
    tmp_path, monkeypatch, order
):
    # K = 2 intervals from the module; PCGrad's training gradients: K backward passes a step; the probe's:
    # K more at every measured step, shared by GradientConflict and TaskAffinity in either order
    calls = count_backward_passes(monkeypatch)
    counts = StepCounts(calls)
    made = {
        "conflict": lambda: GradientConflict(every_n_steps=2, probe_size=3),
        "affinity": lambda: TaskAffinity(every_n_steps=2, probe_size=3, update="sgd", lr=0.1),
    }
    torch.manual_seed(0)
    module = DiffusionModule(
        net=LinearDenoiser, num_timesteps=T, sample_steps=T, intervals=Intervals(num_intervals=2),
        mtl=PCGrad(), optimizer=partial(torch.optim.SGD, lr=0.0), ema_decay=0.9,
    )
    trainer = L.Trainer(
        max_steps=3, logger=False, callbacks=[*(made[n]() for n in order), counts],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, accelerator="cpu",
    )
    trainer.fit(module, DigitsDataModule(batch_size=16))
    # steps 0, 1, 2 end after 2 + 2, 2, 2 + 2 passes; the end of fit (step 3) measures nothing
    assert counts.at_end == [4, 6, 10]
    assert len(calls) == 10
    assert module.tasks._value is None  # released: no gradients outlive the step


def test_callbacks_use_the_modules_task_split_unless_told_otherwise():
    module = DiffusionModule(
        net=LinearDenoiser, num_timesteps=T, sample_steps=T, image_size=8, in_channels=1, num_classes=10,
        intervals=Intervals(boundaries=[0, 10, 40, T]),
    )
    data = DigitsDataModule(batch_size=30)
    default = [GradientConflict(), TaskAffinity(), RoutingMaps()]
    own = GradientConflict(intervals=Intervals(num_intervals=4))
    for callback in [*default, own]:
        callback.prepare(module, data)
    for callback in default:
        assert callback.task_intervals is module.tasks.intervals
    assert own.task_intervals.edges.tolist() == [0, 25, 50, 75, 100]
    timestep_loss = TimestepLoss(num_bins=5, probe_size=2)
    timestep_loss.prepare(module, data)
    assert timestep_loss.bins.edges.tolist() == [0, 20, 40, 60, 80, 100]  # its own bins, asked for


def test_prepare_builds_once_per_module_and_data(monkeypatch):
    module = DiffusionModule(
        net=LinearDenoiser, num_timesteps=T, sample_steps=T, image_size=8, in_channels=1, num_classes=10
    )
    data = DigitsDataModule(batch_size=30)
    conflict = GradientConflict()
    builds = []
    original = GradientConflict.build
    monkeypatch.setattr(GradientConflict, "build", lambda self, *a: builds.append(1) or original(self, *a))
    conflict.prepare(module, data)  # the CLI, before fit
    conflict.setup(SimpleNamespace(datamodule=data), module, "fit")  # the trainer's setup
    assert len(builds) == 1
    conflict.prepare(module, DigitsDataModule(batch_size=60))  # other data: built again
    assert len(builds) == 2 and conflict.probe.per_interval == 12


def test_module_and_method_intervals_must_agree():
    with pytest.raises(DTRLabError, match="state the task intervals once"):
        DiffusionModule(
            net=LinearDenoiser, num_timesteps=T, sample_steps=T,
            intervals=Intervals(num_intervals=4), mtl=PCGrad(Intervals(num_intervals=5)),
        )
    agreed = DiffusionModule(
        net=LinearDenoiser, num_timesteps=T, sample_steps=T, mtl=PCGrad(Intervals(num_intervals=4))
    )
    assert agreed.tasks.num_intervals == 4 and agreed.tasks.stratified


# --------------------------------------------------------------------------- pieces by hand
def test_cosine_matrix_neg_share_and_distance():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    cos = cosine_matrix(gram(g))
    r = 2**-0.5
    expected = [[1, r, -1], [r, 1, -r], [-1, -r, 1]]
    torch.testing.assert_close(cos[:3, :3], torch.tensor(expected), atol=1e-6, rtol=0)
    assert cos[3].isnan().all() and cos[:, 3].isnan().all()  # a zero gradient has no direction
    assert neg_share(cos) == pytest.approx(2 / 3)  # pairs (0,2), (1,2) of the three defined
    assert cos_by_distance(cos[:3, :3]).tolist() == pytest.approx([(r - r) / 2, -1.0], abs=1e-6)
    assert gram(g, [(0, 1)]).tolist() == (g[:, :1] @ g[:, :1].T).tolist()


def test_block_slices_group_contiguous_ranges():
    net = Denoiser()
    net.embed = nn.Linear(2, 3)  # 9 params
    net.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 1)])  # 12 and 4
    names = [n for n, _ in net.named_parameters()]
    assert block_slices(net, names, "auto", "block_pattern") == {}  # it declares no blocks
    net.block_pattern = r"blocks\.\d+"
    assert block_slices(net, names, "auto", "block_pattern") == {  # "auto": the network's own declaration
        "blocks.0": [(9, 21)],
        "blocks.1": [(21, 25)],
    }
    assert block_slices(net, names, r"embed|blocks\.1", "block_pattern") == {
        "embed": [(0, 9)],
        "blocks.1": [(21, 25)],
    }
    with pytest.raises(DTRLabError, match="block_pattern='nomatch'"):
        block_slices(net, names, "nomatch", "block_pattern")


def test_optimizer_lookahead_equals_the_real_step_and_leaves_state_alone():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5))
    q = nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=0.1, weight_decay=0.01)
    for _ in range(3):  # build up moments
        opt.zero_grad()
        (p.pow(3).sum() + q.sin().sum()).backward()
        opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    before = p.detach().clone(), q.detach().clone()
    g = torch.randn(5)
    moved = optimizer_lookahead(opt, [p], [g])[0]
    assert torch.equal(p, before[0]) and torch.equal(q, before[1])
    assert all(torch.equal(opt.state[p][k], v) for k, v in state.items())
    p.grad, q.grad = g.clone(), None
    opt.step()  # the real step, with q frozen (no gradient)
    assert torch.allclose(moved, p.detach(), atol=1e-7)
    assert torch.equal(q, before[1])


def test_heatmap_image_colours_each_entry():
    """In the figures' palettes (dtr_lab.plots): diverging for a scale around 0, sequential for [0, 1]."""
    from matplotlib import colormaps

    from dtr_lab.plots import DIVERGING, SEQUENTIAL

    image = heatmap_image({"a": torch.tensor([[-1.0, 1.0], [float("nan"), 0.0]])}, cell=1)  # (3, 2, 2)
    cmap = colormaps[DIVERGING]
    assert image[:, 0, 0].tolist() == pytest.approx(list(cmap(0.0)[:3]))
    assert image[:, 0, 1].tolist() == pytest.approx(list(cmap(1.0)[:3]))
    assert image[:, 1, 0].tolist() == pytest.approx([0.6] * 3)  # undefined: grey
    assert image[:, 1, 1].tolist() == pytest.approx(list(cmap(0.5)[:3]))
    iou = heatmap_image({"a": torch.tensor([[1.0]])}, "iou", cell=1)
    assert iou[:, 0, 0].tolist() == pytest.approx(list(colormaps[SEQUENTIAL](1.0)[:3]))
    # Z on the fixed symmetric log scale (linear within ±0.001, base 10, linscale 1): T(z) = sign(z)·0.001·
    # (1/(1 − 1/10) + log10(|z|/0.001)), so z = 0.01 sits at (T(0.01) − T(−1)) / (T(1) − T(−1)) =
    # (2.111 + 4.111) / 8.222 = 0.7568 of the palette, whatever the other cells; −4.2 is clipped to −1
    alone = heatmap_image({"Z": torch.tensor([[0.01]])}, "tag", cell=1)
    beside = heatmap_image({"Z": torch.tensor([[0.01, -4.2, -1.0]])}, "tag", cell=1)
    lift = 1 / 0.9
    position = (0.001 * (lift + 1) + 0.001 * (lift + 3)) / (2 * 0.001 * (lift + 3))
    assert position == pytest.approx(0.7568, abs=1e-4)
    assert alone[:, 0, 0].tolist() == pytest.approx(list(cmap(position)[:3]), abs=1e-6)
    assert torch.equal(beside[:, 0, 0], alone[:, 0, 0])
    assert torch.equal(beside[:, 0, 1], beside[:, 0, 2]) and beside[:, 0, 1].tolist() == pytest.approx(
        list(cmap(0.0)[:3])
    )
    two = heatmap_image({"a": torch.zeros(3, 3), "b": torch.zeros(3, 3)}, cell=4)
    assert two.shape == (3, 12, 4 * 3 * 2 + 2)  # two panels and a half-cell gap


def test_tensorboard_gets_scalars_images_and_figures(linear_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(linear_run[1])).Reload()
    images = set(events.Tags()["images"])
    assert {"conflict/cos", "conflict/cos_blocks", "affinity/tag", "loss_by_t/probe"} <= images
    assert {"conflict/cos_labelled", "affinity/tag_labelled"} <= images  # the labelled figures at the end
    assert [e.step for e in events.Images("conflict/cos")] == [0, 1, 2]
    scalars = set(events.Tags()["scalars"])
    assert {"conflict/cos/i0_j2", "conflict/neg_share", "conflict/grad_norm/i1", "affinity/i2_j0"} <= scalars
    assert {
        "loss_by_t/probe_raw/t0037",
        "loss_by_t/probe_ema/t0099",
        "conflict/neg_share_by_block/blocks.1",
    } <= scalars


def test_interval_iou_by_hand():
    table = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    intervals = Intervals(boundaries=[0, 2, 4]).build(torch.linspace(10, 0.1, 4))
    # IoU(t0,t1) = 1/3, (t0,t2) = 0, (t0,t3) = 1, (t1,t2) = 1/3, (t1,t3) = 1/3, (t2,t3) = 0
    expected = [[(1 + 1 / 3 + 1 / 3 + 1) / 4, (0 + 1 + 1 / 3 + 1 / 3) / 4], [5 / 12, (1 + 0 + 0 + 1) / 4]]
    torch.testing.assert_close(interval_iou(table, intervals), torch.tensor(expected))


def test_routing_table_figure_has_axes_a_colour_bar_and_shows_the_unrouted_table():
    """t down the side, channels (or experts, E per block) along the bottom, a colour bar naming what the
    colours mean; an all-active table is a dark block, not white on white."""
    fig = table_figure(torch.ones(T, 128), "vanilla: masks_table_128, step 0", "channel", 1, None)
    ax, bar = fig.axes
    assert (ax.get_ylabel(), ax.get_xlabel(), ax.get_title()) == (
        "timestep t", "channel (of 128)", "vanilla: masks_table_128, step 0"
    )
    assert [t.get_text() for t in bar.get_yticklabels()] == ["masked", "active"]
    image = ax.get_images()[0]
    assert image.get_array().shape == (T, 128) and max(image.to_rgba(1.0)[:3]) < 0.4
    # Switch's gate probabilities: 2 blocks × E = 3 experts, block boundary after slot 2, ticks per block
    probs = torch.rand(T, 6, generator=torch.Generator().manual_seed(0))
    fig = table_figure(probs, "switch", "expert", 3, "gate probability p_b,e(t)")
    ax, bar = fig.axes
    assert ax.get_xticks().tolist() == [1.0, 4.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    assert [line.get_xdata()[0] for line in ax.get_lines()] == [2.5]
    assert ax.get_xlabel() == "expert: 3 per block, blocks 0–1"
    assert bar.get_ylabel() == "gate probability p_b,e(t)"
    # a table of 0s and 1s in another drawing's words (Switch's chosen experts)
    fig = table_figure(probs > 0.5, "switch", "expert", 3, "chosen")
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["not chosen", "chosen"]


def test_routing_maps_of_per_block_tables(tmp_path):
    """R-TR's per-block tables: the first block's table, the blocks' mean, and the mean IoU."""
    from PIL import Image

    from dtr_lab.models import DiT
    from dtr_lab.routing import RandomRouting

    module = DiffusionModule(
        net=partial(DiT, size="DiT-T/2"), routing=RandomRouting(beta=0.5), num_timesteps=T, sample_steps=T,
        ema_decay=0.9,
    )
    trainer = L.Trainer(
        max_steps=1, logger=TensorBoardLogger(tmp_path, name="run", version=0),
        callbacks=[RoutingMaps(Intervals(num_intervals=4))], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, DigitsDataModule(batch_size=8))
    run = Path(tmp_path) / "run" / "version_0"
    (tables,) = module.net.router.tables().values()  # width 128: one table per block
    assert len(tables) == 4
    first = torch.from_numpy(np.array(Image.open(run / "routing" / "masks_table_128.png"))) / 255
    assert torch.equal(first, tables[0])
    mean = torch.from_numpy(np.array(Image.open(run / "routing" / "mean_masks_table_128.png"))) / 255
    expected = torch.stack(tables).mean(dim=0)  # quarters: the share of the 4 blocks routing c at t
    assert torch.allclose(mean.float(), expected, atol=0.5 / 255)
    assert not torch.equal(expected, tables[0]) and set(expected.unique().tolist()) <= {0, 0.25, 0.5, 0.75, 1}
    iou = pd.read_csv(run / "records" / "routing.csv").pivot(index="i", columns="j", values="value")
    intervals = Intervals(num_intervals=4).build(module.diffusion.snr(torch.arange(T)))
    hand = torch.stack([interval_iou(table, intervals) for table in tables]).mean(dim=0)
    assert torch.allclose(torch.tensor(iou.to_numpy(), dtype=torch.float32), hand, atol=1e-6)
    # a random half of 128 channels: the IoU between distinct timesteps is about (1/2)/(3/2) = 1/3
    assert abs(float(hand[0, 3]) - 1 / 3) < 0.02
    # TensorBoard gets each table as a whole labelled figure (640 × 480), not a 128 × 1000 sliver
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    for tag in ("routing/masks_table_128", "routing/mean_masks_table_128"):
        (image,) = events.Images(tag)
        assert (image.width, image.height, image.step) == (640, 480, 0)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: GradientConflict(intervals=Intervals(num_intervals=1)),
            "GradientConflict.intervals.num_intervals=1",
        ),
        (lambda: TaskAffinity(update="adam"), "TaskAffinity.update='adam'"),
        (lambda: GradientConflict(params="("), "GradientConflict.params='\\('"),
        (lambda: TimestepLoss(num_bins=1), "TimestepLoss.num_bins=1"),
        (lambda: GradientConflict(every_n_steps=0), "GradientConflict.every_n_steps=0"),
    ],
)
def test_bad_options_fail_in_the_constructor(make, match):
    with pytest.raises(DTRLabError, match=match):
        make()


@pytest.mark.parametrize(
    "callback, match",
    [
        (lambda: GradientConflict(intervals=Intervals(num_intervals=T + 1)), "num_intervals=101 is larger"),
        (lambda: TaskAffinity(intervals=Intervals(boundaries=[0, 50, 40, T])), "strictly increasing"),
        (
            lambda: GradientConflict(intervals=Intervals(boundaries=[0, 50, 120])),
            "must start at 0 and end at T",
        ),
        (lambda: GradientConflict(probe_size=5000), "GradientConflict.probe_size=5000 is larger"),
        (lambda: TaskAffinity(params="nomatch"), "TaskAffinity.params='nomatch' matches no trainable"),
        (lambda: GradientConflict(block_pattern="nomatch"), "GradientConflict.block_pattern='nomatch'"),
        (lambda: TimestepLoss(num_bins=T + 1), "TimestepLoss.num_bins=101 is larger than T=100"),
        (lambda: TimestepLoss(probe_timesteps=[0, T]), "TimestepLoss.probe_timesteps"),
        (
            lambda: RoutingMaps(intervals=Intervals(num_intervals=T + 1)),
            "RoutingMaps.intervals.num_intervals",
        ),
    ],
)
def test_bad_input_fails_at_setup_before_writing(tmp_path, callback, match):
    with pytest.raises(DTRLabError, match=match):
        fit(tmp_path, [TimestepLoss(probe_size=2), callback()], partial(torch.optim.SGD, lr=0.0))
    assert not (tmp_path / "run" / "version_0" / "records").exists()


def test_prepare_checks_and_builds_the_probe_before_fit():
    module = DiffusionModule(
        net=LinearDenoiser, num_timesteps=T, sample_steps=T, image_size=8, in_channels=1, num_classes=10
    )
    data = DigitsDataModule(batch_size=40)
    conflict = GradientConflict(intervals=Intervals(num_intervals=4))
    conflict.prepare(module, data)
    assert conflict.probe.per_interval == 10  # B/K images by default
    assert conflict.probe.t.view(4, 10).div(25, rounding_mode="floor").tolist() == [
        [k] * 10 for k in range(4)
    ]
    assert torch.equal(conflict.probe.x0[:10], conflict.probe.x0[30:])  # the same images in every interval
    with pytest.raises(DTRLabError, match="TaskAffinity.params='nomatch'"):
        TaskAffinity(params="nomatch").prepare(module, data)


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("every_n_steps", -5, "SampleGrid.every_n_steps=-5 must be ≥ 0"),
        ("num_samples", 0, "SampleGrid.num_samples=0 must be at least 1"),
        ("nrow", 0, "SampleGrid.nrow=0 must be at least 1"),
    ],
)
def test_sample_grid_refuses_options_out_of_range(option, value, needle):
    with pytest.raises(DTRLabError, match=needle):
        SampleGrid(**{option: value})
    SampleGrid(every_n_steps=0)  # 0: only at the end of fit


def test_cli_bad_callback_option_is_one_line_and_writes_nothing(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"trainer:\n  max_steps: 1\n  logger:\n    class_path: lightning.pytorch.loggers.TensorBoardLogger\n"
        f"    init_args:\n      save_dir: {tmp_path / 'runs'}\n  callbacks:\n"
        "    - class_path: dtr_lab.callbacks.GradientConflict\n      init_args:\n        params: nomatch\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dtr_lab",
            "fit",
            "--config",
            str(ROOT / "experiments/digits/base.yaml"),
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("dtr_lab: error: GradientConflict.params='nomatch'")
    )
    # Lightning opens the logger (an empty events file) before any callback's setup; nothing else is written
    assert not list((tmp_path / "runs").rglob("records")) and not list(
        (tmp_path / "runs").rglob("config.yaml")
    )


def test_validate_analyses_a_checkpoint_as_fit_measured_it_at_that_step(tiny_runs, tmp_path):
    """`validate --ckpt_path` runs the analysis callbacks once on the loaded model, recorded at the
    checkpoint's step: on a run's last.ckpt (step 4) the probe loss, the gradient cosines and the lookahead
    affinity (the optimizer's step from its saved state) equal what fit measured at its last step, on the
    same weights, probe and optimizer state; no training happens."""
    from dtr_lab.cli import main

    run = tiny_runs["dtr"]
    ckpt = run / "checkpoints/last.ckpt"
    before = ckpt.read_bytes()
    config = run / "config.yaml"
    main(["validate", "--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.logger.init_args.name", "analysis", "--ckpt_path", str(ckpt)])  # fmt: skip
    analysed = tmp_path / "analysis/version_0/records"
    assert ckpt.read_bytes() == before
    for name in ("loss_by_t", "conflict", "affinity", "routing"):
        assert (analysed / f"{name}.csv").exists(), name
    for name, metric in (("loss_by_t", "probe_ema"), ("conflict", "cos"), ("affinity", "tag")):
        fit = pd.read_csv(run / "records" / f"{name}.csv")
        new = pd.read_csv(analysed / f"{name}.csv")
        assert set(new.step) == {4}
        fit = fit[(fit.step == 4) & (fit.metric == metric)].reset_index(drop=True)
        new = new[new.metric == metric].reset_index(drop=True)
        assert len(new) == len(fit) > 0
        assert new[["i", "j"]].equals(fit[["i", "j"]])
        # the same float32 operations on the same tensors; 1e-5 absorbs a different kernel order
        assert np.allclose(new.value, fit.value, atol=1e-5, rtol=1e-5), name


def test_validate_on_an_imported_model_measures_the_originals_affinity(tiny_runs, tmp_path):
    """A run's last.ckpt (step 4) exported to the official format as train.py names it (0000004.pt) and
    imported back holds no optimizer state: validate measures its lookahead affinity with update sgd (a
    row update/sgd, η = the optimizer's lr, says so, at step 4), and Z equals the original's measured with
    update: sgd on the same probe; the original's default update (its saved Adam state) differs."""
    from dtr_lab.cli import main
    from dtr_lab.official import main as official

    run = tiny_runs["dtr"]
    ckpt, config = run / "checkpoints/last.ckpt", run / "config.yaml"
    exported, imported = tmp_path / "0000004.pt", tmp_path / "imported.ckpt"
    resolved = yaml.safe_load(config.read_text())
    # the run's own config.yaml, fit's options (ckpt_path, weights_only) and all, describes the model
    official(["export", str(ckpt), str(exported), "--config", str(config)])
    official(["import", str(exported), str(imported), "--config", str(config)])
    for callback in resolved["trainer"]["callbacks"]:
        if callback["class_path"].endswith("TaskAffinity"):
            callback["init_args"]["update"] = "sgd"
    sgd = tmp_path / "sgd.yaml"
    sgd.write_text(yaml.safe_dump(resolved))
    tags = {}
    for name, cfg, path in [("original", sgd, ckpt), ("imported", config, imported), ("adam", config, ckpt)]:
        main(["validate", "--config", str(cfg), "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.logger.init_args.name", name, "--ckpt_path", str(path)])  # fmt: skip
        rows = pd.read_csv(tmp_path / name / "version_0/records/affinity.csv")
        assert set(rows.step) == {4}
        update = rows[rows.metric.str.startswith("update/")]  # written where the config's update was not
        assert list(update.metric) == (["update/sgd"] if name == "imported" else [])
        if name == "imported":
            assert update.value.item() == pytest.approx(1e-3)  # η: digits/base.yaml's AdamW lr
        tags[name] = rows[rows.metric == "tag"].reset_index(drop=True)
    assert len(tags["imported"]) == 9  # K = 3
    # (the update/sgd row's empty i, j make the imported file's indices floats)
    assert np.array_equal(tags["imported"][["i", "j"]].to_numpy(), tags["original"][["i", "j"]].to_numpy())
    # the same float32 operations on bit-equal weights (the round trip is exact)
    assert np.allclose(tags["imported"].value, tags["original"].value, atol=1e-6, rtol=1e-5)
    assert not np.allclose(tags["adam"].value, tags["original"].value, atol=1e-3, rtol=1e-2)
    # fit has nothing to resume in it: one line, exit 2, and no run folder left behind
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path),
              "--trainer.logger.init_args.name", "refit", "--ckpt_path", str(imported)])  # fmt: skip
    assert exit_.value.code == 2 and sorted(tmp_path.iterdir()) == before
