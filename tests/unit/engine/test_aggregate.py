"""Aggregation: sample-weighted average over the clients that arrived."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedmpi.algorithms.aggregate import Aggregator, ClientResult, drops_out, sample_clients
from fedmpi.config import ExperimentConfig
from fedmpi.metering.ledger import Ledger
from fedmpi.net.clock import VirtualClock
from fedmpi.net.link import Link
from fedmpi.net.profiles import LinkProfile


@pytest.fixture
def rt(single_rank):
    return single_rank


def _exp(rt, **fed):
    cfg = ExperimentConfig()
    for k, v in fed.items():
        setattr(cfg.federation, k, v)
    ledger = Ledger()
    link = Link(rt, [LinkProfile(10, 10, 0)] * 4, VirtualClock(), ledger)
    return SimpleNamespace(cfg=cfg, rt=rt, link=link, ledger=ledger, speeds=[1e9] * 4, server_speed=1e12, buffers={})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weighted_average_over_arrived_clients(rt, dtype):
    exp = _exp(rt, aggregation_dtype=dtype)
    agg = Aggregator(exp, [0, 1, 2, 3], numel=3, upload_bytes=12)
    agg.add(ClientResult(0, torch.tensor([1.0, 1.0, 1.0]), num_samples=1, loss_sum=0.5, flops=123_456_789_012_345,
                         seconds=0.1))
    agg.add(ClientResult(1, torch.tensor([5.0, 9.0, 1.0]), num_samples=3, loss_sum=0.3, flops=200))
    agg.add(ClientResult(2, None))  # dropped out: renormalise over the other two
    agg.add(ClientResult(3, torch.tensor([100.0, 100.0, 100.0]), num_samples=0))
    avg, stats = agg.finish()
    assert avg.tolist() == pytest.approx([(1 + 15) / 4, (1 + 27) / 4, 1.0])
    assert [stats[c]["arrived"] for c in range(4)] == [1, 1, 0, 1]
    up = [r for r in exp.ledger.pending if r.direction == "up"]
    assert [(r.client, r.bytes) for r in up] == [(0, 12), (1, 12), (3, 12)]
    compute = {r.client: r.flops for r in exp.ledger.pending if r.kind == "compute"}
    assert compute == {0: 123_456_789_012_345, 1: 200}  # exact even through a float32 buffer
    assert stats[0]["seconds"] == 0.1 and stats[0]["loss_sum"] == 0.5


def test_deadline_cuts_stragglers_and_over_selection_keeps_first(rt):
    exp = _exp(rt, deadline_s=10.0, over_selection=1.5, clients_per_round=2)
    agg = Aggregator(exp, [0, 1, 2], numel=1, upload_bytes=4)
    agg.add(ClientResult(0, torch.tensor([2.0]), num_samples=1, seconds=5.0))
    agg.add(ClientResult(1, torch.tensor([4.0]), num_samples=1, seconds=3.0))
    agg.add(ClientResult(2, torch.tensor([8.0]), num_samples=1, seconds=11.0))  # misses the deadline
    avg, stats = agg.finish()
    assert avg.tolist() == [3.0]
    assert [stats[c]["arrived"] for c in range(3)] == [1, 1, 0]

    exp = _exp(rt, over_selection=1.5, clients_per_round=2)
    agg = Aggregator(exp, [0, 1, 2], numel=1, upload_bytes=4)
    for c, secs in ((0, 9.0), (1, 3.0), (2, 4.0)):
        agg.add(ClientResult(c, torch.tensor([float(c)]), num_samples=1, seconds=secs))
    avg, stats = agg.finish()
    assert avg.tolist() == [1.5]  # clients 1 and 2 finished first
    assert [stats[c]["arrived"] for c in range(3)] == [0, 1, 1]


def test_sampling_and_dropout_depend_on_seed_and_round_only():
    a = sample_clients(100, 10, seed=1, rnd=4)
    assert a == sample_clients(100, 10, seed=1, rnd=4) and len(set(a)) == 10
    assert a != sample_clients(100, 10, seed=1, rnd=5)
    assert len(sample_clients(100, 10, seed=1, rnd=4, over_selection=1.3)) == 13
    drops = [drops_out(0, r, c, 0.3) for r in range(50) for c in range(20)]
    assert 0.25 < sum(drops) / len(drops) < 0.35
