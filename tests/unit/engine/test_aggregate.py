"""Aggregation: sample-weighted average over the clients that arrived."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedmpi.config import ExperimentConfig
from fedmpi.engine.aggregate import Aggregator, ClientUpdate, WeightedSum
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
    link = Link(rt, [LinkProfile(10, 10, 0)] * 4, VirtualClock(), [1e9] * 4, 1e12, ledger=ledger)
    return SimpleNamespace(fed=cfg.federation, link=link, ledger=ledger, buffers={})


def _agg(exp, sampled, numel):
    return Aggregator(exp.link, exp.fed, exp.buffers, sampled, numel)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_weighted_average_over_arrived_clients(rt, dtype):
    exp = _exp(rt, aggregation_dtype=dtype)
    agg = _agg(exp, [0, 1, 2, 3], 3)
    agg.add(ClientUpdate(0, torch.tensor([1.0, 1.0, 1.0]), num_samples=1, loss_sum=0.5, flops=123_456_789_012_345,
                         seconds=0.1, up_bytes=12))
    agg.add(ClientUpdate(1, torch.tensor([5.0, 9.0, 1.0]), num_samples=3, loss_sum=0.3, flops=200, up_bytes=12))
    agg.add(ClientUpdate(2, None))  # dropped out: renormalise over the other two
    agg.add(ClientUpdate(3, torch.tensor([100.0, 100.0, 100.0]), num_samples=0, up_bytes=7))
    res = agg.finish()
    avg, stats = res.value, res.stats
    assert avg.tolist() == pytest.approx([(1 + 15) / 4, (1 + 27) / 4, 1.0])
    assert [stats[c]["arrived"] for c in range(4)] == [1, 1, 0, 1]
    up = [r for r in exp.ledger.pending if r.direction == "up"]
    assert [(r.client, r.bytes) for r in up] == [(0, 12), (1, 12), (3, 7)]  # each client's encoded size
    compute = {r.client: r.flops for r in exp.ledger.pending if r.kind == "compute"}
    assert compute == {0: 123_456_789_012_345, 1: 200}  # exact even through a float32 buffer
    assert stats[0]["seconds"] == 0.1 and stats[0]["loss_sum"] == 0.5


def test_deadline_cuts_stragglers_and_over_selection_keeps_first(rt):
    exp = _exp(rt, deadline_s=10.0, over_selection=1.5, clients_per_round=2)
    agg = _agg(exp, [0, 1, 2], 1)
    agg.add(ClientUpdate(0, torch.tensor([2.0]), num_samples=1, seconds=5.0, up_bytes=4))
    agg.add(ClientUpdate(1, torch.tensor([4.0]), num_samples=1, seconds=3.0, up_bytes=4))
    agg.add(ClientUpdate(2, torch.tensor([8.0]), num_samples=1, seconds=11.0, up_bytes=4))  # misses the deadline
    res = agg.finish()
    avg, stats = res.value, res.stats
    assert avg.tolist() == [3.0]
    assert [stats[c]["arrived"] for c in range(3)] == [1, 1, 0]

    exp = _exp(rt, over_selection=1.5, clients_per_round=2)
    agg = _agg(exp, [0, 1, 2], 1)
    for c, secs in ((0, 9.0), (1, 3.0), (2, 4.0)):
        agg.add(ClientUpdate(c, torch.tensor([float(c)]), num_samples=1, seconds=secs, up_bytes=4 + c))
    res = agg.finish()
    avg, stats = res.value, res.stats
    assert avg.tolist() == [1.5]  # clients 1 and 2 finished first
    assert [stats[c]["arrived"] for c in range(3)] == [0, 1, 1]
    up = [(r.client, r.bytes) for r in exp.ledger.pending if r.direction == "up"]
    assert up == [(1, 5), (2, 6)]  # only the kept clients' uploads are charged


def test_weighted_sum_first_write_is_bitwise_a_product():
    x, y = torch.randn(5, dtype=torch.float32), torch.randn(5, dtype=torch.float32)
    ws = WeightedSum(torch.empty(5, dtype=torch.float64))
    ws.add(x, 3)
    ws.add(y, 2)
    ref = torch.zeros(5, dtype=torch.float64).add_(x.double(), alpha=3).add_(y.double(), alpha=2)
    assert torch.equal(ws.total(), ref) and ws.weight == 5
    assert torch.equal(WeightedSum(torch.full((2,), 7.0)).total(), torch.zeros(2))  # nothing added: zero


def test_extra_uploads_are_an_unweighted_mean_of_their_own_kind(rt):
    exp = _exp(rt)
    agg = Aggregator(exp.link, exp.fed, exp.buffers, [0, 1, 2], 2, extra_numel=2, extra_kind="control")
    agg.add(ClientUpdate(0, torch.tensor([1.0, 2.0]), num_samples=1, up_bytes=8, extra=torch.tensor([3.0, 0.0]),
                         extra_bytes=9, bit=1.0))
    agg.add(ClientUpdate(1, torch.tensor([3.0, 6.0]), num_samples=3, up_bytes=8, extra=torch.tensor([1.0, 4.0]),
                         extra_bytes=9, bit=0.0))
    agg.add(ClientUpdate(2, None))
    res = agg.finish()
    assert res.value.tolist() == [2.5, 5.0] and res.extra.tolist() == [2.0, 2.0]  # weights 1:3; extra 1:1
    assert res.arrived == [0, 1] and res.bits == 1.0 and res.weight == 4
    up = [(r.client, r.kind, r.bytes) for r in exp.ledger.pending if r.direction == "up"]
    assert up == [(0, "update", 8), (1, "update", 8), (0, "control", 9), (1, "control", 9)]


def test_a_sum_without_normalising_is_what_dp_releases(rt):
    exp = _exp(rt)
    agg = Aggregator(exp.link, exp.fed, exp.buffers, [0, 1], 1, normalize=False)
    agg.add(ClientUpdate(0, torch.tensor([1.5]), num_samples=1))
    agg.add(ClientUpdate(1, torch.tensor([2.0]), num_samples=1))
    assert agg.finish().value.tolist() == [3.5]
