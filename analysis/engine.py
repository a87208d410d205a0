"""A study's runs as jobs of an existing engine, submitit: its local executor here, SLURM on a cluster.

Every run of a study is an independent `dtr_lab fit`. FitJob is one run as a submitit job; `Engine` submits
the runs not yet done, at most `jobs` at a time on this machine (a cluster gets them all at once, as one
job array limited to `jobs` running), retries a failed run, and prints the study's progress.

A run that stops half-way (a failure, a pre-emption, the study stopped) resumes from its last checkpoint:
its next attempt trains in a continuation folder RUN.partK (`--ckpt_path` of the previous part's
last.ckpt) whose `resumed.json` names the step it starts from; `run_parts` reads the parts back in order.
Resume is exact on the CPU (docs/reliability.md), so a resumed run's scores are a straight run's.

The study owns its fits. Each fit holds an advisory lock on RUN.lock while it lives (the lock's file
descriptor is inherited, so it is released only when the fit itself ends), so a second study never
trains beside a live fit of the same run: it waits for the lock, then refuses in one line. A fit gets
SIGTERM (saving its last.ckpt) when its job process dies (PR_SET_PDEATHSIG), and a local job watches the
study's process: if the study is killed, even by SIGKILL, its fits save and stop within a second.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import submitit

CLUSTERS = ("local", "slurm")
LOCK_WAIT_S = 60.0  # how long a start waits for fits of an earlier, stopped study to save and end


def part_directory(run_dir: Path, k: int) -> Path:
    """The k-th folder of a run: RUN itself, then its continuations RUN.part1, RUN.part2, …"""
    return run_dir if k == 0 else run_dir.with_name(f"{run_dir.name}.part{k}")


def run_parts(run_dir: Path) -> list[tuple[Path, int]]:
    """A run's folders in training order, each with the step it starts from (0 for RUN itself)."""
    parts = [(run_dir, 0)] if run_dir.is_dir() else []
    k = 1
    while part_directory(run_dir, k).is_dir():
        folder = part_directory(run_dir, k)
        try:
            parts.append((folder, int(json.loads((folder / "resumed.json").read_text())["from_step"])))
        except (OSError, ValueError, KeyError):
            break  # a continuation that never started: nothing of it counts
        k += 1
    return parts


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest part's last.ckpt, where a resumed attempt continues; None when no part saved one."""
    for folder, _ in reversed(run_parts(run_dir)):
        ckpt = folder / "checkpoints" / "last.ckpt"
        if ckpt.is_file():
            return ckpt
    return None


def move_cut_off(folders: list[Path], run_dir: Path) -> None:
    """Move folders of `run_dir` that a restart cannot continue (no checkpoint) into RUN.cutoff, replacing an
    older copy of the same folder there: the restart starts clean, and nothing it wrote is deleted."""
    aside = run_dir.with_name(run_dir.name + ".cutoff")
    for folder in folders:
        aside.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(aside / folder.name, ignore_errors=True)
        folder.rename(aside / folder.name)


def checkpoint_step(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


def lock_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".lock")


def is_locked(run_dir: Path) -> bool:
    """Whether a live fit holds the run's lock."""
    path = lock_path(run_dir)
    if not path.exists():
        return False
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def wait_unlocked(run_dirs: list[Path], seconds: float) -> list[Path]:
    """Wait up to `seconds` for every run's lock to be free; the runs still locked then."""
    deadline = time.monotonic() + seconds
    busy = [r for r in run_dirs if is_locked(r)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.5)
        busy = [r for r in busy if is_locked(r)]
    return busy


def _die_with_parent() -> None:
    """In the fit's process, a session of its own: SIGTERM when the job process that started it dies, and
    the study's niceness for its whole session (Linux; a new session is a new scheduler autogroup, which
    would otherwise weigh as much as the user's terminal, whatever `nice` the study was started with)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass  # not Linux: the study's own stop still reaches the fit through its job
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(os.nice(0)))
    except OSError:
        pass  # no autogroups here: plain niceness applies


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Took(NamedTuple):
    """What a run cost: wall-clock seconds, and the CPU seconds of its fit (user + system), which other
    load on the machine stretches far less than the wall clock; the study's estimates are calibrated on it."""

    seconds: float
    cpu_seconds: float


