"""The studies' job engine (analysis/engine.py through analysis/study.py): submitit's local executor trains
stand-in runs; a failed run is retried and resumes from its last checkpoint; a stopped or killed study
leaves no fit behind; a cluster's submission script carries the resources asked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A run that stands in for `dtr_lab fit`: it claims its version folder (as the CLI does), writes a quality
# record row per step from its start (its --ckpt_path's step, else 0) to STEPS, and a last.ckpt at every
# step; SIGTERM/SIGINT saves and exits 128 + signum, as the CLI does. FAIL_AT=k makes a fresh start fail
# (exit 1) after step k; SLEEP=s waits s seconds a step; every start appends its argv to calls.jsonl.
STAND_IN = r"""
import json, os, signal, sys, time
import torch
from pathlib import Path
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1] if flag in args else None
run = Path(value("--trainer.logger.init_args.save_dir")) / value("--trainer.logger.init_args.name") / value(
    "--trainer.logger.init_args.version")
with open(Path(value("--trainer.logger.init_args.save_dir")) / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
run.mkdir(parents=True)
(run / "checkpoints").mkdir()
(run / "records").mkdir()
start = torch.load(value("--ckpt_path"))["global_step"] if value("--ckpt_path") else 0
step = start
def save():
    torch.save({"global_step": step}, run / "checkpoints" / "last.ckpt")
def stop(signum, frame):
    save()
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
(run / "started").write_text(str(os.getpid()))
if Path("/proc/self/autogroup").exists():
    (run / "autogroup").write_text(Path("/proc/self/autogroup").read_text())
with open(run / "records" / "quality.csv", "w") as f:
    f.write("step,metric,i,j,value\n")
    for step in range(start + 1, int(os.environ.get("STEPS", "4")) + 1):
        time.sleep(float(os.environ.get("SLEEP", "0")))
        f.write(f"{step},fid,,,{100 - step}\n")
        f.flush()
        save()
        if not value("--ckpt_path") and step == int(os.environ.get("FAIL_AT", "-1")):
            sys.exit(1)
"""

# The study's own train() over stand-in runs: RunSpec's command replaced by the stand-in's.
STUDY = r"""
import argparse, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import study
class StandIn(study.RunSpec):
    def command(self, out):
        return [sys.executable, "-c", sys.argv[3], *self.args(out)]
out = Path(sys.argv[2])
runs = [StandIn("arm", seed, []) for seed in range(int(sys.argv[4]))]
args = argparse.Namespace(jobs=2, threads=1, retries=int(sys.argv[5]), cluster="local", slurm_partition=None,
                          gpus=0)
failed = study.train(runs, out, args, 5.0, "reproduce.py")
print("FAILED", failed)
"""


def study(out: Path, seeds: int = 3, retries: int = 1, **env) -> list[str]:
    return [sys.executable, "-c", STUDY, str(REPO / "analysis"), str(out), STAND_IN, str(seeds), str(retries)]


def environment(**values) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **{k: str(v) for k, v in values.items()}}


def live_stand_ins(out: Path) -> list[int]:
    """Processes whose command line names this study's folder (its fits, their jobs and the study)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (proc / "stat").read_text().split(") ")[-1][0]
            except OSError:
                continue
            if str(out) in cmdline and state != "Z":
                pids.append(int(proc.name))
    return pids


@pytest.fixture
def analysis_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "analysis"))


def test_local_backend_trains_every_run_and_reports_progress(tmp_path):
    out = tmp_path / "study"
    done = subprocess.run(study(out), capture_output=True, text=True, timeout=180, env=environment())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("FAILED []")
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 3 and lines[-1].startswith("[3/3]")
    assert "0 running, 0 pending" in lines[-1] and "min left" in lines[0]
    for seed in range(3):
        run = out / "runs" / "arm" / f"seed{seed}"
        done = json.loads((run / "done.json").read_text())
        # the stand-in fit is one thread: its CPU seconds are positive and within its wall-clock seconds
        assert done["seconds"] >= 0 and 0 < done["cpu_seconds"] < done["seconds"] + 1
        assert (run / "records" / "quality.csv").read_text().count("fid") == 4
    assert list((out / "jobs").glob("*_result.pkl"))  # submitit's own job records


