"""`fedmpi run`: the entry point of one rank (under mpirun / srun / torchrun / fedmpi launch).

User errors print one `fedmpi: error:` line and exit 2 before any rank
trains; any other failure on any rank brings the whole job down with a
non-zero exit instead of leaving its peers hanging.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from fedmpi.config import load_config
from fedmpi.errors import ConfigError

_RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")


def env_rank() -> int:
    """This process's rank as the launcher announced it (before any init)."""
    for var in _RANK_VARS:
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def report_error(msg: str) -> None:
    """One `fedmpi: error:` line, from rank 0 only (every rank finds the same error)."""
    if env_rank() == 0:
        print(f"fedmpi: error: {msg}", file=sys.stderr, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are ConfigErrors: one `fedmpi: error:` line, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} -h)")


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set federation.rounds=3")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the run folder's last checkpoint (an error if there is none, or if "
                            "the experiment changed)")
    again.add_argument("--resume-or-start", action="store_true",
                       help="like --resume, but start fresh (with a notice) when there is no checkpoint yet: "
                            "for jobs that are requeued (slurm/run.sbatch)")


def resume_mode(args: argparse.Namespace) -> str:
    return "yes" if args.resume else "auto" if args.resume_or_start else "no"


def resume_argv(mode: str) -> list[str]:
    return {"yes": ["--resume"], "auto": ["--resume-or-start"], "no": []}[mode]


def main(argv: list[str]) -> int:
    """`fedmpi run CONFIG [--set k=v ...] [--resume]` on one rank."""
    p = ArgumentParser(prog="fedmpi run", description="Run an experiment (one rank of the job).")
    add_experiment_args(p)
    try:
        args = p.parse_args(argv)
        return run_rank(args.config, args.overrides, resume_mode(args))
    except ConfigError as exc:
        report_error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


def run_rank(config: str, overrides: list[str], resume: str = "no") -> int:
    """One rank's run; `resume` is "no", "yes" (--resume) or "auto" (--resume-or-start)."""
    from fedmpi import signals
    from fedmpi.runtime import detect_launcher

    signals.install()  # from here on a stop signal means: stop at the next round boundary
    cfg = load_config(config, overrides)
    if detect_launcher() == "single":
        raise ConfigError("fedmpi needs at least 2 ranks (1 server + clients); start it with "
                          f"'fedmpi launch -n 3 {config}', mpirun -n 3, srun -n 3 or torchrun")
    from fedmpi.experiment import prepare, run
    from fedmpi.runtime import init_runtime, shutdown

    prep = prepare(cfg)
    rt = init_runtime(cfg.runtime)
    folder = _claim_run_folder(cfg, rt, resume)
    if folder is False:
        shutdown()
        return 2
    try:
        summary = run(cfg, rt, prep, resume=folder is not None and folder.resume)
        if summary is not None:
            from fedmpi.console import print_summary

            print_summary(summary, cfg.run_dir)
    except signals.Stopped as stop:
        if rt.is_server:
            print(f"fedmpi: {stop}", file=sys.stderr, flush=True)
        _release(folder)
        return _leave_stopped(rt, shutdown)
    except ConfigError as exc:
        # Bad input found after start-up: every rank usually finds it; the server
        # reports it, others only if it cannot.
        if not rt.is_server:
            time.sleep(2.0)
        print(f"fedmpi: error: {exc}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let the launcher forward the line before MPI_Abort tears the job down
        _release(folder)
        rt.abort(2)
    except BaseException:
        sys.stderr.write(f"fedmpi: rank {rt.rank} failed; ending the job\n{traceback.format_exc()}")
        _release(folder)
        rt.abort(1)
    _release(folder)
    shutdown()
    return 0


def _claim_run_folder(cfg, rt, resume: str):
    """Server: check output.dir, decide on resuming, lock the run folder (adopting
    the lock of the `fedmpi launch` that started us). Every rank learns whether
    it failed (one collective), so a refused run ends cleanly with exit 2 on all.
    Returns the server's Claim, None on other ranks, False when refused."""
    from fedmpi.runfolder import TOKEN_ENV, claim

    folder, error = None, None
    if rt.is_server:
        try:
            folder = claim(cfg.run_dir, cfg, resume, inherit=os.environ.get(TOKEN_ENV),
                           announce=TOKEN_ENV not in os.environ)  # the launcher announced it already
        except ConfigError as exc:
            error = str(exc)
    if rt.any_rank(error is not None):
        if error is not None:
            print(f"fedmpi: error: {error}", file=sys.stderr, flush=True)
        return False
    return folder


def _leave_stopped(rt, shutdown) -> int:
    """After a stop at a round boundary: the clients leave first (exit 0), the server
    last with STOPPED, the job's status. Launchers that end a whole job the moment one
    task exits non-zero (srun --kill-on-bad-exit, torchrun) would otherwise kill the
    other ranks mid-exit and report their signal instead of the stop."""
    from datetime import timedelta

    from fedmpi import signals
    from fedmpi.quick_exit import leave_ordinarily

    leave_ordinarily()  # Hydra, once signalled, needs its ranks to leave the slow way (fedmpi/quick_exit.py)
    rt.any_rank(True)  # every rank has done its part of the stop
    if not rt.is_server:
        shutdown()
        if rt.store is not None:
            rt.store.set(f"fedmpi/left/{rt.rank}", "1")
        return 0
    if rt.store is not None:
        try:
            rt.store.wait([f"fedmpi/left/{r}" for r in range(1, rt.world_size)], timedelta(seconds=30))
        except RuntimeError:
            pass  # a client that never said so: leave anyway
        time.sleep(1.0)  # while their interpreters finish exiting
    shutdown()
    return signals.STOPPED


def _release(folder) -> None:
    if folder:
        folder.release()
