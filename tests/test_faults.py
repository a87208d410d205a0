"""Faults never lose a run: kill -9 and a full disk during a save, a read-only output folder, SIGTERM,
divergence, mid-epoch resume, and a checkpoint loaded under another model's config.

Real faults where the machine allows them (a small tmpfs that fills up, a read-only mount, real signals);
the patched torch.save variants stay as the portable fallback where mounting is not allowed."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import DIGITS, REPO, run_cli, run_dir, scalars, tiny, tiny_module, tmpfs
from lightning.pytorch.loggers import TensorBoardLogger

from dtr_lab.cli import main
from dtr_lab.data.base import EpochShuffleSampler, ResumableDataLoader
from dtr_lab.errors import DTRLabError
from dtr_lab.model_checks import check_identity
from dtr_lab.mtl import CAGrad, NashMTL, PCGrad, UncertaintyWeighting
from dtr_lab.routing import NoRouting
from dtr_lab.storage.checkpointing import AtomicCheckpointIO
from dtr_lab.storage.run_dir import claim_log_dir
from dtr_lab.storage.temp_files import current_umask, remove_dead_writers_temps, write_atomically

DTR = [*DIGITS, "--config", str(REPO / "experiments/routing/dtr.yaml")]
VANILLA = [*DIGITS, "--config", str(REPO / "experiments/routing/vanilla.yaml")]

# Runs the CLI with torch.save replaced: at global step FAULT_STEP it writes half the checkpoint and then
# FAULT (hang: signals the test through FAULT_MARKER and sleeps, to be killed; enospc: the disk is full).
# FAULT=analysis makes the end-of-fit sample grid fail instead.
FAULTY_SAVE = """
import errno, io, os, sys, time, torch
from dtr_lab.callbacks import SampleGrid
from dtr_lab.cli import main
def fail(*args):
    raise RuntimeError("injected analysis failure")
