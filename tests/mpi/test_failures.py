"""A dying rank ends the whole job quickly; a checkpointed run resumes to the
same result. (Bad input: tests/unit/test_bad_input.py, one table of every case.)"""
from __future__ import annotations

import time

import pytest

from conftest import assert_ok, launch

pytestmark = pytest.mark.mpi


SETS = ("federation.rounds=4", "federation.dropout=0.3", "output.checkpoint=true")


@pytest.mark.parametrize("rank", [0, 2])
def test_sigkill_ends_the_job_and_resume_matches(tmp_path, rank):
    whole = launch(tmp_path, 3, *SETS, name="whole")
    assert_ok(whole)
    t0 = time.monotonic()
    killed = launch(tmp_path, 3, *SETS, name="cut", env={"FEDMPI_KILL_AT_ROUND": "2", "FEDMPI_KILL_RANK": str(rank)})
    took = time.monotonic() - t0
    assert killed.proc.returncode != 0
    assert took < 120  # seconds, not a collective's default half-hour timeout
    import torch

    # What was written is intact: whole rows of the rounds finished before the
    # kill (a client rank may die while the server still closes round 1).
    rounds = [m["round"] for m in killed.metrics]
    assert rounds == list(range(len(rounds)))
    assert len(rounds) == 2 if rank == 0 else 1 <= len(rounds) <= 2
    saved = torch.load(killed.dir / "checkpoint.pt", weights_only=False)["round"]
    assert saved in (rounds[-1], rounds[-1] - 1)
    resumed = launch(tmp_path, 3, *SETS, name="cut", extra=("--resume",))
    assert_ok(resumed)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]
    assert strip(resumed.metrics) == strip(whole.metrics)
    assert resumed.ledger == whole.ledger
    assert resumed.summary["final_accuracy"] == whole.summary["final_accuracy"]
    assert resumed.summary["resumed"] is True


def test_dropout_renormalises_over_arrived_clients(tmp_path):
    from fedmpi.engine.sampling import drops_out, sample_clients

    run = launch(tmp_path, 3, "federation.rounds=3", "federation.dropout=0.4")
    assert_ok(run)
    state = run.summary["trainable_params"] * 4
    for m in run.metrics:
        sampled = sample_clients(6, 4, 0, m["round"])
        arrived = [c for c in sampled if not drops_out(0, m["round"], c, 0.4)]
        ups = [r["client"] for r in run.ledger if r["round"] == m["round"] and r["direction"] == "up"]
        assert ups == arrived and m["arrived"] == len(arrived)
        assert m["bytes_down"] == len(sampled) * state  # the dropped ones got the model
        assert m["bytes_up"] == len(arrived) * state