def test_a_failed_run_is_retried_and_resumes_from_its_last_checkpoint(tmp_path, analysis_path):
    from study import run_records

    out = tmp_path / "study"
    done = subprocess.run(study(out, seeds=1), capture_output=True, text=True, timeout=180,
                          env=environment(FAIL_AT=2))
    assert done.returncode == 0 and done.stdout.strip().endswith("FAILED []"), done.stdout + done.stderr
    assert "arm seed 0: attempt 1 failed" in done.stdout
    calls = [json.loads(line) for line in (out / "runs" / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2 and "--ckpt_path" not in calls[0]
    first = out / "runs" / "arm" / "seed0"
    assert calls[1][calls[1].index("--ckpt_path") + 1] == str(first / "checkpoints" / "last.ckpt")
    assert calls[1][calls[1].index("--trainer.logger.init_args.version") + 1] == "seed0.part1"
    part = first.with_name("seed0.part1")
    assert json.loads((part / "resumed.json").read_text()) == {"from_step": 2}
    # the run read back whole: steps 1-2 from the first attempt, 3-4 from its continuation, each once
    rows = run_records(first, "quality.csv")
    assert rows["step"].tolist() == [1, 2, 3, 4] and rows["value"].tolist() == [99, 98, 97, 96]


def test_a_run_that_keeps_failing_is_reported_after_its_retries(tmp_path):
    out = tmp_path / "study"
    done = subprocess.run(study(out, seeds=1, retries=0), capture_output=True, text=True, timeout=180,
                          env=environment(FAIL_AT=1))
    assert "FAILED ['arm seed 0']" in done.stdout
    assert "[1/1] arm seed 0: FAILED (dtr_lab fit exited with 1: see " in done.stdout
    assert not (out / "runs" / "arm" / "seed0" / "done.json").exists()


def test_continuation_rows_replace_the_earlier_parts_from_the_resume_step(tmp_path, analysis_path):
    """Killed after step 3 with its last checkpoint at step 2: step 3 was trained twice; the continuation's
    row is the one read."""
    from study import run_records

    run = tmp_path / "seed0"
    for folder, rows, start in ((run, [(1, 10), (2, 9), (3, 8)], None), (run.with_name("seed0.part1"),
                                [(3, 7), (4, 6)], 2)):
        (folder / "records").mkdir(parents=True)
        text = "step,metric,i,j,value\n" + "".join(f"{s},fid,,,{v}\n" for s, v in rows)
        (folder / "records" / "quality.csv").write_text(text)
        if start is not None:
            (folder / "resumed.json").write_text(json.dumps({"from_step": start}))
    rows = run_records(run, "quality.csv")[["step", "value"]].values.tolist()
    assert rows == [[1, 10], [2, 9], [3, 7], [4, 6]]
    # a continuation folder that never started (no resumed.json) counts for nothing
    run.with_name("seed0.part2").mkdir()
    assert len(run_records(run, "quality.csv")) == 4


def test_sigterm_stops_the_fits_which_save_and_the_next_start_continues_them(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.Popen(study(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment(SLEEP=0.5, STEPS=60))
    runs = [out / "runs" / "arm" / f"seed{seed}" for seed in range(3)]
    deadline = time.monotonic() + 60
    while not all((r / "started").exists() for r in runs[:2]) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 128 + signal.SIGTERM, err
    (line,) = [line for line in err.strip().splitlines() if line.startswith("reproduce.py")]
    assert "interrupted by SIGTERM: the active runs saved their last.ckpt and stopped" in line
    assert "a cut-off one continues from its last.ckpt" in line
    assert not live_stand_ins(out)  # nothing left running
    assert all((r / "checkpoints" / "last.ckpt").exists() for r in runs[:2]) and not runs[2].exists()
    again = subprocess.run(study(out), capture_output=True, text=True, timeout=180, env=environment())
    assert again.stdout.strip().endswith("FAILED []"), again.stderr
    for run in runs[:2]:  # continued from where it stopped, not retrained
        assert json.loads((run.with_name(run.name + ".part1") / "resumed.json").read_text())["from_step"] > 0
    assert not runs[2].with_name("seed2.part1").exists()


def test_sigkill_of_the_study_leaves_no_fit_running(tmp_path):
    """kill -9 of the study: its jobs watch it, so each fit saves and ends within a short grace period; a
    new start then finds the runs free and continues them."""
    out = tmp_path / "study"
    proc = subprocess.Popen(study(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=environment(SLEEP=0.5, STEPS=60))
    runs = [out / "runs" / "arm" / f"seed{seed}" for seed in range(2)]
    deadline = time.monotonic() + 60
    while not all((r / "started").exists() for r in runs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_stand_ins(out)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 20  # the grace period: a job looks at the study every second
    while live_stand_ins(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_stand_ins(out)
    assert all((r / "checkpoints" / "last.ckpt").exists() for r in runs)


def test_a_start_beside_a_live_fit_of_the_same_run_is_refused(tmp_path, monkeypatch, analysis_path):
    import fcntl

    import engine
    import study

    monkeypatch.setattr(engine, "LOCK_WAIT_S", 0.5)
    out = tmp_path / "study"
    run = study.RunSpec("arm", 0, [])
    lock = engine.lock_path(run.directory(out))
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a fit of an earlier start, still alive
        args = type("Args", (), {"threads": 1})()
        with pytest.raises(SystemExit) as exit:
            study.train([run], out, args, 1.0, "reproduce.py")
    assert exit.value.code == 2
    assert not (out / "runs" / "arm" / "seed0").exists()


def test_cluster_submission_script_carries_the_resources(tmp_path, analysis_path, monkeypatch):
    """What the study would submit to SLURM, checked as far as a machine without SLURM allows: submitit
    looks for `srun` (a stand-in here) and renders the sbatch script of one run."""
    import engine

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    executor = engine.make_executor("slurm", tmp_path / "jobs", threads=4, jobs=16, timeout_min=90,
                                    slurm={"partition": "gpu", "gpus_per_node": 1})
    text = engine.sbatch_text(executor)
    for line in ("#SBATCH --cpus-per-task=4", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --signal=USR2@"):
        assert line in text, line
    assert executor._executor.parameters["array_parallelism"] == 16


def test_resume_command_names_the_newest_checkpoint(tmp_path, analysis_path):
    import engine
    import torch

    run = tmp_path / "runs" / "arm" / "seed0"
    command = ["fit", "--trainer.logger.init_args.version", "seed0"]
    job = engine.FitJob(command, run, tmp_path / "log", {}, REPO)
    assert job.arguments() == command  # never started: from the start
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 7}, run / "checkpoints" / "last.ckpt")
    assert job.arguments() == ["fit", "--trainer.logger.init_args.version", "seed0.part1", "--ckpt_path",
                               str(run / "checkpoints" / "last.ckpt")]


def test_a_run_cut_off_before_its_first_checkpoint_starts_clean_keeping_its_files(tmp_path, analysis_path):
    """The CLI refuses to write into a claimed folder: a folder without a checkpoint to continue from (the
    run's own, or a continuation claimed but never begun) moves to RUN.cutoff, a later one replacing it."""
    import engine
    import torch

    run = tmp_path / "runs" / "arm" / "seed0"
    command = ["fit", "--trainer.logger.init_args.version", "seed0"]
    job = engine.FitJob(command, run, tmp_path / "log", {}, REPO)
    for attempt in ("first", "second"):
        (run / "records").mkdir(parents=True)
        (run / "records" / "quality.csv").write_text(attempt)
        assert job.arguments() == command and not run.exists()
        assert (tmp_path / "runs/arm/seed0.cutoff/seed0/records/quality.csv").read_text() == attempt
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 500}, run / "checkpoints" / "last.ckpt")
    (tmp_path / "runs/arm/seed0.part1/records").mkdir(parents=True)  # claimed; no resumed.json: never began
    args = job.arguments()
    assert args[2] == "seed0.part1" and args[-1] == str(run / "checkpoints" / "last.ckpt")
    assert not (tmp_path / "runs/arm/seed0.part1").exists()
    assert (tmp_path / "runs/arm/seed0.cutoff/seed0.part1/records").is_dir()


def test_cluster_without_slurm_is_one_line(tmp_path, run_main, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun anywhere
    arms = ("vanilla-uniform", "dtr-uniform")
    out = tmp_path / "s"
    done = run_main("reproduce.py", "--out", out, "--cluster", "slurm", "--arms", *arms, "--dry-run")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("reproduce.py: error: --cluster slurm: no `srun` on this machine")


@pytest.mark.parametrize("script", ["reproduce.py", "scaling.py"])
@pytest.mark.parametrize(
    "flags, says",
    [
        (["--seeds", "0"], "--seeds 0: a study needs at least 1 seed"),
        (["--seeds", "-1"], "--seeds -1: a study needs at least 1 seed"),
        (["--jobs", "0"], "--jobs 0: at least 1 run at a time"),
        (["--jobs", "0", "--dry-run"], "--jobs 0: at least 1 run at a time"),
        (["--threads", "0"], "--threads 0: at least 1 thread a run"),
        (["--retries", "-1"], "--retries -1: 0 or more"),
        (["--max-steps", "0"], "--max-steps 0: at least 1 (leave it out for the base config's length)"),
        (["--max-steps", "-5", "--dry-run"], "--max-steps -5: at least 1"),
        (["--seeds", "2", "--max-step", "4"], "unrecognized arguments: --max-step 4"),  # no abbreviations
    ],
)
def test_study_flags_are_checked_before_anything_starts(tmp_path, run_main, script, flags, says):
    out = tmp_path / "study"
    done = run_main(script, "--out", out, *flags)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert says in lines[-1] and not out.exists()
    if "unrecognized" not in says:
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ")


def test_study_out_that_is_a_file_is_one_line(tmp_path, run_main):
    out = tmp_path / "a_file"
    out.write_text("keep me")
    done = run_main("reproduce.py", "--out", out / "study", "--seeds", "2")
    assert done.returncode == 2 and out.read_text() == "keep me"
    (line,) = done.stderr.strip().splitlines()
    assert f"{out} is a file, not a folder" in line


def test_study_out_on_a_read_only_mount_is_one_line(tmp_path, run_main):
    """A real read-only mount (tmpfs remounted ro); skipped where this process may not mount."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("mounting is not allowed here")
    try:
        (mount / "before").write_text("x")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        done = run_main("reproduce.py", "--out", mount / "study", "--seeds", "2")
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert "is not writable (read-only or forbidden)" in line
        assert sorted(p.name for p in mount.iterdir()) == ["before"]
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.mark.slow  # real fits: starting one takes half a minute on 2 busy cores
def test_sigkill_of_reproduce_leaves_no_fit_running(tmp_path):
    """The issue's case as a user meets it: `analysis/reproduce.py` killed with SIGKILL while its real fits
    train; after a short grace period no fit of that study is running, and each saved its last.ckpt."""
    out = tmp_path / "study"
    args = [sys.executable, str(REPO / "analysis" / "reproduce.py"), "--out", str(out), "--max-steps", "5000",
            "--seeds", "1", "--num-samples", "100", "--arms", "vanilla-uniform", "dtr-uniform"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
    runs = [out / "runs" / arm / "seed0" for arm in ("vanilla-uniform", "dtr-uniform")]
    deadline = time.monotonic() + 300
    while not all((r / "checkpoints").exists() for r in runs) and time.monotonic() < deadline:
        time.sleep(0.5)  # both fits have claimed their folders: they are training
    fits = [pid for pid in live_stand_ins(out) if b"dtr_lab" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert fits, "no fit started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60  # the grace period: a job looks every second; the fit saves, then ends
    while live_stand_ins(out) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not live_stand_ins(out)
    assert all((r / "checkpoints" / "last.ckpt").exists() for r in runs)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no scheduler autogroups here")
def test_a_niced_study_keeps_its_fits_niced(tmp_path):
    """Each fit runs in a session of its own, which Linux schedules as a group of its own: a study started
    with `nice` hands its niceness to that group, so its fits yield to the user's other work."""
    out = tmp_path / "study"
    done = subprocess.run(["nice", "-n", "3", *study(out, seeds=1)], capture_output=True, text=True,
                          timeout=180, env=environment())
    assert done.returncode == 0, done.stderr
    assert (out / "runs" / "arm" / "seed0" / "autogroup").read_text().strip().endswith("nice 3")
