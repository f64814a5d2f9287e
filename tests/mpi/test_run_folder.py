"""A run folder belongs to one job: two real jobs into one folder, a stale lock
left by a SIGKILLed launcher, and a resumed run's whole-run wall time."""
from __future__ import annotations

import json
import signal
import time

import pytest

from conftest import assert_ok, launch
from test_job_signals import REALTIME, SLOW, start, survivors, wait_for_rows

pytestmark = pytest.mark.mpi


def test_a_second_job_into_a_busy_run_folder_is_refused_and_the_first_is_untouched(tmp_path):
    first = start(tmp_path, "shared", "federation.rounds=10", *REALTIME)
    lock = tmp_path / "shared" / "fedmpi.lock"
    wait_for_rows(tmp_path / "shared", 1, first)
    t0 = time.monotonic()
    second = launch(tmp_path, 3, "federation.rounds=2", name="shared", timeout=120)
    took = time.monotonic() - t0
    errors = [x for x in second.proc.stderr.splitlines() if x.startswith("fedmpi: error:")]
    print(f"\n[lock] second job: exit {second.proc.returncode} in {took:.1f} s: {errors}")
    assert second.proc.returncode == 2 and len(errors) == 1, second.proc.stderr[-3000:]
    assert f"run folder {tmp_path / 'shared'} is in use by another fedmpi job (pid {first.pid} on" in errors[0]
    assert "Traceback" not in second.proc.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "shared" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "shared" / "summary.json").read_text())
    assert [r["round"] for r in rows] == list(range(10)) and summary["rounds"] == 10  # its own results
    assert not lock.exists()  # released at the end


def test_a_killed_launcher_takes_its_job_down_and_the_stale_lock_is_reported(tmp_path):
    """SIGKILL (which nothing can catch) to the launcher: the kernel tells mpiexec
    (PR_SET_PDEATHSIG), the ranks stop; the lock they leave is found stale by the
    next job, which says so, takes it and resumes with the whole run's wall time."""
    proc = start(tmp_path, "cut", *SLOW)
    wait_for_rows(tmp_path / "cut", 2, proc)
    import psutil

    job = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(10)
    assert survivors(job) == []
    held = json.loads((tmp_path / "cut" / "fedmpi.lock").read_text())
    assert proc.pid in held["pids"] and len(held["pids"]) == 2  # the launcher and the server rank
    import torch

    before = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    resumed = launch(tmp_path, 3, *REALTIME, "federation.rounds=6", name="cut", extra=("--resume",))
    assert_ok(resumed)
    assert f"fedmpi: notice: run folder {tmp_path / 'cut'} was locked by a job that is no longer running " \
           f"(pid {proc.pid} on" in resumed.proc.stderr
    assert not (tmp_path / "cut" / "fedmpi.lock").exists()
    s, rows = resumed.summary, resumed.metrics
    assert s["resumed"] is True and [r["round"] for r in rows] == list(range(6))
    # The whole run's wall time: the time before the kill (carried in the checkpoint)
    # plus this job's, so at least every round's own wall time, before and after.
    assert s["wall_seconds"] >= before["wall_seconds"] + sum(r["wall_seconds"] for r in rows[before["round"] + 1:])
    assert s["wall_seconds"] >= sum(r["wall_seconds"] for r in rows)
