"""Refactors keep training unchanged: tiny digits runs with every analysis callback on leave the same
weights, per-step losses, logged metrics, records and sample images as before.

Two checks, for two questions:

- **Across machines** (the default suite): a 4-step run of each variant is compared with the reference in
  ``tests/data/refactor_reference.json`` within ``TOLERANCE``. The reference holds summaries, not digests:
  float kernels round differently on another CPU (vector width, MKL and oneDNN code paths), so a stored
  reference can only be equal up to rounding. The tolerance is justified in ``TOLERANCE``'s comment.
- **Bit for bit across a refactor** (one machine, both sides in one run):
  ``python tests/test_refactor_identity.py against COMMIT`` trains every variant with that commit's
  ``dtr_lab`` and with this tree's, one after the other in fresh interpreters on this machine, and compares
  every tensor with ``torch.equal`` and every record and metrics file byte for byte.

``python tests/test_refactor_identity.py record`` rewrites the reference (after a change of behaviour that
is meant, with the reason in the commit message).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from dtr_lab.callbacks import GradientConflict, RoutingMaps, SampleGrid, TaskAffinity, TimestepLoss
from dtr_lab.callbacks.sample_quality import SampleQuality
from dtr_lab.data import DigitsDataModule
from dtr_lab.models import DiT
from dtr_lab.module import DiffusionModule
from dtr_lab.mtl import NashMTL, PCGrad, UncertaintyWeighting
from dtr_lab.mtl.intervals import Intervals
from dtr_lab.routing import DTRRouting

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "refactor_reference.json"
K = 3  # intervals of every method and analysis
STEPS = 4

# The largest difference from the reference that rounding alone may cause, relative to each quantity's
# scale (see `differences`). Measured on one Intel Xeon (AVX-512), torch 2.13, by this file's `spread` under
# every float code path that machine offers (ATEN_CPU_CAPABILITY=default/avx2/avx512, MKL_CBWR=COMPATIBLE,
# ONEDNN_MAX_CPU_ISA=SSE41, and all three slow paths at once): at most 2.9e-5 of the scale (Nash-MTL, whose
# solved weights amplify rounding), 1.7e-5 for PCGrad, 1e-5 for UW, 1.5e-6 plain. The tolerance leaves 17×
# room for other CPUs; a change of behaviour is far above it: lr × 1.001 moves some quantity by 2.4e-3 of its
# scale and lr × 1.01 by 2.5e-2 (`spread` prints both beside the code paths).
TOLERANCE = 5e-4

# The lookahead affinity Z = 1 − L'/L is one minus a ratio of two nearly equal float32 losses: its rounding
# is 2⁻²⁴ of 1, not of Z (≈ 0.016 here), so its records and metrics are compared on a scale of 1.
NEAR_ONE_RATIOS = ("tag", "affinity/")

# variant -> MTL method (module keyword arguments)
VARIANTS = {
    "plain": {},
    "pcgrad": {"mtl": lambda: PCGrad(intervals=Intervals(num_intervals=K))},
    "nash": {"mtl": lambda: NashMTL(intervals=Intervals(num_intervals=K), update_every=2)},
    "uw": {"mtl": lambda: UncertaintyWeighting(intervals=Intervals(num_intervals=K))},
}


# routings trained (with the plain method) only by the side-by-side check, `against`: every routing's masks,
# own loss term, drawing and records. Built by name, so that a commit whose routing classes live elsewhere
# (dtr_lab.routing_switch / routing_affinity before the routing package) trains them as well.
ROUTINGS = {
    "dtr": ("DTRRouting", {}),
    "vanilla": ("NoRouting", {}),
    "rtr": ("RandomRouting", {"beta": 0.5, "seed": 3}),
    "switch": ("SwitchRouting", {"w_jsd": 0.5, "seed": 1}),
    "affinity": ("AffinityRouting", {"source": [[1.0, 0.4, -0.2], [0.3, 1.0, 0.1], [-0.3, 0.2, 1.0]]}),
}
OLD_HOMES = {"SwitchRouting": "dtr_lab.routing_switch", "AffinityRouting": "dtr_lab.routing_affinity"}


def make_routing(name: str):
    import importlib

    cls, options = ROUTINGS[name]
    try:
        return getattr(importlib.import_module("dtr_lab.routing"), cls)(**options)
    except AttributeError:
        return getattr(importlib.import_module(OLD_HOMES[cls]), cls)(**options)


class LossTrace(L.Callback):
    """The per-sample training losses of every step, as returned by the training step."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["per_sample_loss"].detach().cpu().clone())


