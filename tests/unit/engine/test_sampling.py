"""Sampling and dropout depend on (seed, round, client) only, never on the rank."""
from __future__ import annotations

from fedmpi.engine.sampling import drops_out, sample_clients


def test_sampling_and_dropout_depend_on_seed_and_round_only():
    a = sample_clients(100, 10, seed=1, rnd=4)
    assert a == sample_clients(100, 10, seed=1, rnd=4) and len(set(a)) == 10
    assert a != sample_clients(100, 10, seed=1, rnd=5)
    assert len(sample_clients(100, 10, seed=1, rnd=4, over_selection=1.3)) == 13
    drops = [drops_out(0, r, c, 0.3) for r in range(50) for c in range(20)]
    assert 0.25 < sum(drops) / len(drops) < 0.35
