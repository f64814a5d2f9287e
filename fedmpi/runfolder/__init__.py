"""The run folder's rules before a job writes to it: a usable output.dir, one job
at a time (lock.py), and a resume that continues the same experiment (resume.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedmpi.errors import ConfigError
from fedmpi.runfolder.lock import LOCK_NAME, TOKEN_ENV, RunLock
from fedmpi.runfolder.resume import MODES, should_resume

__all__ = ["LOCK_NAME", "TOKEN_ENV", "MODES", "RunLock", "Claim", "check_output_dir", "claim", "should_resume"]


def check_output_dir(run_dir: Path) -> None:
    """output.dir (and the run folder in it) must be folders this process can create and write."""
    run_dir = Path(run_dir)
    probe = run_dir
    while not probe.exists():  # the deepest part that exists must be a writable folder
        if probe.parent == probe:
            break
        probe = probe.parent
    for part in [run_dir, *run_dir.parents]:
        if part.exists() and not part.is_dir():
            raise ConfigError(f"output.dir: {part} is a file, not a folder (run folder {run_dir})")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output.dir: {probe} is not writable (run folder {run_dir})")


@dataclass
class Claim:
    """What a job holds on its run folder: the lock, and whether it resumes."""
    lock: RunLock
    resume: bool

    def release(self) -> None:
        self.lock.release()


def claim(run_dir: Path, cfg, resume_mode: str, inherit: str | None = None, announce: bool = True) -> Claim:
    """Check, decide on resuming, then lock — in that order, so a refused run
    leaves nothing behind (no folder created, nothing rewritten)."""
    check_output_dir(run_dir)
    resume = should_resume(cfg, resume_mode, announce=announce)
    return Claim(RunLock(run_dir).acquire(inherit=inherit), resume)
