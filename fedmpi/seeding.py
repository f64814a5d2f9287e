"""Seeds derived from (seed, round, client, ...): never from the rank, so the
same experiment gives the same numbers however clients are packed."""
from __future__ import annotations

import functools

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def seed_torch(*parts: int) -> None:
    """torch's generators from (seed, round, client, ...). On a CPU-only machine the CPU
    generator alone (what torch.manual_seed sets there, at 1/100 of its cost: it is called
    once per client per round)."""
    seed = derive_seed(*parts)
    if _accelerated():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@functools.lru_cache(maxsize=None)
def _accelerated() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()
