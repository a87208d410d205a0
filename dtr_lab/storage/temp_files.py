"""Hidden temporary files named after their writer, so that a later start can remove a dead writer's.

A save writes `.NAME.HOST-PID.XXXXXXXX.tmp` beside NAME and renames it over NAME once complete; a writer
killed mid-save (kill -9, an out-of-memory kill, a power cut) leaves it behind, up to a checkpoint's size.
A start of the same run removes those whose writer is gone: written on this host, by a pid no process
has now. A live writer's files are never touched, nor another host's (its processes are not visible
here); a pid since reused by another process keeps its file (the safe side). No torch imports.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

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
