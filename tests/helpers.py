"""Helpers shared by test modules (tests import this module, never each other): running the CLI, tiny
modules, fake data in the real formats, fake run directories, shrunken shipped configs."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dtr_lab.cli import main
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import Intervals, MTLMethod, TaskBatch, Tasks
from dtr_lab.mtl.intervals import DEFAULT_INTERVALS
from dtr_lab.routing import DTRRouting

REPO = Path(__file__).resolve().parents[1]
DIGITS = ["--config", str(REPO / "experiments/digits/base.yaml")]


def tiny(save_dir: Path, steps: int = 4, batch: int = 32) -> list[str]:
    """Overrides that make a digits run take seconds."""
    return [
        "--trainer.max_steps",
        str(steps),
        "--data.init_args.batch_size",
        str(batch),
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--checkpoint.every_n_train_steps",
        "2",
        "--model.sample_steps",
        "4",
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
    ]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small filesystem mounted at path (a full disk, or a read-only folder), unmounted after; the
    test skips where mounting is not allowed (not root, a container without CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here; the patched variant covers this fault")
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({mount.stderr.strip()}); the patched variant covers this fault")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dtr_lab", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


EXPERIMENTS = REPO / "experiments"


FAKE_ROOT = {"CIFAR10DataModule": "cifar10", "LatentDataModule": "latents"}


TINY_SIZE = {"dtr_lab.models.DiT": "DiT-T/2", "dtr_lab.models.UNet": "UNet-T"}
EXPERTS = "dtr_lab.models.IntervalExperts"


# trainer settings of a two-step, one-process CPU run in full precision
TWO_STEPS = {
    "max_steps": 2,
    "accelerator": "cpu",
    "devices": 1,
    "strategy": "auto",
    "precision": "32-true",
    "val_check_interval": 2,
    "limit_val_batches": 1,
    "log_every_n_steps": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


# options that size a callback's measurement, at their smallest (cadences stay the config's)
TINY_PROBE_ARGS = {"probe_size": 2, "probe_timesteps": 3}


TINY_CALLBACK_ARGS = {"dtr_lab.callbacks.SampleGrid": {"num_samples": 4}}


def label(combo: tuple[Path, ...]) -> str:
    return "+".join(str(p.relative_to(EXPERIMENTS)) for p in combo)


def config_args(combo: tuple[Path, ...]) -> list[str]:
    return [arg for path in combo for arg in ("--config", str(path))]


def resolved(combo: tuple[Path, ...], *overrides: str) -> dict:
    """The config the CLI would run, from --print_config (in process: importing torch dominates)."""
    out = io.StringIO()
    with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(out):
        main(["fit", *config_args(combo), *overrides, "--print_config"])
    assert done.value.code in (None, 0), f"{label(combo)} does not parse"
    return yaml.safe_load(out.getvalue())


def intervals_of(config: dict) -> dict:
    """The run's task intervals: model.intervals, or where a method states them, its own."""
    mtl = config["model"].get("mtl") or {}
    return config["model"].get("intervals") or (mtl.get("init_args") or {}).get("intervals") or {}


def denoiser(config: dict) -> dict:
    """The config of the network that denoises: model.net, or independent experts' expert."""
    net = config["model"]["net"]
    return net["init_args"]["expert"] if net["class_path"] == EXPERTS else net


def num_intervals(config: dict) -> int | None:
    """K of the config's stratified batches (an MTL method's or independent experts'), or None."""
    if not config["model"].get("mtl") and config["model"]["net"]["class_path"] != EXPERTS:
        return None
    intervals = intervals_of(config)
    if intervals.get("boundaries"):
        return len(intervals["boundaries"]) - 1
    return intervals.get("num_intervals", DEFAULT_INTERVALS.num_intervals)