def callbacks() -> list[L.Callback]:
    intervals = Intervals(num_intervals=K)
    return [
        SampleGrid(every_n_steps=2, num_samples=10),
        RoutingMaps(intervals=intervals),
        TimestepLoss(every_n_steps=1, num_bins=5, probe_every_n_steps=2, probe_timesteps=5, probe_size=4),
        GradientConflict(every_n_steps=2, intervals=intervals, probe_size=2),
        TaskAffinity(every_n_steps=2, intervals=intervals, probe_size=2),
        SampleQuality(every_n_steps=2, num_samples=20, kid_subsets=2, kid_subset_size=10, batch_size=10),
    ]


def train(root: Path, variant: str, lr: float = 1e-3, routing: str = "dtr") -> dict:
    """Train one variant for STEPS steps; everything it leaves behind, exactly (tensors and file bytes)."""
    L.seed_everything(0, verbose=False)
    options = {name: make() for name, make in VARIANTS[variant].items()}
    module = DiffusionModule(
        net=partial(DiT, size="DiT-T/2", hidden_size=32),
        routing=DTRRouting() if routing == "dtr" else make_routing(routing),
        num_timesteps=100,
        optimizer=partial(torch.optim.AdamW, lr=lr),
        ema_decay=0.9,
        sampler="ddim",
        sample_steps=4,
        gradient_clip_val=1.0 if "mtl" in options else None,
        **options,
    )
    trace = LossTrace()
    trainer = L.Trainer(
        max_steps=STEPS,
        logger=[TensorBoardLogger(root, name=variant, version=0), CSVLogger(root, name=variant, version=0)],
        callbacks=[*callbacks(), trace],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        val_check_interval=2,
        limit_val_batches=1,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, DigitsDataModule(batch_size=12))
    run = root / variant / "version_0"
    return {
        "weights": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "losses": torch.stack(trace.losses),
        "metrics": (run / "metrics.csv").read_bytes(),
        "records": {p.name: p.read_bytes() for p in sorted((run / "records").glob("*.csv"))},
        "images": {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("*/*.png"))},
    }


def signs(n: int) -> torch.Tensor:
    """A fixed ±1 pattern of length n, exact on every machine (integer hashing, no float RNG)."""
    bits = (torch.arange(n, dtype=torch.int64) * 2654435761 % 4294967296) >> 16 & 1
    return 1.0 - 2.0 * bits.double()


def summarise(out: dict) -> dict:
    """What the stored reference keeps of a run: per weight tensor (Σ|w|, Σw², Σ±w), the per-sample
    losses, every number in metrics.csv and the records (with their keys, which must match exactly) and
    every image's mean pixel value."""
    weights = {}
    for name, w in sorted(out["weights"].items()):
        w = w.double().flatten()
        weights[name] = [w.abs().sum().item(), (w * w).sum().item(), (w * signs(w.numel())).sum().item()]
    metrics = [
        (column, row["step"], float(value))
        for row in csv.DictReader(io.StringIO(out["metrics"].decode()))
        for column, value in sorted(row.items())
        if value != "" and column != "step"
    ]
    records = {}
    for name, data in out["records"].items():
        rows = list(csv.reader(io.StringIO(data.decode())))
        if rows and rows[0][-1] == "value":  # long format: keys exact, values within the tolerance
            records[name] = [[*r[:-1], float(r[-1]) if r[-1] else None] for r in rows[1:]]
        else:  # a table of integers and names (intervals): exact
            records[name] = rows
    images = {name: np.asarray(Image.open(io.BytesIO(data))).astype(np.float64).mean() for name, data in
              out["images"].items()}
    return {
        "weights": weights,
        "losses": out["losses"].double().tolist(),
        "metrics": metrics,
        "records": records,
        "images": images,
    }


Difference = tuple[str, float]  # where, and by how much relative to its scale (inf: not comparable)


