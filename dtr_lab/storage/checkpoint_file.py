"""Reading a `--ckpt_path` file before the trainer does, so a bad file ends in one line naming what is
wrong, before the run directory is created.

Lightning loads the checkpoint inside `trainer.fit/validate/test/predict`, after it has opened the new
run directory, and lets torch's errors through as tracebacks. The cost of checking first is one extra
read of the file: the zip CRC check reads every byte once (torch.load itself never checks the CRCs,
so a bit flip in a tensor would otherwise load silently), and the tensors are memory-mapped, not copied.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from dtr_lab.errors import DTRLabError

# Lightning's own ckpt_path values, resolved by the trainer (not files)
LIGHTNING_KEYWORDS = ("last", "best", "hpc", "registry")
SUFFIXES = (".ckpt", ".pt", ".pth")  # a folder's files named as checkpoints, offered in its stead
FIX = "pass a checkpoint written by `python -m dtr_lab fit`, e.g. runs/<name>/version_N/checkpoints/last.ckpt"


def read_checkpoint(
    path: str | Path, weights_only: bool = True, option: str = "--ckpt_path"
) -> dict[str, Any]:
    """The checkpoint at `path` (tensors memory-mapped); DTRLabError saying why it is unreadable, naming
    it as `option path`. weights_only as the trainer will load it (torch's default, True, unless the
    config says false). The one way dtr_lab and its analysis scripts load a checkpoint."""
    where = f"{option} {path}"
    check_archive(Path(path), where, FIX)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception as err:  # torch's unpickler raises many types for bytes it cannot interpret
        raise DTRLabError(f"{where} cannot be read by torch.load ({first_line(err)}); {FIX}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise DTRLabError(f"{where} holds no model state_dict, so it is not a Lightning checkpoint; {FIX}")
    state = checkpoint["state_dict"]
    name = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if name is not None:  # a shape check or load_state_dict would fail on it (dtr_lab keeps no _extra_state)
        raise DTRLabError(
            f"{where}: its state_dict entry {name!r} is of type {type(state[name]).__name__}, not a tensor; "
            + FIX
        )
    return checkpoint


def check_archive(path: Path, where: str, fix: str) -> None:
    """A file torch.load can open: present, not a folder, not empty, a zip archive (what torch.save writes)
    whose CRCs hold; else one DTRLabError line `where` ... `fix` saying which of these it is not."""
    if not path.exists():
        raise DTRLabError(f"{where}: no such file; {fix}")
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)
        hint = f"pass one of the files in it ({', '.join(inside[:3])})" if inside else fix
        raise DTRLabError(f"{where} is a folder, not a checkpoint file; {hint}")
    size = path.stat().st_size
    if size == 0:
        raise DTRLabError(f"{where} is empty (0 bytes: a save that never finished?); {fix}")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(4)
        what = (
            f"truncated ({size} bytes, the end of its zip archive is missing: an interrupted save or copy)"
            if head.startswith(b"PK")
            else "not a PyTorch checkpoint (torch.save writes a zip archive; this file is something else)"
        )
        raise DTRLabError(f"{where} is {what}; {fix}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DTRLabError(f"{where} is a damaged zip archive ({err}); {fix}") from None
    if damaged is not None:
        raise DTRLabError(
            f"{where} is damaged: {damaged} fails its CRC check (bit flips on disk or a bad copy); "
            f"use another checkpoint of the run (e.g. an epoch=…-step=….ckpt) or copy it again"
        )


def first_line(err: Exception) -> str:
    """An exception's reason in one line of at most 200 characters: torch's unpickler errors run to pages
    of advice, with ANSI codes, around their reason (the line after "WeightsUnpickler error:")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    found = re.search(r"GLOBAL ([\w.]+)", text)  # "Unsupported global: GLOBAL x", "unsupported GLOBAL x"
    if found:  # the one fact in a page of advice on allow-lists
        return f"it pickles {found.group(1)}, which torch.load(weights_only=True) does not build"
    text = text.split("WeightsUnpickler error:", 1)[-1]
    return (text.strip().splitlines() or [type(err).__name__])[0].strip()[:200]
