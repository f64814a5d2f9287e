"""Stop requests: SIGTERM, SIGINT, SIGHUP and SIGUSR1 on a rank.

kill, timeout, systemd and schedulers send SIGTERM first (Slurm: SIGTERM,
then SIGKILL after KillWait); a closed terminal sends SIGHUP; pre-emption
notices (``#SBATCH --signal=B:USR1@120``) send SIGUSR1. None of them may leave
a half-written run folder or a job that keeps training, so a rank does not
die on them: it records the request, the engine agrees on it with every rank
at the next round boundary (a collective, so all stop at the same round) and
the run ends with the last round's checkpoint written and exit status
`STOPPED`; `fedmpi run --resume` continues it bit-identically.

SIGTERM/SIGINT/SIGHUP mean "stop soon": if the round boundary is not reached
within the grace period (a round of a large model can take minutes), the
rank abandons the round (the previous checkpoint stays intact: checkpoints are
written atomically) and exits 128+signal. A second such signal abandons at
once. SIGUSR1 means "stop at the next round boundary", with no deadline: the
scheduler's own SIGTERM follows if time runs out.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

STOPPED = 75  # EX_TEMPFAIL: stopped on request at a round boundary, checkpoint written; resume it
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PREEMPT_SIGNALS = (signal.SIGUSR1,)
DEFAULT_GRACE_S = 20.0  # under Slurm's default KillWait (30 s)


@dataclass
class StopRequest:
    signum: int | None = None  # the first signal received
    grace_s: float = DEFAULT_GRACE_S
    _timer: threading.Timer | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"

    def handle(self, signum: int, frame=None) -> None:
        urgent = signum in STOP_SIGNALS
        if urgent and self._timer is not None:
            abandon(signum)  # a second stop signal: now
        if self.signum is None or urgent:
            self.signum = signum
        if urgent:
            self._timer = threading.Timer(self.grace_s, abandon, args=(signum,))
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


REQUEST = StopRequest()


def abandon(signum: int) -> None:
    """Exit now without a new checkpoint (the last one, written atomically, is intact)."""
    try:
        sys.stderr.write(f"fedmpi: {signal.Signals(signum).name}: abandoning the round; "
                         "the last checkpoint is intact\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)


def install(grace_s: float | None = None) -> StopRequest:
    """Route the stop signals to `REQUEST` (main thread only; a no-op elsewhere)."""
    if grace_s is not None:
        REQUEST.grace_s = grace_s
    env = os.environ.get("FEDMPI_STOP_GRACE_S")
    if env:
        REQUEST.grace_s = float(env)
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS + PREEMPT_SIGNALS:
            signal.signal(sig, REQUEST.handle)
    return REQUEST


class Stopped(Exception):
    """Raised on every rank at the round boundary where the job agreed to stop."""

    def __init__(self, signame: str, next_round: int, checkpoint_round: int | None, run_dir=None) -> None:
        self.signame, self.next_round, self.checkpoint_round, self.run_dir = (signame, next_round,
                                                                              checkpoint_round, run_dir)
        where = f" in {run_dir}" if run_dir is not None else ""
        saved = (f"the checkpoint of round {checkpoint_round}{where} is complete; continue with --resume"
                 if checkpoint_round is not None else "no round had completed, nothing to resume")
        super().__init__(f"stopped by {signame} before round {next_round}: {saved}")
