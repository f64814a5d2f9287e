"""Which clients take part in a round, and which of them fail: from (seed, round, client) alone."""
from __future__ import annotations

import math

import numpy as np


def sample_clients(num_clients: int, per_round: int, seed: int, rnd: int, over_selection: float = 1.0,
                   sampling: str = "without_replacement") -> list[int]:
    """Clients of a round, from an RNG of (seed, round) alone: `per_round` (times the
    over-selection) drawn without replacement, or, with `poisson`, each client on its
    own with probability per_round / num_clients (the count varies; what DP's
    Poisson accounting assumes)."""
    if sampling == "poisson":
        from fedmpi.strategies.poisson import poisson_sample

        return poisson_sample(num_clients, per_round, seed, rnd)
    k = min(num_clients, math.ceil(per_round * over_selection))
    rng = np.random.default_rng([seed, rnd, 0x5A3B])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def drops_out(seed: int, rnd: int, client: int, p: float) -> bool:
    """Whether a sampled client fails this round (emulated dropout)."""
    return p > 0 and np.random.default_rng([seed, rnd, client, 0xD0]).random() < p