if os.environ["FAULT"] == "analysis":
    SampleGrid.on_train_end = fail
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("global_step") == int(os.environ["FAULT_STEP"]):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        if os.environ["FAULT"] == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        open(os.environ["FAULT_MARKER"], "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
main(sys.argv[1:])
"""


# Runs the CLI with the logger's listing of existing versions held for a second: every start that races
# another lists the same versions first, so both pick the same next version_N (the widened race window).
SLOW_LISTING = """
import sys, time
from lightning.pytorch.loggers import TensorBoardLogger  # its own _get_next_version, not fabric's
from dtr_lab.cli import main
listing = TensorBoardLogger._get_next_version
def slow(self):
    version = listing(self)
    time.sleep(1)
    return version
TensorBoardLogger._get_next_version = slow
main(sys.argv[1:])
"""


def dtr_lab_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("dtr_lab:")]


def assert_complete_checkpoints(run: Path) -> dict[str, int]:
    """Every file under a checkpoint name loads; returns name -> global_step."""
    steps = {}
    for path in sorted((run / "checkpoints").glob("*.ckpt")):
        steps[path.name] = torch.load(path, weights_only=False, map_location="cpu")["global_step"]
    return steps


def cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", FAULTY_SAVE, *args],
        cwd=REPO,
        env={**os.environ, "FAULT_STEP": "-1", "FAULT": "none", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------ fast
def test_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "last.ckpt"
    write_atomically(target, lambda f: f.write(b"good"))
    # the mode a plain open() would give (mkstemp alone gives 0600)
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()

    def half_then_full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(
        DTRLabError, match=f"cannot write {target}: no space left on device .*intact"
    ) as raised:
        write_atomically(target, half_then_full, what="DST")
    assert raised.value.__cause__.errno == errno.ENOSPC and "write DST elsewhere" in str(raised.value)
    assert target.read_bytes() == b"good"

    def refuse_another_way(f):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):  # not a storage fault the user can fix: as it is
        write_atomically(target, refuse_another_way)
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temporary file is gone


def test_a_real_full_disk_fails_the_save_in_one_line_and_keeps_the_previous_file(tmp_path):
    """torch.save turns ENOSPC into `RuntimeError: ... unexpected pos`; the write still fails as ENOSPC."""
    big = {"weights": torch.zeros(400_000)}  # 1.6 MB on a 1 MB disk
    with tmpfs(tmp_path / "disk", "1m") as disk:
        target = disk / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"global_step": 2}, target)
        with pytest.raises(DTRLabError) as raised:
            write_atomically(target, lambda f: torch.save(big, f))
        assert raised.value.__cause__.errno == errno.ENOSPC and ".tmp" not in str(raised.value)
        with pytest.raises(DTRLabError, match=r"cannot write .*last.ckpt: no space left on device .*intact"):
            AtomicCheckpointIO().save_checkpoint(big, target)
        assert torch.load(target) == {"global_step": 2}
        assert [p.name for p in disk.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_read_only_output_folder_is_one_line(tmp_path, capsys):
    with tmpfs(tmp_path / "readonly", "1m", read_only=True) as folder:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", *DIGITS, *tiny(folder, steps=2)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        (line,) = dtr_lab_lines(err)
        assert "read-only file system" in line and "--trainer.logger.init_args.save_dir" in line, line
        assert "Traceback" not in err


class SlowListing(TensorBoardLogger):
    """Lists the existing versions, then waits, so racing starts all pick the same next version."""

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        time.sleep(0.05)
        return version


def claim_after(barrier, root: str, versions) -> None:
    barrier.wait()  # both processes start their claim at the same instant
    versions.put(claim_log_dir(SlowListing(root, name="digits")).path.name)


def test_racing_starts_claim_separate_version_folders(tmp_path):
    """Two real processes claim a version under one logger folder at once, 20 times: never the same one."""
    fork = multiprocessing.get_context("fork")  # the children need no fresh interpreter: seconds in all
    for trial in range(20):
        barrier, versions = fork.Barrier(2), fork.Queue()
        root = str(tmp_path / str(trial))
        procs = [fork.Process(target=claim_after, args=(barrier, root, versions)) for _ in "ab"]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        assert [proc.exitcode for proc in procs] == [0, 0]
        assert sorted(versions.get(timeout=5) for _ in procs) == ["version_0", "version_1"]


def test_a_named_version_that_exists_is_refused_before_anything_is_written(tmp_path):
    existing = tmp_path / "digits" / "version_0"
    existing.mkdir(parents=True)
    (existing / "metrics.csv").write_text("step,value\n")
    with pytest.raises(DTRLabError, match="version_0 exists already.*logger.init_args.version unset"):
        claim_log_dir(TensorBoardLogger(tmp_path, name="digits", version=0))
    assert [p.name for p in existing.iterdir()] == ["metrics.csv"]


def write_and_hang(target: str, ready) -> None:
    """A writer that stops half-way through a save: its temporary file stays until it is killed."""

    def half(f):
        f.write(b"half a checkpoint")
        f.flush()
        ready.put(os.getpid())
        time.sleep(600)

    write_atomically(Path(target), half)


def test_a_killed_writers_temporary_file_is_removed_and_a_live_ones_kept(tmp_path):
    """Two real writers hang mid-save; one is killed with -9. Only the dead one's file is stale."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Queue()
    writers = {name: fork.Process(target=write_and_hang, args=(str(tmp_path / name), ready)) for name in "ab"}
    for writer in writers.values():
        writer.start()
    assert sorted(ready.get(timeout=60) for _ in writers) == sorted(w.pid for w in writers.values())
    other_host = tmp_path / ".last.ckpt.elsewhere-1.abcdefgh.tmp"  # a pid this host cannot judge
    other_host.write_bytes(b"")
    os.kill(writers["a"].pid, signal.SIGKILL)
    writers["a"].join()  # reaped: no process has its pid now
    try:
        temps = {p.name.split(".")[1]: p for p in tmp_path.iterdir() if p != other_host}
        assert sorted(temps) == ["a", "b"]
        assert remove_dead_writers_temps(tmp_path) == [temps["a"]]
        assert sorted(tmp_path.iterdir()) == sorted([temps["b"], other_host])  # the live writer's is kept
    finally:
        writers["b"].kill()
        writers["b"].join()


def test_loader_resumes_mid_epoch_in_the_same_order():
    data = torch.utils.data.TensorDataset(torch.arange(50))

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(
            data, batch_size=4, sampler=EpochShuffleSampler(50, seed=3), drop_last=True
        )

    straight = loader()
    straight.sampler.set_epoch(2)
    expected = [b[0].tolist() for b in straight]  # 12 batches; the last 2 indices dropped
    first = loader()
    first.sampler.set_epoch(2)
    seen = [b[0].tolist() for _, b in zip(range(5), first, strict=False)]
    state = first.state_dict()
    assert state == {"epoch": 2, "position": 5}
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # as Lightning does, before the first fetch
    rest = [b[0].tolist() for b in resumed]
    assert seen + rest == expected
    assert resumed.state_dict() == {"epoch": 2, "position": 12}  # positions count from the epoch start
    resumed.sampler.set_epoch(3)  # the next epoch starts from its first batch
    assert len(list(resumed)) == 12
    at_end = loader()
    at_end.load_state_dict({"epoch": 2, "position": 12})
    at_end.sampler.set_epoch(3)  # resumed after the last batch of epoch 2: epoch 3 is whole
    assert len(list(at_end)) == 12


def test_checkpoint_identity_names_each_field_and_its_override():
    dtr = tiny_module()
    saved = dtr.identity()
    assert saved["routing"] == {"class": "DTRRouting", "alpha": 4.0, "beta": 0.8}
    assert saved["net"] == "DiT(DiT-T/2)"
    assert saved["num_timesteps"] == 100 and saved["mtl"] == "none"
    check_identity(dtr, saved)  # its own checkpoint loads
    vanilla = tiny_module()
    vanilla.routing = NoRouting()
    with pytest.raises(
        DTRLabError, match=r"routing=DTRRouting\(alpha=4.0, beta=0.8\) but .* routing=NoRouting\(\)"
    ):
        check_identity(vanilla, saved)
    with pytest.raises(DTRLabError, match="mtl=none but the config has mtl=PCGrad"):
        check_identity(tiny_module(mtl=PCGrad()), saved)
    check_identity(tiny_module(allow_checkpoint_mismatch=["mtl"], mtl=PCGrad()), saved)
    with pytest.warns(UserWarning, match="no dtr_lab identity"):
        check_identity(dtr, None)  # a checkpoint from before the identity was stored
    with pytest.raises(DTRLabError, match="unknown field 'routnig'"):
        tiny_module(allow_checkpoint_mismatch=["routnig"])


def test_method_options_are_part_of_the_identity():
    """A resume with other options of the MTL method (CAGrad's c, Nash-MTL's update_every, ANT-UW's lr) is
    refused as one with other routing options is; a checkpoint saved before the identity recorded them loads
    with a warning, and one of another method is still refused."""
    saved = tiny_module(mtl=CAGrad(c=0.4)).identity()
    assert saved["mtl"].startswith("CAGrad(intervals=Intervals(num_intervals=5")
    assert saved["mtl"].endswith(", c=0.4, rescale=1, multiply_by_k=False)")
    check_identity(tiny_module(mtl=CAGrad(c=0.4)), saved)
    refused = r"trained with mtl=CAGrad\(.*c=0\.4.* config has mtl=CAGrad\(.*c=0\.5"
    with pytest.raises(DTRLabError, match=refused):
        check_identity(tiny_module(mtl=CAGrad(c=0.5)), saved)
    check_identity(tiny_module(mtl=CAGrad(c=0.5), allow_checkpoint_mismatch=["mtl"]), saved)
    nash = tiny_module(mtl=NashMTL(update_every=25)).identity()
    with pytest.raises(DTRLabError, match="update_every=25.* but the config has .*update_every=5,"):
        check_identity(tiny_module(mtl=NashMTL(update_every=5)), nash)
    uw = tiny_module(mtl=UncertaintyWeighting(lr=0.025)).identity()
    with pytest.raises(DTRLabError, match="lr=0.025.* but the config has .*lr=0.05"):
        check_identity(tiny_module(mtl=UncertaintyWeighting(lr=0.05)), uw)
    old = {**saved, "mtl": saved["mtl"].removesuffix(", c=0.4, rescale=1, multiply_by_k=False)") + ")"}
    assert old["mtl"] == "CAGrad(intervals=Intervals(num_intervals=5, spacing='uniform', boundaries=None))"
    with pytest.warns(UserWarning, match="without options"):
        check_identity(tiny_module(mtl=CAGrad(c=0.5)), old)
    with pytest.raises(DTRLabError, match="trained with mtl=CAGrad.* config has mtl=PCGrad"):
        check_identity(tiny_module(mtl=PCGrad()), old)


def test_an_old_row_first_checkpoint_keeps_its_layout_never_transposed():
    """Checkpoints saved before issue 21 have no pos_embed field: they were trained with the row-first
    embedding, and the module takes that layout (both networks, with a warning) instead of feeding their
    weights the transposed official one."""
    old = tiny_module()
    old.net.set_pos_embed_layout("row_first")
    old.ema.module.set_pos_embed_layout("row_first")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weights of a trained model (adaLN-Zero starts with zero outputs)
        for p in old.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    saved = {k: v for k, v in old.identity().items() if k != "pos_embed"}  # an identity of before issue 21
    state = old.state_dict()
    x, t, y = torch.randn(3, 1, 8, 8, generator=gen), torch.tensor([0, 50, 99]), torch.tensor([1, 2, 3])
    expected = old.net(x, t, y)
    new = tiny_module()
    assert new.identity()["pos_embed"] == "column_first"
    with pytest.warns(UserWarning, match="trained with the row_first position embedding"):
        check_identity(new, saved)
    new.load_state_dict(state)
    assert new.identity()["pos_embed"] == "row_first"
    assert torch.equal(new.net.pos_embed, old.net.pos_embed)
    assert torch.equal(new.ema.module.pos_embed, old.net.pos_embed)
    assert torch.equal(new.net(x, t, y), expected)
    # the halves differ, so the same weights under the official layout give other outputs
    transposed = tiny_module(allow_checkpoint_mismatch=["pos_embed"])
    check_identity(transposed, saved)  # deliberately across: the config's layout stays
    transposed.load_state_dict(state)
    assert transposed.identity()["pos_embed"] == "column_first"
    assert (transposed.net(x, t, y) - expected).abs().max() > 1e-3
    with pytest.warns(UserWarning, match="row_first position embedding"):
        check_identity(tiny_module(), None)  # no identity at all: also before issue 21
    with pytest.raises(DTRLabError, match="pos_embed='diagonal', which dtr_lab does not know"):
        check_identity(tiny_module(), {**saved, "pos_embed": "diagonal"})


def test_an_old_checkpoint_validates_with_its_own_layout_and_a_warning(tmp_path):
    assert run_cli("fit", *DTR, *tiny(tmp_path, steps=2)).returncode == 0
    ckpt = run_dir(tmp_path) / "checkpoints/last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["dtr_lab_identity"]["pos_embed"] == "column_first"
    del checkpoint["dtr_lab_identity"]["pos_embed"]  # as saved before issue 21
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    proc = run_cli("validate", *DTR, *tiny(tmp_path / "v"), "--ckpt_path", str(old))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "keeps the checkpoint's row_first layout" in proc.stderr
    checkpoint["dtr_lab_identity"]["pos_embed"] = "diagonal"
    torch.save(checkpoint, old)
    proc = run_cli("validate", *DTR, *tiny(tmp_path / "bad"), "--ckpt_path", str(old))
    assert proc.returncode == 2
    (line,) = dtr_lab_lines(proc.stderr)
    assert f"--ckpt_path {old}" in line and "pos_embed='diagonal'" in line
    assert not (tmp_path / "bad").exists()  # nothing written


def test_checkpoint_of_another_routing_is_one_line(tmp_path):
    assert run_cli("fit", *DTR, *tiny(tmp_path, steps=2)).returncode == 0
    ckpt = run_dir(tmp_path) / "checkpoints/last.ckpt"
    proc = run_cli("validate", *VANILLA, *tiny(tmp_path), "--ckpt_path", str(ckpt))
    assert proc.returncode == 2
    (line,) = dtr_lab_lines(proc.stderr)
    assert "routing=DTRRouting(alpha=4.0, beta=0.8)" in line and "routing=NoRouting()" in line
    assert "--model.allow_checkpoint_mismatch [routing]" in line and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "method, steps, cadence",
    [
        ([], 12, ["--checkpoint.every_n_train_steps", "1"]),
        # checked only at the final step's save, the first save: it names no checkpoint it never wrote
        ([], 6, ["--checkpoint.every_n_train_steps", "100", "--trainer.log_every_n_steps", "50"]),
        pytest.param(
            ["--config", str(REPO / "experiments/mtl/pcgrad.yaml")],
            12,
            ["--checkpoint.every_n_train_steps", "1"],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["automatic", "first save at the end", "pcgrad"],
)
def test_divergence_stops_with_one_line_and_saves_nothing_non_finite(tmp_path, method, steps, cadence):
    proc = run_cli(
        "fit",
        *DIGITS,
        *method,
        *tiny(tmp_path, steps=steps, batch=40),  # a multiple of the 5 PCGrad intervals
        "--model.optimizer.init_args.lr",
        "1000",
        *cadence,
    )
    assert proc.returncode == 2
    (line,) = dtr_lab_lines(proc.stderr)
    assert "training diverged" in line and "lower learning rate" in line and "Traceback" not in proc.stderr
    bad_step = int(line.split("not finite at step ")[1].split(" ")[0])
    assert 0 < bad_step < steps
    run = run_dir(tmp_path)
    steps_saved = assert_complete_checkpoints(run)
    assert max(steps_saved.values(), default=0) <= bad_step  # no checkpoint after the bad step
    if "last good checkpoint: " in line:  # the checkpoint it names is there, whole and finite
        named = Path(line.split("last good checkpoint: ")[1].split(")")[0])
        state = torch.load(named, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    else:
        assert "(nothing saved)" in line and not steps_saved
    assert bool(steps_saved) == (cadence[1] == "1")


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_a_failing_end_of_fit_analysis_costs_no_trained_steps(tmp_path):
    """5 steps, periodic checkpoints at 2 and 4; the final step is saved before the sample grid fails."""
    proc = cli("fit", *DIGITS, *tiny(tmp_path, steps=5), env={"FAULT": "analysis"})
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1 and "injected analysis failure" in stderr  # a bug keeps its traceback
    assert assert_complete_checkpoints(run_dir(tmp_path))["last.ckpt"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["hang", "enospc"])
def test_kill_or_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, fault):
    """The save of step 4 writes half its bytes, then the process is killed (-9) or the disk is full."""
    marker = tmp_path / "saving"
    proc = cli(
        "fit",
        *DIGITS,
        *tiny(tmp_path, steps=8),
        env={"FAULT_STEP": "4", "FAULT": fault, "FAULT_MARKER": str(marker)},
    )
    if fault == "hang":
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate()[1][-2000:]
        proc.kill()
    _, stderr = proc.communicate(timeout=300)
    if fault == "hang":
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 2
        (line,) = dtr_lab_lines(stderr)
        assert "no space left" in line and "Traceback" not in stderr
    run = run_dir(tmp_path)
    assert assert_complete_checkpoints(run)["last.ckpt"] == 2  # the previous last.ckpt, whole
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if not p.name.endswith(".ckpt")]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)
    assert (leftovers != []) == (fault == "hang")  # only a killed writer leaves its hidden temp file
    if fault == "hang":  # the next start of the run (a resume from it) removes the dead writer's file
        last = run / "checkpoints/last.ckpt"
        resumed = run_cli("fit", *DIGITS, *tiny(tmp_path, steps=3), "--ckpt_path", str(last))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert all(p.name.endswith(".ckpt") for p in (run / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_real_full_disk_during_training_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path):
    """A 45 MB tmpfs holds the step-2 checkpoint and last.ckpt (20 MB each); the step-4 save fills it."""
    with tmpfs(tmp_path / "disk", "45m") as disk:
        proc = run_cli("fit", *DIGITS, *tiny(disk, steps=8))
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = dtr_lab_lines(proc.stderr)
        assert "no space left on device" in line and "--ckpt_path" in line and "Traceback" not in proc.stderr
        run = run_dir(disk)
        assert assert_complete_checkpoints(run)["last.ckpt"] == 2
        assert all(p.name.endswith(".ckpt") for p in (run / "checkpoints").iterdir())  # no temporary file


@pytest.mark.slow
def test_two_fits_racing_for_one_version_both_complete_in_separate_folders(tmp_path):
    """20 trials: two real fits started at once on one logger folder, their version listing held for a
    second so both pick the same version_N; each must finish in its own folder (or refuse in one line)."""
    for trial in range(20):
        save_dir = tmp_path / str(trial)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SLOW_LISTING, "fit", *DIGITS, *tiny(save_dir, steps=1)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in "ab"
        ]
        errors = [proc.communicate(timeout=600)[1] for proc in procs]
        for proc, err in zip(procs, errors, strict=True):
            refused = proc.returncode == 2 and len(dtr_lab_lines(err)) == 1
            assert proc.returncode == 0 or refused, err[-3000:]
        done = sorted(p.parent.parent.name for p in save_dir.glob("digits/version_*/checkpoints/last.ckpt"))
        assert len(done) == sum(proc.returncode == 0 for proc in procs) >= 1, (trial, done)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resume_continues(tmp_path):
    """SIGTERM at a random instant of training; the interrupted and the resumed run's loss logs together
    hold every step once: no row lost at the stop, none repeated."""
    proc = cli("fit", *DIGITS, *tiny(tmp_path, steps=400), "--checkpoint.every_n_train_steps", "5")
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("digits/version_0/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.05)  # training is under way once the first periodic checkpoint exists
    time.sleep(random.uniform(0, 2))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (line,) = dtr_lab_lines(stderr)
    assert line.startswith("dtr_lab: interrupted at step ") and "Traceback" not in stderr
    step = int(line.split("at step ")[1].split(":")[0])
    interrupted = run_dir(tmp_path)
    ckpt = interrupted / "checkpoints/last.ckpt"
    assert f"resume with --ckpt_path {ckpt}" in line
    assert 0 < step < 400 and assert_complete_checkpoints(interrupted)["last.ckpt"] == step
    resumed = run_cli("fit", *DIGITS, *tiny(tmp_path, steps=step + 2), "--ckpt_path", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert run_dir(tmp_path) != interrupted
    after = [s for s, _ in scalars(run_dir(tmp_path), "train/loss")]
    assert after == [step, step + 1]
    assert [s for s, _ in scalars(interrupted, "train/loss")] + after == list(range(step + 2))


@pytest.mark.slow
def test_resume_from_any_step_is_bit_exact(tmp_path):
    """14 steps straight == 3 (mid-epoch) + resume to 8 (end of fit) + resume to 14; epochs of 6 batches."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    every = ["--checkpoint.every_n_train_steps", "100"]  # only the final steps are saved
    main(["fit", *DTR, *tiny(straight, steps=14, batch=256), *every])
    losses: dict[int, float] = {}
    ckpt: list[str] = []
    for steps in (3, 8, 14):
        main(["fit", *DTR, *tiny(split, steps=steps, batch=256), *every, *ckpt])
        losses |= dict(scalars(run_dir(split), "train/loss"))
        ckpt = ["--ckpt_path", str(run_dir(split) / "checkpoints/last.ckpt")]
    a = torch.load(run_dir(straight) / "checkpoints/last.ckpt", weights_only=False)
    b = torch.load(ckpt[1], weights_only=False)
    assert a["global_step"] == b["global_step"] == 14
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    assert losses == dict(scalars(run_dir(straight), "train/loss"))  # every step, exactly
    assert sorted(losses) == list(range(14))
