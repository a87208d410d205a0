"""SamplesWriter: `predict` writes each batch as it is drawn and holds none, merges them into one .npz that
ADM's evaluator reads (arr_0 uint8 NHWC RGB), resumes after SIGKILL or a full disk to the identical file,
and never replaces output it was not asked to; under DDP (2 CPU processes, gloo) rank 0 merges one file
equal to a single process's."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import DIGITS, REPO, fails_in_one_line, run_dir, tiny, tmpfs

from dtr_lab.callbacks.samples_writer import merge_batches
from dtr_lab.cli import main

NUM_SAMPLES, BATCH = 10, 2  # five batches of two digits, 4 sampling steps
STARTS = list(range(0, NUM_SAMPLES, BATCH))


class HeldImages(L.Callback):
    """After each predict batch, counts the image tensors (uint8, 4-D) alive in this process; saves the counts
    and the first index of each batch this rank drew to OUT/held{rank}.json."""

    def __init__(self, out: str) -> None:
        self.out, self.counts, self.starts = Path(out), [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        gc.collect()
        live = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]  # type(): no lazy modules
        self.counts.append(sum(1 for t in live if t.dtype == torch.uint8 and t.dim() == 4))
        self.starts.append(int(batch[0][0]))

    def teardown(self, trainer, pl_module, stage) -> None:  # also after a predict with nothing to draw
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"counts": self.counts, "starts": self.starts}
        (self.out / f"held{trainer.global_rank}.json").write_text(json.dumps(record))


class KillAfter(L.Callback):
    """SIGKILLs its own process once `batches` batches are drawn (the writer, listed before it, has written
    them): a predict cut off mid-way, as by the out-of-memory killer."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx + 1 == self.batches:
            os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step digits fit whose predict draws NUM_SAMPLES samples."""
    root = tmp_path_factory.mktemp("writer_fit")
    main(["fit", *DIGITS, *tiny(root, steps=2, batch=16), "--model.num_samples", str(NUM_SAMPLES)])
    return run_dir(root)


def predict(run: Path, out: Path, *extra: str, batch: int = BATCH) -> list[str]:
    return [
        "predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
        "--data.init_args.batch_size", str(batch), "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(out.parent / f"{out.name}_logs"),
        "--trainer.callbacks+=dtr_lab.callbacks.SamplesWriter", "--trainer.callbacks.output_dir", str(out),
        *extra,
    ]


def held(out: Path) -> list[str]:
    return ["--trainer.callbacks+=test_samples_writer.HeldImages", "--trainer.callbacks.out", str(out)]


@contextlib.contextmanager
def one_thread():
    """In this process as in the subprocesses (OMP_NUM_THREADS=1): the same float sums, the same samples."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "dtr_lab", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        assert sorted(npz.files) == ["arr_0", "labels"]
        return npz["arr_0"], npz["labels"]


def batch_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "samples.batches").glob("batch_*.npz"))


def test_predict_writes_each_batch_holds_none_and_merges_the_evaluators_file(run, tmp_path):
    out = tmp_path / "samples"
    with one_thread():
        main(predict(run, out, *held(tmp_path / "held")))
    record = json.loads((tmp_path / "held" / "held0.json").read_text())
    assert record["starts"] == STARTS
    # one batch's images alive after each batch, however many came before: nothing keeps the samples
    assert record["counts"] == [record["counts"][0]] * len(STARTS) and record["counts"][0] <= 2
    images, labels = arrays(out / "samples.npz")
    assert images.dtype == np.uint8 and images.shape == (NUM_SAMPLES, 8, 8, 3)  # NHWC, RGB
    assert (images == images[..., :1]).all()  # grey digits repeated to three channels
    assert len(np.unique(images)) > 2
    assert labels.tolist() == [k % 10 for k in range(NUM_SAMPLES)]
    # read as ADM's evaluator.py reads it: a stored arr_0.npy member with a version 1.0 header
    with zipfile.ZipFile(out / "samples.npz") as archive, archive.open("arr_0.npy") as member:
        assert archive.getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
        assert np.lib.format.read_magic(member) == (1, 0)
        assert np.lib.format.read_array_header_1_0(member) == ((NUM_SAMPLES, 8, 8, 3), False, np.uint8)
        assert member.read() == images.tobytes()  # then the images, read in batches as they are
    assert (out / "samples.png").is_file()
    assert not (out / "samples.batches").exists()  # every sample is in the .npz


def test_merging_holds_one_batch_whatever_the_number_of_batches(tmp_path):
    rng = np.random.default_rng(0)
    shape = (16, 32, 32, 3)  # 49 KB of images a batch

    def batches(n: int) -> list[Path]:
        folder = tmp_path / f"n{n}"
        folder.mkdir()
        for b in range(n):
            images = rng.integers(0, 256, shape, dtype=np.uint8)
            np.savez(folder / f"batch_{b:09d}.npz", images=images, labels=np.arange(16) + 16 * b)
        return sorted(folder.glob("batch_*.npz"))

    def peak_merging(files: list[Path]) -> int:
        tracemalloc.start()  # numpy's buffers are traced
        merge_batches(files, files[0].parent / "samples.npz", what="the samples")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    few, many = batches(2), batches(40)  # 40 batches: 2 MB of images
    merge_batches(few, tmp_path / "warm_up.npz", what="the samples")  # first-use imports are not the merge's
    peak_few, peak_many = peak_merging(few), peak_merging(many)
    assert peak_many < 1.5 * peak_few and peak_many < 40 * np.prod(shape) / 4  # not 40 batches' worth
    images, labels = arrays(many[0].parent / "samples.npz")
    assert np.array_equal(images, np.concatenate([np.load(f)["images"] for f in many]))
    assert labels.tolist() == list(range(640))