def shrink(config: dict, data: dict[str, Path], save_dir: Path) -> dict:
    """A copy of a resolved paper-scale config that is a seconds-long CPU run of the same kind."""
    config = copy.deepcopy(config)
    trainer, model, data_args = config["trainer"], config["model"], config["data"]["init_args"]
    trainer.update(TWO_STEPS)
    trainer["logger"]["init_args"]["save_dir"] = str(save_dir)
    for callback in trainer["callbacks"] or []:
        args = callback.get("init_args") or {}
        args.update({key: value for key, value in TINY_PROBE_ARGS.items() if key in args})
        args.update(TINY_CALLBACK_ARGS.get(callback["class_path"], {}))
    config["checkpoint"]["every_n_train_steps"] = 2
    model["sample_steps"] = 2
    denoiser(config)["init_args"]["size"] = TINY_SIZE[denoiser(config)["class_path"]]
    k = num_intervals(config)
    data_args["batch_size"] = 2 * k if k else 8  # stratified batches need B % K == 0
    data_class = config["data"]["class_path"].rsplit(".", 1)[-1]
    if data_class in FAKE_ROOT:
        data_args.update(root=str(data[FAKE_ROOT[data_class]]), num_workers=0)
        if data_class == "CIFAR10DataModule":  # a locally made archive: not the published md5
            data_args["verify_checksum"] = False
    return config


def run_dir(save_dir: Path, name: str = "digits") -> Path:
    versions = sorted((save_dir / name).glob("version_*"))
    assert versions, f"no run directory under {save_dir / name}"
    return versions[-1]


def scalars(path: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(path))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def tiny_module(**kwargs) -> DiffusionModule:
    def net(*args, **kw):
        return DiT(*args, size="DiT-T/2", **kw)

    return DiffusionModule(
        net=net, routing=DTRRouting(), num_timesteps=100, ema_decay=0.9, **{"sample_steps": 100, **kwargs}
    )


BATCH_NAMES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def fake_cifar_batches(n_per_batch: int = 4) -> dict[str, dict]:
    """Pickle-ready batches: image j of batch b has every byte equal to 10·b + j, label (b + j) % 10."""
    batches = {}
    for b, name in enumerate(BATCH_NAMES):
        data = np.stack([np.full(3072, 10 * b + j, dtype=np.uint8) for j in range(n_per_batch)])
        batches[name] = {b"data": data, b"labels": [(b + j) % 10 for j in range(n_per_batch)]}
    # one pixel marks the row-major, channel-first layout: red plane, row 0, column 31
    batches["test_batch"][b"data"][0, 31] = 255
    return batches


def write_fake_cifar(
    root: Path, n_per_batch: int = 4, archive: bool = True, batches: dict | None = None
) -> Path:
    """A CIFAR-10 python-format archive (or extracted folder) with n_per_batch images per batch."""
    root.mkdir(parents=True, exist_ok=True)
    batches = batches or fake_cifar_batches(n_per_batch)
    if not archive:
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        for name, batch in batches.items():
            (folder / name).write_bytes(pickle.dumps(batch))
        return folder
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            raw = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


