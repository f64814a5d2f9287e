"""One job per run folder: a lock file held for the job's life.

Two jobs writing one run folder corrupt each other silently (the first exits
0 reporting the second's metrics; the second crashes on checkpoint.pt.tmp),
so the first to create ``fedmpi.lock`` (O_EXCL: atomic on a local or NFS
filesystem) owns the folder; a second job gets one clear error naming the
first. The file records who holds it (pids, host, Slurm job, start time,
command), and is removed on every exit Python sees (normal end, errors,
signals); only SIGKILL and MPI_Abort leave it behind. Such a stale lock is
detected — every recorded process on this host is gone, or it is an earlier
incarnation of this very (requeued) Slurm job — and reported when it is taken
over; a lock held from another host cannot be checked and is an error.

`fedmpi launch` takes the lock before starting any rank and hands its token to
the ranks (FEDMPI_RUN_LOCK_TOKEN), so the server rank adopts it and adds its
own pid; under srun / mpirun the server rank takes it itself.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fedmpi.errors import ConfigError
from fedmpi.procs import alive, proc_start

LOCK_NAME = "fedmpi.lock"
TOKEN_ENV = "FEDMPI_RUN_LOCK_TOKEN"


@dataclass
class Owner:
    token: str
    host: str
    pids: list[int]
    starts: list[str | None]
    started: float
    command: str
    slurm_job: str | None = None
    slurm_restart: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def me(cls, token: str) -> "Owner":
        pid = os.getpid()
        return cls(token, socket.gethostname(), [pid], [proc_start(pid)], time.time(),
                   " ".join(sys.argv)[:300], os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT"))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        job = f", Slurm job {self.slurm_job}" if self.slurm_job else ""
        return f"pid {self.pids[0]} on {self.host}{job}, started {when}: {self.command}"

    def stale(self) -> bool | None:
        """True: provably dead; False: alive; None: cannot tell (another host)."""
        job = os.environ.get("SLURM_JOB_ID")
        if self.slurm_job and job == self.slurm_job and os.environ.get("SLURM_RESTART_COUNT") != self.slurm_restart:
            return True  # an earlier incarnation of this requeued job: Slurm never runs two at once
        if self.host != socket.gethostname():
            return None
        return not any(alive(p, s) for p, s in zip(self.pids, self.starts))


class RunLock:
    """The lock of one run folder. `acquire` creates the folder (and reports whether it did)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self.token: str | None = None
        self.owned = False  # True: this process removes the file on release
        self.created_dir = False

    def acquire(self, inherit: str | None = None) -> "RunLock":
        """Own the folder, or adopt the lock of the launcher that started us (`inherit`)."""
        self.created_dir = not self.dir.exists()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output.dir: cannot create the run folder {self.dir}: {exc.strerror}") from None
        for _ in range(50):
            held = self._read()
            if held is None:
                if self._create():
                    return self
                continue
            if not held.pids and time.time() - held.started < 5:
                time.sleep(0.1)  # another job created it an instant ago and is writing it
                continue
            if inherit is not None and held.token == inherit:
                self.token = inherit
                self._adopt(held)
                return self
            verdict = held.stale()
            if verdict is None:
                raise ConfigError(
                    f"run folder {self.dir} is in use by another fedmpi job ({held.describe()}); it runs on "
                    f"another host, so fedmpi cannot check it: if that job has ended, delete {self.path}; "
                    "otherwise pick another name (--set name=...) or output.dir")
            if not verdict:
                raise ConfigError(
                    f"run folder {self.dir} is in use by another fedmpi job ({held.describe()}); wait for it "
                    "to end, or pick another name (--set name=...) or output.dir")
            print(f"fedmpi: notice: run folder {self.dir} was locked by a job that is no longer running "
                  f"({held.describe()}); taking the lock over", file=sys.stderr, flush=True)
            try:  # atomic: of two jobs taking over the same stale lock, one renames it
                os.rename(self.path, self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}"))
                self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}").unlink()
            except FileNotFoundError:
                continue
        raise ConfigError(f"run folder {self.dir}: could not take {self.path} (other jobs keep taking it)")

    def _create(self) -> bool:
        token = uuid.uuid4().hex
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ConfigError(f"output.dir: cannot write in the run folder {self.dir}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(Owner.me(token)), fh)
        self.token, self.owned = token, True
        return True

    def _adopt(self, held: Owner) -> None:
        """Add this process to the holders, so the lock is not stale while it runs."""
        pid = os.getpid()
        if pid not in held.pids:
            held.pids.append(pid)
            held.starts.append(proc_start(pid))
            tmp = self.path.with_name(f"{LOCK_NAME}.{pid}.tmp")
            tmp.write_text(json.dumps(asdict(held)))
            os.replace(tmp, self.path)

    def _read(self) -> Owner | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return Owner(**json.loads(text))
        except (ValueError, TypeError):
            # Being written right now, or half-written by a job killed in between:
            # no process recorded, so stale once it is a few seconds old.
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return None
            return Owner("?", socket.gethostname(), [], [], mtime, "(unreadable lock file)")

    def release(self) -> None:
        """Remove the lock if this process owns it (and it is still ours)."""
        if not self.owned:
            return
        held = self._read()
        if held is not None and held.token == self.token:
            self.path.unlink(missing_ok=True)
        self.owned = False

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
