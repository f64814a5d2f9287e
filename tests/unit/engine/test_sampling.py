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


def test_a_quota_guarantees_participation_without_changing_met_samples():
    """SST-2 backdoor runs (seed 0, 10 clients, 4 a round): the one malicious client, 4,
    is never sampled in 5 rounds. A quota of 1 puts it in every round, swapping out one
    other client; the size stays 4, and a sample that already meets the quota is kept."""
    from fedmpi.data.poison import malicious_clients
    from fedmpi.engine.sampling import SampleQuota

    assert malicious_clients(10, 0.1, 0) == [4]
    plain = [sample_clients(10, 4, seed=0, rnd=r) for r in range(5)]
    assert not any(4 in s for s in plain)
    quota = SampleQuota((4,), 1)
    forced = [sample_clients(10, 4, seed=0, rnd=r, quota=quota) for r in range(5)]
    assert all(4 in s and len(s) == 4 == len(set(s)) and len(set(s) - set(p)) == 1 for s, p in zip(forced, plain))
    assert forced == [sample_clients(10, 4, seed=0, rnd=r, quota=quota) for r in range(5)]  # (seed, round) only
    # a round that already holds enough quota clients is the plain sample
    many = SampleQuota((0, 5), 2)
    assert sample_clients(10, 4, seed=0, rnd=0, quota=many) == plain[0] == [0, 3, 5, 9]
    two = SampleQuota((1, 2, 4, 6), 2)
    assert all(sum(c in two.clients for c in sample_clients(10, 4, 0, r, quota=two)) >= 2 for r in range(20))
