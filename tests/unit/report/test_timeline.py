"""The round timeline orders each client's phases and marks the critical path."""
from __future__ import annotations

from pathlib import Path

from fedmpi.report.plots import round_timeline, timeline
from fedmpi.report.runs import Run


def row(client, direction, kind, seconds):
    return {"round": 0, "client": client, "direction": direction, "kind": kind, "bytes": 1, "flops": 1,
            "seconds": seconds}


def test_phases_in_order_and_the_slowest_client_is_critical(tmp_path: Path):
    ledger = [row(0, "down", "model", 1.0), row(1, "down", "model", 2.0), row(2, "down", "model", 9.0),
              row(0, "up", "update", 0.5), row(1, "up", "update", 3.0), row(0, "local", "compute", 4.0),
              row(1, "local", "compute", 1.0), row(-1, "server", "aggregate", 0.25)]
    run = Run(tmp_path, {"name": "t"}, {}, [{"round": 0, "emulated_seconds": 6.25}], ledger)
    bars, total, slowest = round_timeline(run, 0)
    assert bars[0] == [("download", 0.0, 1.0), ("compute", 1.0, 4.0), ("upload", 5.0, 0.5)]
    assert slowest == 1 and total == 6.25  # client 2 dropped out (no upload): it does not hold the round up
    assert bars[-1] == [("server", 6.0, 0.25)]
    assert timeline(run, tmp_path / "t.png").stat().st_size > 1000
