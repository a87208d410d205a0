"""What made a run directory: a fit, a fit resumed from a checkpoint, or an evaluation (test, validate,
predict) of a checkpoint, and which run directory that checkpoint came from.

The CLI writes ``command.yaml`` into the run directory it claims, before the first step: the subcommand,
the checkpoint it started from (absolute path) and that checkpoint's step. A run written before that file
existed is inferred from what it holds: ``config.yaml``'s ``ckpt_path`` and its scalar tags (a fit logs
``train/``; test ``test/``; validate ``val/`` only). No torch or training imports: runs.py reads this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

FILE = "command.yaml"
EVALUATIONS = ("test", "validate", "predict")
CHECKPOINTS = "checkpoints"  # Lightning's folder of a run's checkpoints, inside its run directory


@dataclass(frozen=True)
class RunKind:
    """kind: "fit", "resumed" (a fit from a checkpoint) or one of EVALUATIONS; ckpt_path: the checkpoint
    it started from (None for a fresh fit); ckpt_step: that checkpoint's step, where known."""

    kind: str
    ckpt_path: str | None = None
    ckpt_step: int | None = None

    @property
    def parent(self) -> Path | None:
        """The run directory that wrote the checkpoint (…/version_N/checkpoints/x.ckpt -> …/version_N)."""
        if not self.ckpt_path:
            return None
        path = Path(self.ckpt_path)
        return path.parent.parent if path.parent.name == CHECKPOINTS else None


def write(run_dir: str | Path, subcommand: str, ckpt_path: str | None, ckpt_step: int | None) -> None:
    """Record the command that made run_dir (called by the CLI once it has claimed the directory)."""
    kind = "resumed" if subcommand == "fit" and ckpt_path else subcommand
    path = str(Path(ckpt_path).resolve()) if ckpt_path and Path(ckpt_path).exists() else ckpt_path
    text = yaml.safe_dump({"kind": kind, "ckpt_path": path, "ckpt_step": ckpt_step}, sort_keys=False)
    (Path(run_dir) / FILE).write_text(text)


def read(run_dir: Path, config: dict, tags: set[str]) -> RunKind:
    """The run's kind from its command.yaml, or inferred from its config and scalar tags without one."""
    file = run_dir / FILE
    try:
        written = yaml.safe_load(file.read_text()) if file.is_file() else None
    except yaml.YAMLError:
        written = None  # cut off while written: inferred as for an older run
    if isinstance(written, dict) and written.get("kind"):
        return RunKind(written["kind"], written.get("ckpt_path"), written.get("ckpt_step"))
    ckpt_path = config.get("ckpt_path")
    ckpt_path = str(ckpt_path) if ckpt_path else None
    prefixes = {tag.split("/", 1)[0] for tag in tags}
    if "train" in prefixes:
        return RunKind("resumed" if ckpt_path else "fit", ckpt_path)
    if "test" in prefixes:
        return RunKind("test", ckpt_path)
    if ckpt_path:
        return RunKind("validate" if "val" in prefixes else "predict", ckpt_path)
    return RunKind("fit")
