"""Seeds of the independent random streams a run derives from its one seed."""

from __future__ import annotations

SEED_STRIDE = 1_000_003  # a prime larger than any step, sample or block index a stream is keyed by


def derive_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` (a step, a sample, a block) of the base seed: seed·1 000 003 + index,
    distinct for every (seed, index) with 0 <= index < 1 000 003."""
    return seed * SEED_STRIDE + index