def close(actual, expected, scale: float, where: str) -> list[Difference]:
    """The differences between two nested structures of numbers, each relative to max(scale, |expected|);
    every non-number (keys, names, steps, lengths) must be equal."""
    if isinstance(expected, dict):
        if sorted(actual) != sorted(expected):
            return [(f"{where}: keys {sorted(actual)} != {sorted(expected)}", np.inf)]
        return [d for k in expected for d in close(actual[k], expected[k], scale, f"{where}/{k}")]
    if isinstance(expected, list | tuple):
        if len(actual) != len(expected):
            return [(f"{where}: {len(actual)} entries != {len(expected)}", np.inf)]
        return [d for i, (a, e) in enumerate(zip(actual, expected, strict=True)) for d in
                close(a, e, scale, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float):
        if actual == expected or (np.isnan(expected) and np.isnan(actual)):
            return []
        denominator = max(scale, abs(expected))
        relative = abs(actual - expected) / denominator if denominator > 0 else np.inf
        return [(f"{where}: {actual!r} != {expected!r} (relative difference {relative:.3g})", relative)]
    return [] if actual == expected else [(f"{where}: {actual!r} != {expected!r}", np.inf)]


def differences(actual: dict, expected: dict) -> list[Difference]:
    """Every quantity is compared on its own scale: a weight tensor's three sums on its Σ|w| (Σw² on
    itself), the losses on their mean, a metric or record value on the largest magnitude of its metric,
    an image's mean pixel on the 255 levels of a pixel."""
    found = []
    for name, (abs_sum, sq_sum, proj) in expected["weights"].items():
        a = actual["weights"].get(name)
        if a is None:
            found.append((f"weights/{name}: missing", np.inf))
            continue
        found += close(a[0], abs_sum, abs_sum, f"weights/{name}/abs")
        found += close(a[1], sq_sum, sq_sum, f"weights/{name}/sq")
        found += close(a[2], proj, abs_sum, f"weights/{name}/proj")
    if sorted(actual["weights"]) != sorted(expected["weights"]):
        extra = sorted(set(actual["weights"]) ^ set(expected["weights"]))
        found.append((f"weights: tensors {extra} differ", np.inf))
    losses = np.asarray(expected["losses"])
    found += close(actual["losses"], expected["losses"], float(np.abs(losses).mean()), "losses")
    found += rows_close(actual["metrics"], expected["metrics"], 0, "metrics")
    for name, rows in expected["records"].items():
        found += rows_close(actual["records"].get(name, []), rows, 1, f"records/{name}")
    found += close(actual["images"], expected["images"], 255.0, "images")
    return found


def beyond_rounding(actual: dict, expected: dict) -> list[str]:
    """The differences larger than TOLERANCE."""
    return [where for where, relative in differences(actual, expected) if relative > TOLERANCE]


def rows_close(actual: list, expected: list, metric: int, where: str) -> list[Difference]:
    """Rows whose last entry is a value, compared on the largest magnitude of their metric (column
    `metric`) over the run; a table without values (intervals) must be equal."""
    if not expected or not isinstance(expected[0][-1], float | None):
        return [] if actual == expected else [(f"{where}: {actual!r} != {expected!r}", np.inf)]
    scale: dict[str, float] = {}
    for row in expected:
        if row[-1] is not None and np.isfinite(row[-1]):
            floor = 1.0 if row[metric].startswith(NEAR_ONE_RATIOS) else 0.0
            scale[row[metric]] = max(scale.get(row[metric], floor), abs(row[-1]))
    if len(actual) != len(expected):
        return [(f"{where}: {len(actual)} rows != {len(expected)}", np.inf)]
    return [d for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for d in close(a, e, scale.get(e[metric], 0.0), f"{where}[{i}]")]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_matches_the_reference_up_to_rounding(tmp_path, variant):
    expected = json.loads(REFERENCE.read_text())["variants"][variant]
    actual = json.loads(json.dumps(summarise(train(tmp_path, variant))))  # the same types as the stored one
    found = beyond_rounding(actual, expected)
    assert not found, f"{len(found)} quantities differ beyond rounding, first: " + "; ".join(found[:5])


def test_the_comparison_sees_a_change_of_behaviour():
    """A perturbation of 2e-3 of a weight tensor's scale (what lr × 1.001 does) is caught; one of 1e-6
    (rounding) is not."""
    reference = json.loads(REFERENCE.read_text())["variants"]["plain"]
    for factor, caught in ((1 + 2e-3, True), (1 + 1e-6, False)):
        changed = json.loads(json.dumps(reference))
        name = sorted(changed["weights"])[0]
        changed["weights"][name] = [v * factor for v in changed["weights"][name]]
        changed["losses"][0][0] *= factor
        assert bool(beyond_rounding(changed, reference)) is caught
    assert differences(reference, reference) == []


# --- command line: record the reference, measure its spread, compare with a commit side by side ---------


def _fingerprint(variant: str, out: str, routing: str = "dtr") -> None:
    """Train one variant in this interpreter and save everything it left behind (for a side-by-side run)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(train(Path(tmp), variant, routing=routing), out)


def _run_side(tree: Path, variant: str, out: Path, env: dict | None = None, routing: str = "dtr") -> None:
    """This file's training, importing `dtr_lab` from tree, in a fresh interpreter."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, __file__, "fingerprint", variant, str(out), routing], env=env, check=True,
                   cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _against(commit: str) -> int:
    """Train every variant with commit's package and with this tree's; compare everything exactly."""
    repo = HERE.parent
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(repo), "archive", commit, "dtr_lab"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        runs = [(variant, "dtr") for variant in VARIANTS] + [("plain", r) for r in ROUTINGS if r != "dtr"]
        for variant, routing in runs:
            a, b = Path(tmp) / f"{variant}-{routing}-old.pt", Path(tmp) / f"{variant}-{routing}-new.pt"
            _run_side(old, variant, a, routing=routing)
            _run_side(repo, variant, b, routing=routing)
            x, y = torch.load(a), torch.load(b)
            same = {
                "weights": x["weights"].keys() == y["weights"].keys()
                and all(torch.equal(x["weights"][k], y["weights"][k]) for k in x["weights"]),
                "losses": torch.equal(x["losses"], y["losses"]),
                "metrics": x["metrics"] == y["metrics"],
                "records": x["records"] == y["records"],
                "images": x["images"] == y["images"],
            }
            failed += not all(same.values())
            verdicts = (f"{k} {'equal' if v else 'DIFFERENT'}" for k, v in same.items())
            print(f"{variant:7s} {routing:8s}", *verdicts, sep="  ")
    print(f"{commit} vs this tree: {'bit-identical' if not failed else f'{failed} runs differ'}")
    return int(bool(failed))


# the float code paths one x86 machine can be put on: each line is one setting of the environment
CODE_PATHS = [
    {},
    {"ATEN_CPU_CAPABILITY": "default"},
    {"ATEN_CPU_CAPABILITY": "avx2"},
    {"MKL_CBWR": "COMPATIBLE"},
    {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
]


def _largest(actual: dict, expected: dict) -> float:
    """The largest relative difference of differences() (0 where all are equal)."""
    return max((relative for _, relative in differences(actual, expected)), default=0.0)


def _spread() -> None:
    """Each variant under every code path in CODE_PATHS against the stored reference: the largest relative
    difference, beside what small changes of behaviour (lr × 1.01, lr × 1.001) give."""
    expected = json.loads(REFERENCE.read_text())["variants"]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            for env in CODE_PATHS:
                out = Path(tmp) / "x.pt"
                _run_side(HERE.parent, variant, out, env)
                got = json.loads(json.dumps(summarise(torch.load(out))))
                largest = _largest(got, expected[variant])
                print(f"{variant:7s} {env or 'best'}: largest difference {largest:.2e}")
            for change, options in (("lr × 1.01", {"lr": 1.01e-3}), ("lr × 1.001", {"lr": 1.001e-3})):
                got = json.loads(json.dumps(summarise(train(Path(tmp) / change, variant, **options))))
                print(f"{variant:7s} {change}: largest difference {_largest(got, expected[variant]):.2e}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "fingerprint":
        _fingerprint(*sys.argv[2:5])
    elif command == "against" and len(sys.argv) == 3:
        sys.exit(_against(sys.argv[2]))
    elif command == "record":
        torch.set_num_threads(1)
        commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        with tempfile.TemporaryDirectory() as tmp:
            variants = {v: summarise(train(Path(tmp), v)) for v in VARIANTS}
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps({"commit": commit, "torch": torch.__version__, "variants": variants}))
        print(f"wrote {REFERENCE} (commit {commit}, torch {torch.__version__})")
    elif command == "spread":
        _spread()
    else:
        sys.exit(f"usage: {sys.argv[0]} record | spread | against COMMIT | fingerprint VARIANT FILE")
