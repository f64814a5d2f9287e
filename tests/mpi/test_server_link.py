"""A finite server link is shared by the clients transferring at once (cross-silo pricing)."""
from __future__ import annotations

from collections import defaultdict

import pytest

from conftest import assert_ok, launch
from fedmpi.net.fairshare import finish_times

pytestmark = pytest.mark.mpi
SETS = ("federation.rounds=2", "federation.num_clients=6", "federation.clients_per_round=5",
        "network.profile=datacenter", "compute.heterogeneity=0.5")


def test_downloads_share_the_server_uplink_and_uploads_its_downlink(tmp_path):
    free = launch(tmp_path, 3, *SETS, name="free")
    capped = launch(tmp_path, 3, *SETS, "network.server_up_mbps=2000", "network.server_down_mbps=1000", name="capped")
    assert_ok(free)
    assert_ok(capped)
    assert [r["bytes"] for r in free.ledger] == [r["bytes"] for r in capped.ledger]  # the same traffic
    state = capped.summary["trainable_params"] * 4
    lat = 0.1e-3
    downs = [r for r in capped.ledger if r["kind"] == "model"]
    # 5 equal downloads through 2 Gbit/s: each gets 400 Mbit/s of its 10 Gbit/s link
    assert all(r["seconds"] == pytest.approx(lat + 5 * state * 8 / 2e9) for r in downs)
    for rnd in (0, 1):
        rows = [r for r in capped.ledger if r["round"] == rnd]
        ready = defaultdict(float)
        for r in rows:
            if r["direction"] in ("down", "local"):
                ready[r["client"]] += r["seconds"]
        ups = {r["client"]: r for r in rows if r["kind"] == "update"}
        clients = sorted(ups)
        ends = finish_times([ready[c] for c in clients], [state * 8.0] * len(clients), [10e9] * len(clients), 1e9)
        for c, end in zip(clients, ends):
            assert ups[c]["seconds"] == pytest.approx(lat + end - ready[c], rel=1e-9)
    assert capped.summary["emulated_seconds"] > 5 * free.summary["emulated_seconds"]
