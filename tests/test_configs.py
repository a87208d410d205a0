"""Every shipped config under experiments/ parses, and a shrunken copy of it trains two steps.

Shrunken: a tiny model of the same family (DiT-T/2 or UNet-T), fake data in the real format (a CIFAR-10
archive, VAE latent shards), one CPU process in full precision. Everything else — routing, weighting,
MTL method, learned σ, callbacks, optimizer — is the config's own.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    EXPERIMENTS,
    EXPERTS,
    denoiser,
    intervals_of,
    label,
    num_intervals,
    resolved,
    shrink,
    write_fake_cifar,
    write_latents,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dtr_lab.cli import main


def needs_the_command_line(path: Path) -> bool:
    """Whether a routing file leaves an option without a default to the command line (a source run)."""
    node = yaml.safe_load(path.read_text())["model"]["routing"]
    module, name = node["class_path"].rsplit(".", 1)
    given = node.get("init_args") or {}
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters.values()
    return any(p.default is p.empty and p.name not in given for p in parameters)


# Products of composable files: one entry from each axis, an entry being one file or several together.
# Concerns live once (experiments/routing, weighting, mtl) and compose with each dataset. A folder not
# named here composes as base.yaml + each other file (or, without a base.yaml, each file alone). Every
# routing file is found, so a new routing is a new file with no entry here; so is every MTL file whose K
# splits the digits' stratified batch into equal intervals (the rest, mtl/uw8.yaml's K = 8, compose with the
# dataset whose batch they fit).
ROUTING_FILES = sorted((EXPERIMENTS / "routing").glob("*.yaml"))
ROUTINGS = [(f"routing/{p.name}",) for p in ROUTING_FILES if not needs_the_command_line(p)]
STRATIFIED_BATCH = yaml.safe_load((EXPERIMENTS / "digits/stratified.yaml").read_text())["data"]["init_args"][
    "batch_size"
]
DIGITS_MTL = [
    (f"mtl/{p.name}", "digits/stratified.yaml")
    for p in sorted((EXPERIMENTS / "mtl").glob("*.yaml"))
    if STRATIFIED_BATCH % num_intervals(yaml.safe_load(p.read_text())) == 0
]
AXES = {
    "digits": [
        [("digits/base.yaml",)],
        # the sharing spectrum's no-sharing end: one expert per interval, B/K samples each
        ROUTINGS + [("sharing/experts.yaml", "digits/stratified.yaml")],
        [("weighting/uniform.yaml",), ("weighting/min_snr.yaml",), ("weighting/p2.yaml",)]
        + DIGITS_MTL,
    ],
    "imagenet256": [
        [("imagenet256/base.yaml",)],
        [("imagenet256/dit_b2.yaml",), ("imagenet256/dit_l2.yaml",)],
        ROUTINGS,
        [("weighting/uniform.yaml",), ("weighting/min_snr.yaml",), ("mtl/uw8.yaml",)],
    ],
    "cifar10": [[("cifar10/unet.yaml",), ("cifar10/dit.yaml",)], ROUTINGS],
}
CONCERNS = {"routing", "weighting", "mtl", "sharing"}  # folders composed through AXES only
# files with a value only the command line can give (a source run), composed by their own tests
# (routing/affinity.yaml: tests/test_routing_affinity.py)
OWN_TESTS = {p for p in ROUTING_FILES if needs_the_command_line(p)}
# the output layer of each family and its rows per output channel (DiT: one per pixel of a 2×2 patch)
OUTPUT_LAYER = {"dtr_lab.models.DiT": ("net.final_layer.linear.weight", 4),
                "dtr_lab.models.UNet": ("net.conv_out.weight", 1)}


def product(axes: list[list[tuple[str, ...]]], picks: tuple[int, ...]) -> tuple[Path, ...]:
    return tuple(EXPERIMENTS / f for axis, i in zip(axes, picks, strict=True) for f in axis[i % len(axis)])


def compositions() -> list[tuple[Path, ...]]:
    """Every runnable combination of the shipped YAML files, as --config sequences."""
    combos = []
    for axes in AXES.values():
        combos += [product(axes, picks) for picks in itertools.product(*(range(len(a)) for a in axes))]
    for folder in sorted({p.parent for p in EXPERIMENTS.rglob("*.yaml")}):
        if folder.name in AXES or folder.name in CONCERNS:
            continue
        files = sorted(folder.glob("*.yaml"))
        if (folder / "base.yaml").exists():
            base = folder / "base.yaml"
            combos += [(base,)] + [(base, f) for f in files if f != base]
        else:
            combos += [(f,) for f in files]
    return combos


def covering(combos: list[tuple[Path, ...]]) -> list[tuple[tuple[Path, ...], bool]]:
    """A few combinations that between them use every file (the diagonals of each product), each with
    whether it is quick: the last diagonal of each product and the top-level configs (quickstart) are;
    the rest are marked slow."""
    chosen = []
    for axes in AXES.values():
        n = max(len(axis) for axis in axes)
        chosen += [(product(axes, (i,) * len(axes)), i == n - 1) for i in range(n)]
    listed = {EXPERIMENTS / folder for folder in (*AXES, *CONCERNS)}
    chosen += [(combo, combo[0].parent == EXPERIMENTS) for combo in combos if combo[0].parent not in listed]
    return chosen


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine a second one spins against other processes and
    a tiny model's step gets up to 100× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> dict[str, Path]:
    """Data roots in the real formats: a CIFAR-10 archive and SD-VAE-style latent shards (4×8×8)."""
    root = tmp_path_factory.mktemp("fake_data")
    write_fake_cifar(root / "cifar10", n_per_batch=8)
    write_latents(root / "latents", sizes=(24, 24), shape=(4, 8, 8), flip=True, num_classes=1000)
    return {"cifar10": root / "cifar10", "latents": root / "latents"}


ALL = compositions()
RUNS = [combo if quick else pytest.param(combo, marks=pytest.mark.slow) for combo, quick in covering(ALL)]


def test_every_shipped_yaml_is_composed():
    shipped = set(EXPERIMENTS.rglob("*.yaml")) - OWN_TESTS
    used = {path for combo in ALL for path in combo}
    assert shipped - used == set(), "add the new file to AXES in tests/test_configs.py"
    assert {path for combo, _ in covering(ALL) for path in combo} == shipped


@pytest.mark.parametrize("combo", ALL, ids=label)
def test_config_parses(combo):
    config = resolved(combo)
    k = num_intervals(config)
    if k is not None:  # the shipped per-device batch must split evenly into the K intervals
        assert config["data"]["init_args"]["batch_size"] % k == 0


def test_no_shipped_yaml_is_a_copy_of_another():
    seen: dict[bytes, Path] = {}
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        text = path.read_bytes()
        assert text not in seen, f"{path} is a copy of {seen[text]}: compose the one file instead"
        seen[text] = path


def test_quickstart_is_the_digits_dtr_composition_plus_its_extras():
    composed = resolved((EXPERIMENTS / "digits/base.yaml", EXPERIMENTS / "routing/dtr.yaml"))
    quickstart = resolved((EXPERIMENTS / "quickstart.yaml",))
    extras = [c for c in quickstart["trainer"]["callbacks"] if c not in composed["trainer"]["callbacks"]]
    assert [c["class_path"] for c in extras] == ["dtr_lab.callbacks.SampleQuality"]
    quickstart["trainer"]["callbacks"] = [c for c in quickstart["trainer"]["callbacks"] if c not in extras]
    for config in (composed, quickstart):
        config["trainer"]["logger"]["init_args"].pop("save_dir")
        config["trainer"]["logger"]["init_args"].pop("name")
    assert quickstart == composed


@pytest.mark.parametrize("size", ["dit_b2", "dit_l2"])
def test_imagenet256_has_the_papers_settings(size):
    folder = EXPERIMENTS / "imagenet256"
    config = resolved((folder / "base.yaml", folder / f"{size}.yaml", EXPERIMENTS / "routing/dtr.yaml"))
    model, trainer, data = config["model"], config["trainer"], config["data"]
    assert model["net"]["init_args"]["size"] == {"dit_b2": "DiT-B/2", "dit_l2": "DiT-L/2"}[size]
    assert model["net"]["init_args"]["learn_sigma"] is True
    optimizer = model["optimizer"]
    assert optimizer["class_path"] == "torch.optim.AdamW"
    assert (optimizer["init_args"]["lr"], optimizer["init_args"]["weight_decay"]) == (1e-4, 0.0)
    assert data["class_path"] == "dtr_lab.data.LatentDataModule"
    assert data["init_args"]["batch_size"] * 8 == 256  # per device, on the paper's 8 GPUs
    assert model["ema_decay"] == 0.9999 and model["ema_warmup"] is False and trainer["max_steps"] == 400_000
    assert (trainer["precision"], trainer["devices"], trainer["strategy"]) == ("bf16-mixed", -1, "ddp")
    assert (model["sampler"], model["sample_steps"], model["guidance_scale"]) == ("ddpm", 250, 1.5)
    assert model["routing"]["init_args"] == {"alpha": 4.0, "beta": 0.8}


@pytest.mark.parametrize(
    "combo", [("imagenet256/base.yaml", "mtl/uw8.yaml"), ("repro/base.yaml", "repro/uw.yaml")]
)
def test_uw_intervals_are_dtr_codes_eight_uniform(combo):
    # DTR's train.py: UncertaintyWeighting(num_task=8) over initialize_cluster(8), uniform in t
    config = resolved(tuple(EXPERIMENTS / f for f in combo))
    intervals = intervals_of(config)
    assert (intervals["num_intervals"], intervals["spacing"], intervals["boundaries"]) == (8, "uniform", None)
    assert config["model"]["mtl"]["init_args"]["lr"] == 0.025
    assert config["data"]["init_args"]["batch_size"] % 8 == 0  # B/K samples per interval


@pytest.mark.parametrize("combo", RUNS, ids=label)
def test_shrunken_config_trains_two_steps(combo, fake_data, tmp_path):
    config = resolved(combo)
    shrunken = tmp_path / "shrunken.yaml"
    shrunken.write_text(yaml.safe_dump(shrink(config, fake_data, tmp_path / "runs")))
    main(["fit", "--config", str(shrunken)])
    run = next((tmp_path / "runs").glob("*/version_0"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 2
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["model"]["routing"] == config["model"]["routing"]  # the composed routing is what ran
    net = denoiser(config)
    name, rows_per_channel = OUTPUT_LAYER[net["class_path"]]
    if config["model"]["net"]["class_path"] == EXPERTS:  # every expert has its own output layer
        name = name.replace("net.", "net.experts.0.", 1)
    out_channels = ckpt["hyper_parameters"]["in_channels"] * (2 if net["init_args"].get("learn_sigma") else 1)
    assert ckpt["state_dict"][name].shape[0] == rows_per_channel * out_channels  # ε (and v when σ is learned)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_cifar10_dtr_trains_a_few_hundred_steps(fake_data, tmp_path):
    """The CIFAR-10 U-Net DTR config (UNet-T) learns the fake archive's flat images (ε-MSE 0.8 -> 0.02)."""
    folder = EXPERIMENTS / "cifar10"
    combo = (folder / "unet.yaml", EXPERIMENTS / "routing/dtr.yaml")
    config = shrink(resolved(combo), fake_data, tmp_path / "runs")
    config["trainer"].update(max_steps=300, val_check_interval=100, log_every_n_steps=10)
    config["checkpoint"]["every_n_train_steps"] = 100
    config["data"]["init_args"]["batch_size"] = 16
    shrunken = tmp_path / "shrunken.yaml"
    shrunken.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(shrunken)])
    run = next((tmp_path / "runs").glob("*/version_0"))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 300
    acc = EventAccumulator(str(run))
    acc.Reload()
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert len(loss) == 30 and all(math.isfinite(v) for v in loss)
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    assert last < 0.1 * first, f"train/loss {first:.3f} -> {last:.3f}"
