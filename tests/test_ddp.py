"""DDP through the CLI: two CPU processes (gloo) train on different batches and end with identical state.

Each run uses a shipped config with its analysis callbacks on (probes shrunken) and `strategy: ddp`,
`devices: 2`, `accelerator: cpu`. A recording callback in each process saves the labels it trained
on and its final state; DDP is working when the ranks saw different data but agree on every tensor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import EXPERIMENTS, REPO, resolved, shrink, write_fake_cifar, write_latents

pytestmark = pytest.mark.slow


class RankRecord(L.Callback):
    """Saves this process's training labels and final state to OUT/rank{r}.pt."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.labels: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.labels.append(batch[1].detach().cpu())

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        record = {"labels": torch.cat(self.labels), "state": state}
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")


def ddp_fit(combo: tuple[Path, ...], tmp_path: Path) -> tuple[dict, dict, Path]:
    """Two steps of the shrunken config on 2 CPU processes; the two ranks' records and the run dir."""
    data = {"cifar10": tmp_path / "cifar10", "latents": tmp_path / "latents"}
    write_fake_cifar(data["cifar10"], n_per_batch=8)
    write_latents(data["latents"], sizes=(24, 24), shape=(4, 8, 8), flip=True, num_classes=1000)
    config = shrink(resolved(combo), data, tmp_path / "runs")
    config["trainer"].update(strategy="ddp", devices=2, accelerator="cpu")
    callbacks = config["trainer"]["callbacks"] or []
    config["trainer"]["callbacks"] = [
        *callbacks, {"class_path": "test_ddp.RankRecord", "init_args": {"out": str(tmp_path)}}
    ]
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    path_entries = [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path_entries)}  # the processes import RankRecord
    proc = subprocess.run(
        [sys.executable, "-m", "dtr_lab", "fit", "--config", str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    return ranks[0], ranks[1], next((tmp_path / "runs").glob("*/version_0"))


@pytest.mark.parametrize(
    "combo",
    [
        # latents, learned σ, ANT-UW's stratified batches and its own learnable s_k
        ("imagenet256/base.yaml", "imagenet256/dit_b2.yaml", "routing/dtr.yaml", "mtl/uw8.yaml"),
        # manual optimisation: the module all-reduces the PCGrad update itself
        ("digits/base.yaml", "routing/dtr.yaml", "mtl/pcgrad.yaml", "digits/stratified.yaml"),
        # learned routing: gates and experts, and the diffusion prior computed on every rank
        ("digits/base.yaml", "routing/switch.yaml"),
    ],
    ids=["imagenet256-dtr-uw", "digits-dtr-pcgrad", "digits-switch"],
)
def test_ddp_two_processes_share_one_model(combo, tmp_path):
    rank0, rank1, run = ddp_fit(tuple(EXPERIMENTS / f for f in combo), tmp_path)
    assert len(rank0["labels"]) == len(rank1["labels"]) > 0
    assert not torch.equal(rank0["labels"], rank1["labels"])  # each rank draws its own share of the data
    assert rank0["state"].keys() == rank1["state"].keys()
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), f"{key} differs between the ranks"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
    assert all(torch.equal(rank0["state"][k], v) for k, v in ckpt["state_dict"].items())
    # the weights moved: after two steps the EMA (a copy at step 1, then a blend) lags the network
    state = rank0["state"]
    assert any(not torch.equal(state[k], state["ema.module." + k.removeprefix("net.")])
               for k in state if k.startswith("net.") and state[k].is_floating_point())
    records = {p.name for p in (run / "records").glob("*.csv")}
    assert records >= {"loss_by_t.csv", "conflict.csv", "affinity.csv", "routing.csv"}
