"""`fedmpi launch`'s hold on its job: signals reach every rank, and nothing outlives it.

A plain subprocess.run(mpiexec) leaves the job orphaned when the launcher gets
SIGTERM (kill, timeout, systemd, schedulers) or SIGHUP (a closed terminal):
the launcher dies, mpiexec and every rank keep training and writing to the
run folder. Here mpiexec runs in its own session (a terminal's Ctrl-C reaches
the launcher only, which forwards it once — Hydra aborts at the second), and:

* SIGTERM / SIGHUP / SIGINT are forwarded (as SIGTERM, SIGTERM, SIGINT; Hydra
  passes them on to every rank), the ranks stop at the next round boundary
  (fedmpi.signals) and the launcher waits; if the job is still there after
  the grace period plus a margin, every process of it is SIGKILLed;
* SIGUSR1 (pre-emption notice) is forwarded as is, with no deadline;
* if the launcher itself is SIGKILLed, the kernel sends mpiexec SIGTERM
  (PR_SET_PDEATHSIG), which ends the job the same way.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fedmpi.procs import descendants, proc_start
from fedmpi.signals import DEFAULT_GRACE_S

KILL_MARGIN_S = 5.0  # past the ranks' own grace: time for them to exit after abandoning
_FORWARD = {signal.SIGTERM: signal.SIGTERM, signal.SIGHUP: signal.SIGTERM, signal.SIGINT: signal.SIGINT,
            signal.SIGUSR1: signal.SIGUSR1}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def grace_seconds() -> float:
    return float(os.environ.get("FEDMPI_STOP_GRACE_S") or DEFAULT_GRACE_S)


def run_job(cmd: list[str], env: dict[str, str]) -> int:
    """Run the job to its end; its exit status, or 128+signal if it had to be killed."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    job: set[tuple[int, str | None]] = set()
    state: dict[str, float | int | None] = {"deadline": None, "first": None}

    def forward(signum: int, frame=None) -> None:
        job.update(descendants(proc.pid))  # the tree now, while it is whole
        try:
            proc.send_signal(_FORWARD[signum])
        except ProcessLookupError:
            pass
        if signum != signal.SIGUSR1:
            if state["first"] is None:
                state["first"] = signum
                state["deadline"] = time.monotonic() + grace_seconds() + KILL_MARGIN_S
            else:
                state["deadline"] = time.monotonic()  # asked twice: now

    previous = {s: signal.signal(s, forward) for s in _FORWARD}
    try:
        while True:
            try:
                return proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            deadline = state["deadline"]
            if deadline is not None and time.monotonic() >= deadline:
                kill_job(proc, job)
                proc.wait()
                return 128 + int(state["first"])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if state["first"] is not None:  # signalled: no rank may outlive the launcher
            _kill_survivors(job)


def kill_job(proc: subprocess.Popen, known: set[tuple[int, str | None]]) -> None:
    everyone = known | set(descendants(proc.pid))
    print(f"fedmpi: the job did not stop within {grace_seconds():.0f} s of the signal; killing its "
          f"{len(everyone) + 1} processes", file=sys.stderr, flush=True)
    _kill_survivors(everyone)
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def _kill_survivors(procs: set[tuple[int, str | None]]) -> None:
    """SIGKILL what is left of the job (ranks whose proxy already died included),
    each only if it is still the process that was recorded."""
    for pid, start in procs:
        if start is None or proc_start(pid) != start:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
