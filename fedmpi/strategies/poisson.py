"""Proposed `federation.sampling: poisson`: each client joins a round independently.

Each of the N clients takes part with probability q = clients_per_round / N,
from an RNG of (seed, round, client) alone, so the number sampled varies
(Binomial(N, q), mean clients_per_round, possibly 0). This is the sampling
the Poisson RDP analysis (and Opacus, and McMahan et al. 2018) assume: under
add/remove-one adjacency it gives a much smaller ε than k-of-N without
replacement at the same z (see accounting.py). DP-FedAvg's fixed
denominator stays clients_per_round. A round with nobody sampled still
releases the noise (a round that silently stays put would leak that).
"""
from __future__ import annotations

import numpy as np


def poisson_sample(num_clients: int, per_round: int, seed: int, rnd: int) -> list[int]:
    """Clients of a round, each independently with probability per_round / num_clients."""
    q = per_round / num_clients
    return [c for c in range(num_clients) if np.random.default_rng([seed, rnd, c, 0x9015]).random() < q]
