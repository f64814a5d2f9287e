"""Bad input ends with one clear message before any training; a dying rank
ends the whole job quickly; a checkpointed run resumes to the same result."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY, assert_ok, launch

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("override, needle", [
    ("method.name=lorra", "unknown method.name 'lorra'"),
    ("data.path=/nonexistent/data", "dataset 'embedded' not found"),
    ("federation.num_clients=1000", "more clients (1000) than training samples (400)"),
    ("network.up_mbps=0", "network.up_mbps must be > 0"),
    ("federation.clients_per_round=9", "federation.clients_per_round (9) > federation.num_clients (6)"),
    ("federation.bogus=1", "unknown config key 'federation.bogus'"),
])
def test_bad_input_one_clear_error_no_traceback(tmp_path, override, needle):
    run = launch(tmp_path, 3, override, timeout=120)
    assert run.proc.returncode == 2
    assert needle in run.proc.stderr
    assert "Traceback" not in run.proc.stderr + run.proc.stdout
    assert not run.dir.exists()  # nothing started


def test_fewer_than_two_ranks(tmp_path):
    run = launch(tmp_path, 1, timeout=120)
    assert run.proc.returncode == 2 and "at least 2 ranks" in run.proc.stderr
    # Started directly, not under any launcher:
    proc = subprocess.run([sys.executable, "-m", "fedmpi", "run", str(TINY)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "at least 2 ranks" in proc.stderr and "Traceback" not in proc.stderr


def test_mpiexec_one_rank_is_refused(tmp_path):
    from fedmpi.cli import find_mpiexec

    proc = subprocess.run([find_mpiexec(), "-n", "1", sys.executable, "-m", "fedmpi", "run", str(TINY),
                           "--set", f"output.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "at least 2 ranks" in proc.stderr


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
