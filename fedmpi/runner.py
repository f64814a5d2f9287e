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


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set federation.rounds=3")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")


def main(argv: list[str]) -> int:
    """`fedmpi run CONFIG [--set k=v ...] [--resume]` on one rank."""
    p = argparse.ArgumentParser(prog="fedmpi run", description="Run an experiment (one rank of the job).")
    add_experiment_args(p)
    args = p.parse_args(argv)
    try:
        return run_rank(args.config, args.overrides, args.resume)
    except ConfigError as exc:
        report_error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


def run_rank(config: str, overrides: list[str], resume: bool) -> int:
    from fedmpi.runtime import detect_launcher

    cfg = load_config(config, overrides)
    if detect_launcher() == "single":
        raise ConfigError("fedmpi needs at least 2 ranks (1 server + clients); start it with "
                          f"'fedmpi launch -n 3 {config}', mpirun -n 3, srun -n 3 or torchrun")
    from fedmpi.experiment import prepare, run
    from fedmpi.runtime import init_runtime, shutdown

    prep = prepare(cfg)
    rt = init_runtime(cfg.runtime)
    try:
        summary = run(cfg, rt, prep, resume=resume)
        if summary is not None:
            from fedmpi.console import print_summary

            print_summary(summary, cfg.run_dir)
    except ConfigError as exc:
        # Bad input found after start-up: every rank usually finds it; the server
        # reports it, others only if it cannot.
        if not rt.is_server:
            time.sleep(2.0)
        print(f"fedmpi: error: {exc}", file=sys.stderr, flush=True)
        time.sleep(0.5)  # let the launcher forward the line before MPI_Abort tears the job down
        rt.abort(2)
    except BaseException:
        sys.stderr.write(f"fedmpi: rank {rt.rank} failed; ending the job\n{traceback.format_exc()}")
        rt.abort(1)
    shutdown()
    return 0
