"""The run-folder lock: exclusive, released, stale locks detected and reported."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedmpi.errors import ConfigError
from fedmpi.runfolder.lock import LOCK_NAME, Owner, RunLock


def test_one_holder_at_a_time_and_release(tmp_path):
    a = RunLock(tmp_path / "run").acquire()
    assert a.owned and a.created_dir and (tmp_path / "run" / LOCK_NAME).exists()
    with pytest.raises(ConfigError, match=r"is in use by another fedmpi job \(pid \d+ on .*wait for it to end"):
        RunLock(tmp_path / "run").acquire()
    a.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    b = RunLock(tmp_path / "run").acquire()
    assert b.owned and not b.created_dir
    b.release()


def test_the_launcher_token_is_adopted_and_the_adopter_is_recorded(tmp_path, monkeypatch):
    owner = RunLock(tmp_path).acquire()
    held = json.loads((tmp_path / LOCK_NAME).read_text())
    held["pids"] = [999999999]  # as if the launcher were another process
    (tmp_path / LOCK_NAME).write_text(json.dumps(held))
    rank0 = RunLock(tmp_path).acquire(inherit=owner.token)
    assert not rank0.owned
    import os

    assert json.loads((tmp_path / LOCK_NAME).read_text())["pids"] == [999999999, os.getpid()]
    rank0.release()  # an adopter never removes the launcher's lock
    assert (tmp_path / LOCK_NAME).exists()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, capsys):
    stale = Owner("old", Owner.me("x").host, [dead_pid()], [None], 0.0, "fedmpi launch old")
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale.__dict__))
    lock = RunLock(tmp_path).acquire()
    assert lock.owned and lock.token != "old"
    err = capsys.readouterr().err
    assert "was locked by a job that is no longer running" in err and "fedmpi launch old" in err


def test_a_lock_from_another_host_cannot_be_checked_so_it_is_an_error(tmp_path):
    other = Owner("old", "elsewhere", [1], [None], 0.0, "fedmpi run x")
    (tmp_path / LOCK_NAME).write_text(json.dumps(other.__dict__))
    with pytest.raises(ConfigError, match=f"it runs on another host.*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_an_earlier_incarnation_of_a_requeued_slurm_job_is_stale(tmp_path, monkeypatch):
    other = Owner("old", "node-7", [1], [None], 0.0, "fedmpi run x", slurm_job="77", slurm_restart=None)
    (tmp_path / LOCK_NAME).write_text(json.dumps(other.__dict__))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert RunLock(tmp_path).acquire().owned
