"""Which rank hosts which sampled client (the assignment), chosen afresh every round.

The job's other placement question, which rank computes on which device, is
runtime/placement.py; this one is per round and pure data too.

A round takes as long as its busiest client rank. Dealing clients by id
(`1 + client % (ranks - 1)`) can put 7 of 10 sampled clients on one of two
ranks; here each round's sampled clients are spread by their expected work
(longest first onto the least loaded rank, LPT), so two ranks get 5 and 5.

The plan depends only on the sampled clients and their expected work, which
every rank computes from the config and the partition, so every rank agrees
on it without a message. Results do not depend on it: seeds, batches and
per-client state follow the client (the engine ships a client's state to
whichever rank hosts it this round), never the rank.
"""
from __future__ import annotations

import heapq
from typing import Callable, Sequence


def balanced(clients: Sequence[int], work: Callable[[int], float], ranks: Sequence[int]) -> dict[int, int]:
    """client -> rank: heaviest client first (ties: lower id) onto the rank with the least
    work so far (ties: fewer clients, then lower rank). Deterministic in its inputs."""
    if not ranks:
        raise ValueError("no client ranks to place clients on")
    heap = [(0.0, 0, r) for r in ranks]  # (work, clients, rank)
    heapq.heapify(heap)
    plan: dict[int, int] = {}
    for c in sorted(clients, key=lambda c: (-float(work(c)), c)):
        load, count, rank = heapq.heappop(heap)
        plan[c] = rank
        heapq.heappush(heap, (load + float(work(c)), count + 1, rank))
    return plan


def round_robin(clients: Sequence[int], ranks: Sequence[int]) -> dict[int, int]:
    """The fixed deal by id (the assignment before per-round balancing)."""
    return {c: ranks[c % len(ranks)] for c in clients}
