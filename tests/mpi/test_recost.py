"""Re-pricing a finished run gives the emulated times a run under the other links would have."""
from __future__ import annotations

import pytest

from conftest import assert_ok, launch
from fedmpi.report.recost import recost
from fedmpi.report.runs import ReportError, load_run

pytestmark = pytest.mark.mpi
SETS = ("federation.rounds=3", "federation.dropout=0.25", "network.heterogeneity=0.5", "compute.heterogeneity=0.4",
        "federation.num_clients=7", "federation.clients_per_round=5")


def test_recost_equals_a_run_under_the_other_links(tmp_path):
    wifi = launch(tmp_path, 3, *SETS, "network.profile=wifi", name="wifi")
    mobile = launch(tmp_path, 3, *SETS, "network.profile=mobile", "compute.client_gflops=10", name="mobile")
    assert_ok(wifi)
    assert_ok(mobile)
    again = recost(load_run(wifi.dir), ["network.profile=mobile", "compute.client_gflops=10"])
    assert [r["bytes"] for r in again.ledger] == [r["bytes"] for r in mobile.ledger]
    assert [r["seconds"] for r in again.ledger] == pytest.approx([r["seconds"] for r in mobile.ledger], rel=1e-12)
    assert [m["emulated_seconds"] for m in again.metrics] == pytest.approx(
        [m["emulated_seconds"] for m in mobile.metrics], rel=1e-12)
    assert again.summary["emulated_seconds"] == pytest.approx(mobile.summary["emulated_seconds"], rel=1e-12)
    assert again.summary["emulated_seconds"] > 2 * wifi.summary["emulated_seconds"]
    same = recost(load_run(wifi.dir), [])
    assert [m["emulated_seconds"] for m in same.metrics] == pytest.approx(
        [m["emulated_seconds"] for m in wifi.metrics], rel=1e-12)


def test_recost_is_refused_when_time_decided_who_took_part(tmp_path):
    run = launch(tmp_path, 3, "federation.rounds=1", "federation.deadline_s=5.0")
    assert_ok(run)
    with pytest.raises(ReportError, match="cannot re-price exactly: with federation.deadline_s"):
        recost(load_run(run.dir), ["network.profile=mobile"])
