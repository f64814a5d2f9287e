"""Per-round assignment of sampled clients on ranks: balanced by expected work,
deterministic, and what Runtime.rank_of_client / clients_here follow."""
from __future__ import annotations

import torch

from fedmpi.runtime.clients import balanced, round_robin
from fedmpi.engine.sampling import sample_clients
from fedmpi.runtime import Runtime


def loads(plan: dict[int, int], work) -> dict[int, float]:
    out: dict[int, float] = {}
    for c, r in plan.items():
        out[r] = out.get(r, 0.0) + work(c)
    return out


def test_equal_work_splits_evenly_where_the_deal_by_id_does_not():
    sampled = [1, 3, 5, 7, 9, 11, 13, 2, 4, 6]  # 7 odd ids: 7 / 3 on two ranks by id
    by_id = round_robin(sampled, [1, 2])
    assert sorted(loads(by_id, lambda c: 1).values()) == [3, 7]
    plan = balanced(sampled, lambda c: 1.0, [1, 2])
    assert sorted(plan) == sorted(sampled)
    assert loads(plan, lambda c: 1) == {1: 5, 2: 5}
    # heaviest first onto the least loaded rank, ties by lower id then lower rank
    assert [c for c in sorted(sampled) if plan[c] == 1] == [1, 3, 5, 7, 11]


def test_uneven_work_longest_first():
    work = {0: 10.0, 1: 7.0, 2: 5.0, 3: 4.0, 4: 4.0, 5: 2.0}.__getitem__
    plan = balanced(list(range(6)), work, [1, 2, 3])
    # LPT by hand: 0->1 (10), 1->2 (7), 2->3 (5), 3->3 (9), 4->2 (11), 5->3 (11)
    assert plan == {0: 1, 1: 2, 2: 3, 3: 3, 4: 2, 5: 3}
    assert loads(plan, work) == {1: 10.0, 2: 11.0, 3: 11.0}


def test_plans_are_the_same_on_every_rank_and_round_after_round():
    for rnd in range(20):
        sampled = sample_clients(100, 10, seed=0, rnd=rnd)
        a = balanced(sampled, lambda c: 80.0, range(1, 3))
        b = balanced(list(reversed(sampled)), lambda c: 80.0, [1, 2])
        assert a == b
        assert sorted(loads(a, lambda c: 1).values()) == [5, 5]


def test_runtime_follows_the_rounds_assignment():
    rt = Runtime(2, 4, 0, 4, "test", "gloo", torch.device("cpu"))
    assert [rt.rank_of_client(c) for c in range(6)] == [1, 2, 3, 1, 2, 3]  # by id without a plan
    rt.assignment = {0: 2, 1: 2, 4: 3}
    assert rt.clients_here([0, 1, 4, 5]) == [0, 1]
    assert rt.rank_of_client(4) == 3 and rt.rank_of_client(5) == 3  # 5 is outside the plan: by id
