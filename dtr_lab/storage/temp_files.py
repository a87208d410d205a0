"""Hidden temporary files named after their writer, so that a later start can remove a dead writer's.

A save writes `.NAME.HOST-PID.XXXXXXXX.tmp` beside NAME and renames it over NAME once complete; a writer
killed mid-save (kill -9, an out-of-memory kill, a power cut) leaves it behind, up to a checkpoint's size.
A start of the same run removes those whose writer is gone: written on this host, by a pid no process
has now. A live writer's files are never touched, nor another host's (its processes are not visible
here); a pid since reused by another process keeps its file (the safe side). `write_atomically` is
the save that makes them (checkpoints, official exports, predict's samples). No torch imports.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

from dtr_lab.errors import STORAGE_FIXES, storage_error

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())
TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[\w-]+)-(?P<pid>\d+)\.\w+\.tmp")


def temp_prefix(path: Path) -> str:
    """The start of a temporary name for path written by this process: `.NAME.HOST-PID.`"""
    return f".{path.name}.{HOST}-{os.getpid()}."


def is_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_dead_writers_temps(folder: Path) -> list[Path]:
    """Delete the temporary files in folder whose writer, on this host, has died; returns them."""
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        found = TEMP.fullmatch(path.name)
        if found and found["host"] == HOST and not is_alive(int(found["pid"])):
            with contextlib.suppress(FileNotFoundError):  # another start removed it first
                path.unlink()
                removed.append(path)
    return removed


def write_atomically(path: Path, write: Any, what: str = "the run", then: str = "") -> None:
    """Call write(file) on a hidden temporary file in path's directory, then rename it to path.

    Any failure removes the temporary file. A write the device refused (a full disk, a read-only or
    forbidden folder), whatever the writer made of it (torch.save turns a full disk into `RuntimeError:
    ... unexpected pos`), is one DTRLabError line naming path (errors.storage_error: the fix writes `what`
    elsewhere, `then` carries on); any other OSError is raised as it is.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        check_stored(exc, path, what, then)
        raise
    file = None
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide the run from its group
        with os.fdopen(fd, "wb") as raw:
            file = RecordingFile(raw)
            write(file)
            raw.flush()
            os.fsync(raw.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as exc:  # also KeyboardInterrupt: never leave a partial file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        error = file.error if file is not None and file.error is not None else exc
        if isinstance(error, OSError):
            check_stored(error, path, what, then)
        if error is not exc:
            raise error from exc
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def check_stored(exc: OSError, path: Path, what: str, then: str) -> None:
    """Raise the one line of a storage fault met writing path (its cause: exc); other errors pass."""
    if exc.errno in STORAGE_FIXES:
        kept = " (the previous file under that name, if any, is intact)"
        raise storage_error(exc, path, what, kept, then) from exc


class RecordingFile:
    """A binary file whose write() keeps the first OSError it raised, for a caller whose serializer
    replaces the exception with its own."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.error = raw, None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def current_umask() -> int:
    """The process's umask (reading it means setting it; put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