def test_a_killed_predict_resumes_to_the_identical_file(run, tmp_path, capsys):
    whole, out = tmp_path / "whole", tmp_path / "killed"
    with one_thread():
        main(predict(run, whole))
    killed = run_predict(*predict(run, out), "--trainer.callbacks+=test_samples_writer.KillAfter",
                         "--trainer.callbacks.batches", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert batch_files(out) == ["batch_000000000.npz", "batch_000000002.npz"]
    assert not (out / "samples.npz").exists()
    # another batch size would draw other samples: refused in one line, the batches left as they are
    fails_in_one_line(main, predict(run, out, batch=5), capsys, "samples of another predict", "batch_starts")
    assert batch_files(out) == ["batch_000000000.npz", "batch_000000002.npz"]
    resumed = run_predict(*predict(run, out), *held(tmp_path / "held"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out / 'samples.batches'}: 2 of 5 batches on disk" in resumed.stdout
    assert json.loads((tmp_path / "held" / "held0.json").read_text())["starts"] == [4, 6, 8]  # only the rest
    assert (out / "samples.npz").read_bytes() == (whole / "samples.npz").read_bytes()


def test_existing_samples_are_replaced_only_when_asked(run, tmp_path, capsys):
    out = tmp_path / "samples"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"earlier samples")
    fails_in_one_line(main, predict(run, out, batch=5), capsys, f"{out / 'samples.npz'} exists",
                      "--trainer.callbacks.overwrite true")
    assert (out / "samples.npz").read_bytes() == b"earlier samples"
    main(predict(run, out, "--trainer.callbacks.overwrite", "true", batch=5))
    assert arrays(out / "samples.npz")[0].shape == (NUM_SAMPLES, 8, 8, 3)


def test_a_full_disk_keeps_the_batches_and_the_same_predict_merges_them(run, tmp_path, capsys):
    out = tmp_path / "small"
    # room for the plan and the five batch files (a 4 KiB page each), not for the merged file
    with tmpfs(out, "24k"):
        fails_in_one_line(main, predict(run, out), capsys, f"cannot write {out / 'samples.npz'}",
                          "no space left on device", "run the same predict again")
        assert batch_files(out) == [f"batch_{s:09d}.npz" for s in STARTS]
        assert [p.name for p in out.iterdir()] == ["samples.batches"]  # no temporary file left
        subprocess.run(["mount", "-o", "remount,size=1m", str(out)], check=True)
        main(predict(run, out, *held(tmp_path / "held")))
        assert json.loads((tmp_path / "held" / "held0.json").read_text())["starts"] == []  # nothing redrawn
        assert arrays(out / "samples.npz")[0].shape == (NUM_SAMPLES, 8, 8, 3)


def test_a_read_only_folder_is_one_line(run, tmp_path, capsys):
    out = tmp_path / "ro"
    with tmpfs(out, "1m", read_only=True):
        fails_in_one_line(main, predict(run, out, batch=5), capsys, "read-only file system",
                          "write the samples (--trainer.callbacks.output_dir) to a writable folder")


@pytest.fixture(scope="module")
def single(run, tmp_path_factory) -> Path:
    """The samples.npz of one process."""
    out = tmp_path_factory.mktemp("single") / "samples"
    with one_thread():
        main(predict(run, out))
    return out / "samples.npz"


DDP = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")


@pytest.mark.slow
def test_two_processes_merge_one_file_equal_to_one_processs(run, single, tmp_path):
    out = tmp_path / "ddp"
    ddp = run_predict(*predict(run, out), *DDP, *held(tmp_path / "held"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["samples.npz", "samples.png"]  # no per-rank files
    records = [json.loads((tmp_path / "held" / f"held{r}.json").read_text()) for r in (0, 1)]
    assert [r["starts"] for r in records] == [[0, 4, 8], [2, 6]]  # whole batches dealt in turn
    for record in records:
        assert record["counts"] == [record["counts"][0]] * len(record["starts"])
    assert (out / "samples.npz").read_bytes() == single.read_bytes()


@pytest.mark.slow
def test_two_processes_resume_with_one_batch_left_for_one_rank(run, single, tmp_path):
    out = tmp_path / "ddp"
    killed = run_predict(*predict(run, out), "--trainer.callbacks+=test_samples_writer.KillAfter",
                         "--trainer.callbacks.batches", "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_predict(*predict(run, out), *DDP, *held(tmp_path / "held"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads((tmp_path / "held" / f"held{r}.json").read_text()) for r in (0, 1)]
    assert [r["starts"] for r in records] == [[8], []]  # rank 1 has nothing to draw, and still meets rank 0
    assert (out / "samples.npz").read_bytes() == single.read_bytes()
