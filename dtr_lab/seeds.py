"""Seeds of the independent random streams a run derives from its one seed."""

from __future__ import annotations

SEED_STRIDE = 1_000_003  # a prime larger than any step, sample or block index a stream is keyed by
SEED_SPAN = 2**63  # torch.Generator.manual_seed takes a seed below 2**64; torch.initial_seed() may be near it


def derive_seed(seed: int, index: int) -> int:
    """The seed of stream ``index`` (a step, a sample, a block) of the base seed: seed·1 000 003 + index,
    distinct for every (seed, index) with 0 <= index < 1 000 003 and seed < 2**63 / 1 000 003; a larger
    seed (an unseeded torch.initial_seed()) wraps modulo 2**63 instead of overflowing manual_seed."""
    return (seed * SEED_STRIDE + index) % SEED_SPAN
