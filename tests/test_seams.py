"""The three seams, opened from outside: a new routing, a new MTL method and a new analysis callback, each a
file in a temporary folder on PYTHONPATH and named in a YAML there, train through `python -m dtr_lab fit`
and are read back by `dtr_lab.runs.load_run`, with no edit anywhere in the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import REPO, tiny

from dtr_lab.runs import load_run
from dtr_lab.storage import labels

STEPS = 4
K = 2  # the new method's intervals: the tiny batch of 16 splits into 2 × 8

PLUGINS = {
    # a routing: the first half of the channels below T/2, the second half from T/2 on (β = 1/2)
    "halves.py": '''
        import torch
        from dtr_lab.routing import TableRouting

        class HalvesRouting(TableRouting):
            """Low-noise tasks on the first half of the channels, high-noise ones on the second."""

            label = "halves"

            def table(self, num_timesteps, channels, block=0):
                t = torch.arange(num_timesteps)[:, None]
                c = torch.arange(channels)[None, :]
                return (c < channels // 2) == (t < num_timesteps // 2)  # (T, C)
    ''',
    # an MTL method: every interval's loss weighted by the inverse of its detached value
    "balanced.py": '''
        from dtr_lab.mtl.method import MTLMethod, Update

        class InverseLossWeighting(MTLMethod):
            """Σ_k L_k / sg(L_k) / K: every interval contributes the same relative step."""

            tag = "inverse"

            def forward(self, batch):
                losses = batch.losses()  # (K,)
                weights = 1.0 / losses.detach().clamp(min=1e-8)
                metrics = {f"{self.tag}/largest_weight": weights.max()}
                return Update(loss=(weights * losses).mean(), metrics=metrics)
    ''',
    # an analysis callback: the parameters' L2 norm after every training step, as a record of its own
    "norms.py": '''
        import lightning as L
        import torch
        from dtr_lab.callbacks.logging import log_dir
        from dtr_lab.records import RecordWriter

        class ParameterNorm(L.Callback):
            """records/parameter_norm.csv: ‖θ‖₂ after each training step."""

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.is_global_zero:
                    theta = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
                    writer = RecordWriter(log_dir(trainer), "parameter_norm")
                    writer.scalar(trainer.global_step, "l2", float(torch.linalg.vector_norm(theta)))
    ''',
}
CONFIG = {
    "trainer": {  # the list replaces the base's: the new callback, and RoutingMaps to draw the new routing
        "callbacks": [
            {"class_path": "norms.ParameterNorm"},
            {"class_path": "dtr_lab.callbacks.RoutingMaps", "init_args": {"intervals": {"num_intervals": K}}},
        ]
    },
    "model": {
        "routing": {"class_path": "halves.HalvesRouting"},
        "intervals": {"num_intervals": K},
        "mtl": {"class_path": "balanced.InverseLossWeighting"},
    },
}


@pytest.fixture(scope="module")
def seam_run(tmp_path_factory) -> Path:
    plugins = tmp_path_factory.mktemp("plugins")
    for name, source in PLUGINS.items():
        (plugins / name).write_text(textwrap.dedent(source))
    (plugins / "seams.yaml").write_text(yaml.safe_dump(CONFIG))
    out = plugins / "runs"
    command = [
        sys.executable, "-m", "dtr_lab", "fit", "--config", str(REPO / "experiments/digits/base.yaml"),
        "--config", str(plugins / "seams.yaml"), *tiny(out, steps=STEPS, batch=16),
        "--trainer.logger.init_args.name", "seams", "--trainer.logger.init_args.version", "version_0",
    ]
    path = os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "seams" / "version_0"


def test_a_new_routing_trains_and_reads_back_under_its_own_label(seam_run):
    run = load_run(seam_run)
    assert run.labels["routing"] == "halves"  # its class's label, recorded by the run: not "halvesrouting"
    assert run.colours == {"halves": labels.colour("halves")}
    # RoutingMaps recorded its tables' interval overlap: the two halves share no channel
    iou = run.routing[run.routing["metric"] == "iou"].set_index(["i", "j"])["value"]
    assert iou[(0, 0)] == iou[(1, 1)] == 1.0 and iou[(0, 1)] == iou[(1, 0)] == 0.0
    assert run.steps == STEPS


def test_a_new_mtl_method_trains_and_reads_back(seam_run):
    run = load_run(seam_run)
    assert run.labels["mtl"] == "inverselossweighting"  # a method of one's own: its class name, lower case
    tags = set(run.scalars["tag"])
    assert "train/loss" in tags and any(tag.startswith("inverse/") for tag in tags), sorted(tags)
    # Σ_k w_k L_k / K with w_k = 1 / L_k: every weight ≥ 1/max L_k > 0
    largest = run.scalars[run.scalars["tag"].str.endswith("largest_weight")]["value"]
    assert len(largest) and (largest > 0).all()


def test_a_new_callback_record_reads_back_with_no_reader_edited(seam_run):
    run = load_run(seam_run)
    norms = run.records["parameter_norm"]
    assert norms["step"].tolist() == list(range(1, STEPS + 1))
    assert set(norms["metric"]) == {"l2"} and (norms["value"] > 0).all()
    assert set(norms["routing"]) == {"halves"}  # labelled like every record
