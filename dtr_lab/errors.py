"""The one exception type for bad input: the CLI prints its message as one line and exits 2.

A storage fault (a full disk, a read-only or forbidden folder) is the run's environment, not a bug: it
ends in one line too, naming the file and the fix.
"""

from __future__ import annotations

import errno
import os

# {} is what to write elsewhere: the run, or the one file a command writes ("DST", "the figures (--out)")
STORAGE_FIXES = {
    errno.ENOSPC: "free space on that device or write {} elsewhere",
    errno.EDQUOT: "free space within your quota or write {} elsewhere",
    errno.EROFS: "write {} to a writable folder",
    errno.EACCES: "give yourself access to it or write {} elsewhere",
    errno.EPERM: "give yourself access to it or write {} elsewhere",
}
SAVE_DIR = "--trainer.logger.init_args.save_dir"


class DTRLabError(ValueError):
    """Bad input (config value, dataset file, checkpoint); the message names it and the fix."""

    raised: list[DTRLabError] = []  # config parsers may re-wrap the error; the CLI finds it here

    def __init__(self, message: str) -> None:
        super().__init__(message)
        DTRLabError.raised.append(self)


def storage_reason(err: OSError) -> str:
    """What the device said, in lower case ("no space left on device")."""
    return os.strerror(err.errno).lower() if err.errno else str(err)


def storage_fix(err: OSError, what: str = "the run") -> str:
    return STORAGE_FIXES.get(err.errno, "check the device and its free space").format(what)


def storage_error(
    err: OSError, path: object, what: str = "the run", kept: str = "", then: str = ""
) -> DTRLabError:
    """A storage fault met while writing path, as one line naming path (the file asked for, never a hidden
    temporary one the bytes went to first), what survived (`kept`) and the fix: write `what` elsewhere,
    `then` carry on."""
    return DTRLabError(f"cannot write {path}: {storage_reason(err)}{kept}; {storage_fix(err, what)}{then}")


def find_bad_input(exc: BaseException) -> DTRLabError | None:
    """The DTRLabError behind exc: exc itself, one in its cause chain, or one whose text it quotes; or a
    storage fault in the chain, worded as one."""
    seen, storage = exc, None
    while seen is not None:
        if isinstance(seen, DTRLabError):
            return from_worker(seen)
        if isinstance(seen, OSError) and seen.errno in STORAGE_FIXES and storage is None:
            storage = seen
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    quoted = next((e for e in reversed(DTRLabError.raised) if str(e) in text), None)
    if quoted is None and storage is not None:
        where = storage.filename if storage.filename is not None else "the run's folder"
        return DTRLabError(f"{where}: {storage_reason(storage)}; {storage_fix(storage)} ({SAVE_DIR})")
    return quoted


def from_worker(err: DTRLabError) -> DTRLabError:
    """A DataLoader worker's DTRLabError is raised again in the main process with the worker's traceback
    as its text; its last line holds the message."""
    lines = str(err).strip().splitlines()
    if len(lines) < 2 or not lines[0].startswith("Caught DTRLabError"):
        return err
    return DTRLabError(lines[-1].split("DTRLabError: ", 1)[-1])
