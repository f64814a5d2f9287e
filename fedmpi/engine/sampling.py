"""Which clients take part in a round, and which of them fail: from (seed, round, client) alone."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleQuota:
    """At least `at_least` of `clients` in every round's sample (e.g. malicious clients
    for an attack with a guaranteed participation rate)."""
    clients: tuple[int, ...]
    at_least: int


def sample_clients(num_clients: int, per_round: int, seed: int, rnd: int, over_selection: float = 1.0,
                   sampling: str = "without_replacement", quota: SampleQuota | None = None) -> list[int]:
    """Clients of a round, from an RNG of (seed, round) alone: `per_round` (times the
    over-selection) drawn without replacement, or, with `poisson`, each client on its
    own with probability per_round / num_clients (the count varies; what DP's
    Poisson accounting assumes).

    With a quota, a sample short of it swaps its last-drawn other clients for
    quota clients drawn from a second (seed, round) RNG: still independent of
    how clients are packed into ranks, and the same sample when the quota is met."""
    if sampling == "poisson":
        from fedmpi.strategies.poisson import poisson_sample

        drawn = poisson_sample(num_clients, per_round, seed, rnd)
        if quota is not None and quota.at_least > 0:
            drawn = _meet(drawn, quota, np.random.default_rng([seed, rnd, 0x9A07]))
        return sorted(drawn)
    k = min(num_clients, math.ceil(per_round * over_selection))
    rng = np.random.default_rng([seed, rnd, 0x5A3B])
    drawn = [int(c) for c in rng.choice(num_clients, size=k, replace=False)]
    if quota is not None and quota.at_least > 0:
        drawn = _meet(drawn, quota, np.random.default_rng([seed, rnd, 0x9A07]))
    return sorted(drawn)


def _meet(drawn: list[int], quota: SampleQuota, rng: np.random.Generator) -> list[int]:
    pool = set(quota.clients)
    need = min(quota.at_least, len(pool), len(drawn)) - sum(c in pool for c in drawn)
    if need <= 0:
        return drawn
    outside = sorted(pool.difference(drawn))
    add = [int(c) for c in rng.choice(outside, size=need, replace=False)]
    others = [c for c in drawn if c not in pool]
    dropped = set(others[len(others) - need:])
    return [c for c in drawn if c not in dropped] + add


def drops_out(seed: int, rnd: int, client: int, p: float) -> bool:
    """Whether a sampled client fails this round (emulated dropout)."""
    return p > 0 and np.random.default_rng([seed, rnd, client, 0xD0]).random() < p
