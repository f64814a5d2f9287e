"""The Link's accounting: bytes are the payload's size, time is the formula."""
from __future__ import annotations

import pytest
import torch

from fedmpi.metering.ledger import Ledger
from fedmpi.net.clock import RealtimeClock, VirtualClock
from fedmpi.net.link import Link
from fedmpi.net.profiles import LinkProfile, PRESETS, client_profiles, transfer_seconds
from fedmpi.config import NetworkConfig


def test_transfer_formula():
    # 1 MB over 8 Mbit/s = 1 s, plus 20 ms latency.
    assert transfer_seconds(1_000_000, 8.0, 20.0) == pytest.approx(1.02)
    p = LinkProfile(up_mbps=2.0, down_mbps=40.0, latency_ms=5.0)
    assert p.seconds(500_000, "up") == pytest.approx(0.005 + 500_000 * 8 / 2e6)
    assert p.seconds(500_000, "down") == pytest.approx(0.005 + 500_000 * 8 / 40e6)


def test_heterogeneous_profiles_are_seeded_and_mean_preserving():
    cfg = NetworkConfig(profile="wifi", heterogeneity=0.5)
    a = client_profiles(cfg, 2000, seed=3)
    assert a == client_profiles(cfg, 2000, seed=3)
    assert a != client_profiles(cfg, 2000, seed=4)
    mean_up = sum(p.up_mbps for p in a) / len(a)
    assert mean_up == pytest.approx(PRESETS["wifi"].up_mbps, rel=0.05)
    assert len({p.up_mbps for p in a}) > 1000


def test_trace_profiles(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("client,up_mbps,down_mbps,latency_ms\n0,1.5,10,30\n1,3,20,\n")
    profs = client_profiles(NetworkConfig(trace=str(trace)), 5, seed=0)
    assert profs[0] == LinkProfile(1.5, 10.0, 30.0)
    assert profs[1] == LinkProfile(3.0, 20.0, 20.0)  # default latency
    assert profs[2] == profs[0] and profs[3] == profs[1]  # the trace cycles


def test_broadcast_charges_each_client_exact_bytes(single_rank, tmp_path):
    rt = single_rank
    profiles = [LinkProfile(10.0, 100.0, 20.0), LinkProfile(1.0, 5.0, 50.0), PRESETS["mobile"]]
    ledger = Ledger(tmp_path / "ledger.jsonl")
    link = Link(rt, profiles, VirtualClock(), [1e9, 2e9, 4e9], 1e12, ledger=ledger)
    link.begin_round(3)
    payload = torch.zeros(1234, dtype=torch.float32)
    link.broadcast(payload, kind="model", clients=[0, 2])
    link.reduce(torch.zeros(10, dtype=torch.float64), kind="update", uploads={"update": {2: 4936}})
    rows = ledger.pending
    assert [(r.client, r.direction, r.kind, r.bytes) for r in rows] == [
        (0, "down", "model", 1234 * 4), (2, "down", "model", 1234 * 4), (2, "up", "update", 4936)]
    assert rows[0].seconds == pytest.approx(0.020 + 1234 * 4 * 8 / 100e6)
    assert rows[1].seconds == pytest.approx(0.050 + 1234 * 4 * 8 / 20e6)
    assert rows[2].seconds == pytest.approx(0.050 + 4936 * 8 / 5e6)
    # The same formula gives the client's running time on the rank hosting it.
    assert link.elapsed(2) == pytest.approx(rows[1].seconds + rows[2].seconds)
    assert link.charge_compute(2, 8_000_000_000) == 2.0 and ledger.pending[-1].kind == "compute"
    assert link.charge_server("aggregate", 10**12) == 1.0 and ledger.pending[-1].client == -1
    assert link.elapsed(2) == pytest.approx(rows[1].seconds + rows[2].seconds + 2.0)
    totals = ledger.close_round(3)
    assert totals.bytes_down == 2 * 4936 and totals.bytes_up == 4936
    # Round time: slowest client's messages + compute (client 2), plus the server's work.
    assert totals.emulated_seconds == pytest.approx(rows[1].seconds + rows[2].seconds + 2.0 + 1.0)
    assert totals.client_flops == 8_000_000_000 and totals.server_flops == 10**12
    assert totals.bytes_by_kind == {"model": 2 * 4936, "update": 4936}


def test_realtime_clock_holds_for_the_transfer_time():
    import time

    t0 = time.time()
    RealtimeClock().hold(0.2, t0)
    assert time.time() - t0 >= 0.2
    t1 = time.time()
    VirtualClock().hold(5.0, t1)
    assert time.time() - t1 < 0.1