class FitJob(submitit.helpers.Checkpointable):
    """One run of a study as a job: `command` (a `dtr_lab fit`) in a child process, resumed from the run's
    last checkpoint when an earlier attempt saved one; what it took. `driver`: the study's process
    id on this machine (local jobs), whose death stops the fit."""

    def __init__(
        self, command: list[str], run_dir: Path, log: Path, env: dict, cwd: Path, driver: int | None = None
    ):
        self.command, self.run_dir, self.log, self.env, self.cwd = command, run_dir, log, env, cwd
        self.driver = driver
        self.proc: subprocess.Popen | None = None
        self._resumed: tuple[Path, int] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "proc": None}  # a requeued job starts its own fit

    def arguments(self) -> list[str]:
        """The fit's command: a continuation of the newest saved part, or the run from the start."""
        ckpt = last_checkpoint(self.run_dir)
        if ckpt is None:  # cut off before its first checkpoint: the CLI never writes into a claimed folder
            move_cut_off([folder for folder, _ in run_parts(self.run_dir)], self.run_dir)
            return list(self.command)
        k = len(run_parts(self.run_dir))
        folder = part_directory(self.run_dir, k)
        move_cut_off([folder] if folder.exists() else [], self.run_dir)  # claimed, cut off before it began
        folder.parent.mkdir(parents=True, exist_ok=True)
        step = checkpoint_step(ckpt)
        version = self.command.index("--trainer.logger.init_args.version") + 1
        command = list(self.command)
        command[version] = folder.name
        # the CLI claims the version folder itself: resumed.json goes in once it exists (see __call__)
        self._resumed = (folder, step)
        return [*command, "--ckpt_path", str(ckpt)]

    def __call__(self) -> Took:
        started, children = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        self._resumed = None
        lock = lock_path(self.run_dir)
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"{self.run_dir} is being trained by another live process") from None
        try:
            command = self.arguments()
            with self.log.open("a") as log:
                self.proc = subprocess.Popen(
                    command, env=self.env, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,),
                    start_new_session=True,  # a terminal's Ctrl-C reaches it once, through its job
                    preexec_fn=_die_with_parent, cwd=self.cwd,
                )
                while True:
                    try:
                        code = self.proc.wait(timeout=1.0)
                        break
                    except subprocess.TimeoutExpired:
                        self._note_resume()
                        if self.driver is not None and not alive(self.driver):
                            self.proc.terminate()  # the study is gone: save and stop
                            self.proc.wait()
                            raise RuntimeError("the study that started this run is gone") from None
            self._note_resume()
        finally:
            os.close(fd)
        if code != 0:
            raise RuntimeError(f"dtr_lab fit exited with {code}: see {self.log}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        return Took(time.time() - started, cpu)

    def _note_resume(self) -> None:
        """Write resumed.json into the continuation folder as soon as the CLI has claimed it."""
        if self._resumed and self._resumed[0].is_dir():
            folder, step = self._resumed
            (folder / "resumed.json").write_text(json.dumps({"from_step": step}))
            self._resumed = None

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Pre-emption or the time limit (submitit's signal): the fit saves its last.ckpt and stops; the
        job is requeued and its next attempt continues from it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        return super().checkpoint()


@dataclass
class Work:
    """A run to train: its name for messages, its folder, its fit command, its log, and what to do before
    its first attempt is submitted (`prepare`)."""

    name: str
    run_dir: Path
    command: list[str]
    log: Path
    prepare: Callable[[], None] = lambda: None
    attempts: int = 0
    job: object = field(default=None, repr=False)
    started: float = 0.0


def make_executor(cluster: str, folder: Path, threads: int, jobs: int, timeout_min: int, slurm: dict):
    """submitit's executor for `cluster`: each job one task with `threads` CPUs (GPUs and partition from
    `slurm` on a cluster, whose job array runs at most `jobs` at once)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job needs no import path to us
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(timeout_min=timeout_min, cpus_per_task=threads, tasks_per_node=1, nodes=1)
    if cluster == "slurm":
        extra = {f"slurm_{k}": v for k, v in slurm.items()}
        executor.update_parameters(slurm_array_parallelism=jobs, **extra)
    return executor


def failure_reason(err: Exception) -> str:
    """The job's own error line out of submitit's report (which wraps the job's traceback and log paths)."""
    lines = [line.strip() for line in str(err).splitlines()]
    raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt): ", line)]
    if raised:
        return raised[-1].split(": ", 1)[1]
    return next((line for line in lines if line), type(err).__name__)


def sbatch_text(executor) -> str:
    """The sbatch script a cluster executor would submit for one job (what `--dry-run` shows)."""
    return executor._executor._make_submission_file_text("<submitit job command>", "<uid>")


class Engine:
    """Trains `work` through `executor`, `jobs` at a time (all at once on a cluster), each run retried up
    to `retries` times; prints one line per finished run with the study's progress and time left."""

    def __init__(self, executor, jobs: int, retries: int, env: dict, cwd: Path, local: bool):
        self.executor, self.jobs, self.retries, self.env = executor, jobs, retries, env
        self.cwd, self.local = cwd, local
        self.active: list[Work] = []

    def submit(self, work: Work) -> None:
        if work.attempts == 0:
            work.prepare()
        work.attempts += 1
        work.started = time.time()
        driver = os.getpid() if self.local else None
        job = FitJob(work.command, work.run_dir, work.log, self.env, self.cwd, driver)
        work.job = self.executor.submit(job)
        self.active.append(work)

    def stop(self) -> None:
        """Cancel the active jobs; their fits save their last.ckpt and stop (this waits until they have)."""
        for work in self.active:
            work.job.cancel(check=False)
        if self.local:  # a cluster's jobs stop on its nodes
            wait_unlocked([w.run_dir for w in self.active], LOCK_WAIT_S)

    def run(self, todo: list[Work], on_done, stopped: list[int]) -> list[str]:
        """Train `todo`; `on_done(work, took)` after each success; the failures' names. `stopped` is
        filled by the caller's signal handler: no new job starts once it holds a signal."""
        pending, failed, took = list(todo), [], []
        total, finished = len(todo), 0
        while (pending and not stopped) or self.active:
            if self.local:
                while pending and len(self.active) < self.jobs and not stopped:
                    self.submit(pending.pop(0))
            elif pending and not stopped:  # a cluster: one job array, its parallelism the cluster's limit
                with self.executor.batch():
                    for work in pending:
                        self.submit(work)
                pending = []
            time.sleep(0.5)
            for work in [w for w in self.active if w.job.done()]:
                self.active.remove(work)
                try:
                    result: Took = work.job.result()
                except Exception as err:  # noqa: BLE001 (a job's failure, whatever it raised)
                    reason = failure_reason(err)
                    if work.attempts <= self.retries and not stopped:
                        print(f"{work.name}: attempt {work.attempts} failed ({reason}); retrying", flush=True)
                        pending.insert(0, work)
                        continue
                    finished += 1
                    failed.append(work.name)
                    print(f"[{finished}/{total}] {work.name}: FAILED ({reason})", flush=True)
                    continue
                finished += 1
                took.append(result.seconds)
                on_done(work, result)
                cost = f"{result.seconds:.0f} s (CPU {result.cpu_seconds:.0f} s)"
                print(f"[{finished}/{total}] {work.name}: {cost}; {self.progress(pending, took)}", flush=True)
            if stopped:  # after the finished ones are counted: only the runs still training are cut off
                self.stop()
                return failed
        return failed

    def progress(self, pending: list[Work], took: list[float]) -> str:
        """Running, pending and the time left: the median run's seconds × the runs left / parallel jobs."""
        left = len(pending) + len(self.active)
        median = sorted(took)[len(took) // 2]
        minutes = median * left / min(self.jobs, max(left, 1)) / 60
        return f"{len(self.active)} running, {len(pending)} pending, ≈ {minutes:.0f} min left"
