"""No NaN reaches a run-folder file, and explicit link figures override a preset."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import assert_ok, launch

pytestmark = pytest.mark.mpi


def test_a_round_nobody_finishes_writes_null_with_a_note_and_explicit_figures_win(tmp_path):
    """`--set network.profile=wifi --set network.up_mbps=5 --set network.down_mbps=20`
    (the quickstart's wifi with a phone's bandwidth): every download is charged at
    20 Mbit/s with wifi's 10 ms latency, and config.yaml records the figures used.
    A 1 ms deadline cuts every client: the loss is null with the reason beside it."""
    run = launch(tmp_path, 2, "federation.rounds=2", "federation.deadline_s=0.001", "network.profile=wifi",
                 "network.up_mbps=5", "network.down_mbps=20")
    assert_ok(run)
    for f in ("metrics.jsonl", "ledger.jsonl", "summary.json"):
        text = (run.dir / f).read_text()
        assert "NaN" not in text and "Infinity" not in text, f
    for m in run.metrics:
        assert m["arrived"] == 0 and m["loss"] is None and "no client arrived" in m["loss_note"]
        assert m["accuracy"] is not None
    s = run.summary
    assert s["final_loss"] is None and "no client arrived" in s["final_loss_note"]
    recorded = yaml.safe_load((run.dir / "config.yaml").read_text())["network"]
    assert (recorded["up_mbps"], recorded["down_mbps"], recorded["latency_ms"]) == (5.0, 20.0, 10.0)
    downs = [r for r in run.ledger if r["direction"] == "down"]
    assert len(downs) == 2 * 4
    for r in downs:
        assert r["seconds"] == pytest.approx(0.010 + r["bytes"] * 8 / 20e6, rel=1e-12)
    json.dumps(s, allow_nan=False)
