"""The callbacks' side of the run-record format (:mod:`dtr_lab.records`): tensors in, rows out."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dtr_lab import records
from dtr_lab.records import COLUMNS, write_intervals

__all__ = ["COLUMNS", "RecordWriter", "write_intervals"]


class RecordWriter(records.RecordWriter):
    """:class:`dtr_lab.records.RecordWriter` that also takes tensors for vectors and matrices."""

    def vector(
        self, step: int, metric: str, values: torch.Tensor, index: Iterable[int] | None = None
    ) -> None:
        """One row per entry; i is the entry's index (or the given labels, e.g. timesteps)."""
        super().vector(step, metric, values.detach().float().cpu().tolist(), index)

    def matrix(self, step: int, metric: str, values: torch.Tensor) -> None:
        """One row per entry (i, j) of a 2-D tensor."""
        super().matrix(step, metric, values.detach().float().cpu().tolist())
