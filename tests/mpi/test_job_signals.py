"""Signals to `fedmpi launch` end the whole job: the real signal to the real
launcher, and no process of the job (mpiexec, proxy, ranks) alive 10 s later.

SIGTERM (kill, timeout, systemd, schedulers), SIGINT (Ctrl-C) and SIGHUP (a
closed terminal) are forwarded to every rank; the ranks stop at the next round
boundary with the last round checkpointed and exit 75 (fedmpi.signals.STOPPED);
a round that does not finish within the grace period is abandoned (exit
128+15) with the previous checkpoint intact. Rounds are slowed with the
realtime clock so the signal lands mid-run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.mpi

STOPPED = 75


def start(tmp_path: Path, name: str, *sets: str, env: dict[str, str] | None = None,
          extra: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedmpi", "launch", "-n", "3", str(TINY), *extra]
    for s in (f"output.dir={tmp_path}", f"name={name}", "output.progress=false", *sets):
        cmd += ["--set", s]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    metrics = run_dir / "metrics.jsonl"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"no {n} metrics rows after {timeout} s")


def job_processes(launcher: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(launcher.pid).children(recursive=True)


def survivors(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def signal_job(proc: subprocess.Popen, signum: int) -> tuple[int, float, str, list[str]]:
    """Send `signum` to the launcher; (exit code, seconds to exit, stderr, processes alive 10 s after)."""
    procs = job_processes(proc)
    ranks = [p for p in procs if p.name().startswith("python") and p.cmdline()[1:4] == ["-m", "fedmpi", "run"]]
    assert len(ranks) == 3 and any(p.name() == "mpiexec" for p in procs), procs
    t0 = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
    last = next((x for x in reversed(err.splitlines()) if x.startswith("fedmpi:")), "")
    print(f"\n[signal] {signal.Signals(signum).name}: exit {proc.returncode} in {took:.1f} s: {last}")
    return proc.returncode, took, err, survivors(procs)


# Realtime rounds of ~0.7 s: fast links (the tiny model's 4 MB in ~30 ms), 300 ms latency.
REALTIME = ("network.clock=realtime", "network.up_mbps=1000", "network.down_mbps=1000", "network.latency_ms=300")
SLOW = ("federation.rounds=40", *REALTIME)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_stops_every_rank_at_a_round_boundary(tmp_path, signum):
    proc = start(tmp_path, "sig", *SLOW)
    wait_for_rows(tmp_path / "sig", 1, proc)
    code, took, err, alive = signal_job(proc, signum)
    assert alive == [], f"still running 10 s after {signum.name}: {alive}"
    assert code == STOPPED, err[-3000:]
    assert took < 10
    import torch

    rows = [json.loads(x) for x in (tmp_path / "sig" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(len(rows))) and len(rows) < 40
    saved = torch.load(tmp_path / "sig" / "checkpoint.pt", weights_only=False)
    assert saved["round"] == rows[-1]["round"]  # the last round run is the one checkpointed
    assert f"stopped by {'SIGTERM' if signum == signal.SIGHUP else signum.name} before round {len(rows)}" in err
    assert not (tmp_path / "sig" / "fedmpi.lock").exists()
    assert not (tmp_path / "sig" / "summary.json").exists()


def test_a_round_past_the_grace_period_is_abandoned_checkpoint_intact(tmp_path):
    """Rounds of ~3 s (1.5 s latency per message), a 1 s grace: the ranks abandon the
    round and exit 128+SIGTERM; the checkpoint of the round before is untouched."""
    proc = start(tmp_path, "slow", "federation.rounds=5", *REALTIME[:3], "network.latency_ms=1500",
                 env={"FEDMPI_STOP_GRACE_S": "1"})
    wait_for_rows(tmp_path / "slow", 1, proc)
    while not (tmp_path / "slow" / "checkpoint.pt").exists():  # written (atomically) just after the row
        time.sleep(0.05)
    before = (tmp_path / "slow" / "checkpoint.pt").read_bytes()
    code, took, err, alive = signal_job(proc, signal.SIGTERM)
    assert alive == [], alive
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert took < 10
    assert "SIGTERM: abandoning the round; the last checkpoint is intact" in err
    assert (tmp_path / "slow" / "checkpoint.pt").read_bytes() == before
