"""Proposed Poisson client sampling: independent per client, from (seed, round, client) alone."""
from __future__ import annotations

from fedmpi.strategies.poisson import poisson_sample


def test_count_varies_around_clients_per_round_and_replays():
    counts = [len(poisson_sample(100, 10, seed=0, rnd=r)) for r in range(400)]
    assert 9.5 < sum(counts) / len(counts) < 10.5  # mean 10, standard error 0.15
    assert len(set(counts)) > 5  # the number sampled varies
    assert poisson_sample(100, 10, 0, 3) == poisson_sample(100, 10, 0, 3) != poisson_sample(100, 10, 1, 3)