# ------------------------------------------------------------------------------------------ latents
def write_latents(root: Path, sizes=(3, 2), shape=(4, 2, 2), flip=True, num_classes=5) -> np.ndarray:
    """Shards whose sample k has every latent value k (twin: −k) and label k % num_classes."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for s, n in enumerate(sizes):
        k = np.arange(start, start + n, dtype=np.float32)[:, None, None, None]
        np.save(root / f"latents_{s:05d}.npy", np.broadcast_to(k, (n, *shape)).astype(np.float16))
        np.save(root / f"labels_{s:05d}.npy", np.arange(start, start + n) % num_classes)
        if flip:
            np.save(root / f"latents_flip_{s:05d}.npy", np.broadcast_to(-k, (n, *shape)).astype(np.float16))
        start += n
    meta = {
        "vae": "unused",
        "scaling_factor": 0.18215,
        "latent_shape": list(shape),
        "num_classes": num_classes,
        "num_samples": start,
        "flip": flip,
        "image_size": 16,
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return meta


ROUTING_PATHS = {"dtr": "dtr_lab.routing.DTRRouting", "vanilla": "dtr_lab.routing.NoRouting"}


CONFLICT_EDGES = [0, 250, 500, 750, 1000]


def _rows(path: Path, header: tuple, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_fake_run(root: Path, routing: str = "dtr", seed: int = 0, scale: float = 1.0) -> Path:
    """A run directory in the format LightningCLI + the analysis callbacks write, with known values:
    probe loss at t is scale·(t+10)/1000 (ema) and twice that (raw); the K=4 cosine matrix is
    1 − |i−j|/2; affinity Z_{i→j} = −|i−j| − 0.1·i; IoU = 1/(1+|i−j|)."""
    run = root / f"{routing}_s{seed}" / "version_0"
    run.mkdir(parents=True)
    config = {
        "seed_everything": seed,
        "model": {
            "net": {"class_path": "dtr_lab.models.DiT", "init_args": {"size": "DiT-T/2"}},
            "routing": {"class_path": ROUTING_PATHS[routing], "init_args": {"alpha": 4.0, "beta": 0.8}},
            "seed": 0,
        },
        "data": {"class_path": "dtr_lab.data.DigitsDataModule"},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run))
    for step in range(10):
        writer.add_scalar("train/loss", scale * (1.0 + step), step)
    writer.add_scalar("val/loss_ema", scale * 0.5, 9)
    writer.close()

    rec = run / "records"
    header = ("step", "metric", "i", "j", "value")
    probe = [
        (s, m, t, "", f * scale * (t + 10) / 1000)
        for s in (0, 100)
        for m, f in (("probe_ema", 1), ("probe_raw", 2))
        for t in (0, 100, 500, 900)
    ]
    train = [(100, "train", t, "", scale * 0.1) for t in range(0, 1000, 250)]
    _rows(rec / "loss_by_t.csv", header, probe + train)
    k = 4
    conflict = []
    for s in (0, 50, 100):
        conflict += [(s, "cos", i, j, 1 - abs(i - j) / 2 * (1 + s / 100)) for i in range(k) for j in range(k)]
        conflict += [(s, "cos_by_distance", d, "", 1 - d / 2 * (1 + s / 100)) for d in range(k)]
        conflict += [(s, "neg_share", "", "", s / 200), (s, "neg_share/blocks.0", "", "", s / 400)]
        conflict += [(s, "grad_norm", i, "", 1.0 + i) for i in range(k)]
    _rows(rec / "conflict.csv", header, conflict)
    _rows(
        rec / "affinity.csv",
        header,
        [(s, "tag", i, j, -abs(i - j) - 0.1 * i) for s in (0, 100) for i in range(k) for j in range(k)],
    )
    iou = [
        (0, "iou", i, j, 1 / (1 + abs(i - j)) if routing == "dtr" else 1.0)
        for i in range(k)
        for j in range(k)
    ]
    _rows(rec / "routing.csv", header, iou)
    edges = [
        (n, i, CONFLICT_EDGES[i], CONFLICT_EDGES[i + 1])
        for n in ("conflict", "affinity", "routing", "loss_by_t")
        for i in range(k)
    ]
    _rows(rec / "intervals.csv", ("name", "k", "start", "end"), edges)
    return run



def tasks_of(k: int, num_timesteps: int = 100) -> Tasks:
    """A stratified split of T timesteps into k uniform intervals."""
    return Tasks(torch.linspace(10.0, 0.1, num_timesteps), Intervals(num_intervals=k), stratified=True)


def bound(method: MTLMethod, k: int) -> MTLMethod:
    """The method sized for k intervals, as the module binds it."""
    method.bind(tasks_of(k))
    return method


def linear_task_batch(grads: torch.Tensor, step: int = 0, seed: int = 0) -> tuple[TaskBatch, torch.Tensor]:
    """A TaskBatch whose K interval gradients are the rows of ``grads`` (K, P), and its parameter θ.

    Interval k holds one sample x_k = g_k with objective x_k·θ at θ = 0, so ∇L_k = g_k exactly and
    every L_k is 0.
    """
    theta = torch.zeros(grads.shape[1], dtype=grads.dtype, requires_grad=True)

    def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        objective = x @ theta  # (N,)
        return objective, objective.detach()

    batch = TaskBatch(tasks_of(grads.shape[0]), loss_fn, (grads,), [theta], step, seed)
    return batch, theta


def assert_one_error_line(err: str, *needles: str) -> str:
    """stderr holds exactly one `dtr_lab: error:` line, no traceback or usage, naming every needle."""
    lines = [line for line in err.splitlines() if line.startswith("dtr_lab: error:")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "usage:" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def fails_in_one_line(entry, args: list[str], capsys, *needles: str) -> str:
    """A command-line entry point (`main(args)`) run in this process: exit status 2 and one error line
    naming each needle."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        entry(args)
    assert exit_.value.code == 2
    return assert_one_error_line(capsys.readouterr().err, *needles)
