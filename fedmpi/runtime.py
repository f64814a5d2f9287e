"""Process-group bootstrap: MPI (mpi4py), Slurm or torchrun -> torch.distributed.

Rank 0 is the server; ranks 1..N-1 host the clients. The launcher is
detected from the environment; the rendezvous store is created here so that
a job started by ``mpirun`` needs no MASTER_ADDR/PORT from the user.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fedmpi.errors import ConfigError

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # mpi | slurm | torchrun
    backend: str
    device: torch.device
    comm: Any = None  # mpi4py communicator when launched by MPI
    placement: dict[int, int] | None = None  # this round's client -> rank, set by the engine (engine/placement.py)

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    @property
    def num_client_ranks(self) -> int:
        return self.world_size - 1

    def rank_of_client(self, client: int) -> int:
        """The round's placement; clients outside it are dealt round-robin over ranks 1..N-1."""
        if self.placement is not None and client in self.placement:
            return self.placement[client]
        return 1 + client % self.num_client_ranks

    def clients_here(self, clients: list[int]) -> list[int]:
        return [c for c in clients if self.rank_of_client(c) == self.rank]

    def abort(self, code: int = 1) -> None:
        """Bring the whole job down now, from any rank, without waiting on peers."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)
        os._exit(code)


def detect_launcher(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ if env is None else env)
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env):
        return "torchrun"
    if any(v in env for v in _MPI_RANK_VARS):
        return "mpi"
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return "slurm"
    return "single"


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm nodelist ("node[03-05,9],gpu1" -> "node03")."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def _pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def _device(backend: str, local_rank: int) -> torch.device:
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _set_threads(cfg, local_world: int) -> None:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    torch.set_num_threads(cfg.threads or max(1, cores // max(1, local_world)))


def _init_mpi(cfg) -> Runtime:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_world = local.Get_rank(), local.Get_size()
    hosts = comm.allgather(socket.gethostname())
    backend = _pick_backend(cfg.backend)
    if cfg.backend == "auto":
        # NCCL only when every rank has a GPU.
        backend = "nccl" if comm.allreduce(int(backend == "nccl"), op=MPI.MIN) else "gloo"
    timeout = timedelta(seconds=cfg.timeout_s)
    if rank == 0:
        addr = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else socket.getfqdn())
        store = dist.TCPStore(addr, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        comm.bcast((addr, store.port), root=0)
    else:
        addr, port = comm.bcast(None, root=0)
        store = dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    _set_threads(cfg, local_world)
    return Runtime(rank, world, local_rank, local_world, "mpi", backend, _device(backend, local_rank), comm)


def _init_env(cfg, launcher: str) -> Runtime:
    env = os.environ
    if launcher == "slurm":
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        if world > 1 and "SLURM_STEP_ID" not in env:
            # The batch script itself carries SLURM_NTASKS but is one process:
            # it would wait forever for peers that srun never started.
            raise ConfigError("inside an sbatch script, start the ranks with "
                              "'srun python -m fedmpi run ...' (see slurm/run.sbatch)")
        local_rank = int(env.get("SLURM_LOCALID", 0))
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or str(world)
        local_world = int(re.match(r"\d+", per_node).group(0))
        addr = env.get("MASTER_ADDR") or first_slurm_host(
            env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1")
        # One port per job step, so two steps of one allocation do not collide.
        port = int(env.get("MASTER_PORT") or 20000 + (int(env.get("SLURM_JOB_ID", 0)) * 7
                                                     + int(env.get("SLURM_STEP_ID", 0) or 0)) % 20000)
    else:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
        addr, port = env["MASTER_ADDR"], int(env.get("MASTER_PORT", 29500))
    backend = _pick_backend(cfg.backend)
    timeout = timedelta(seconds=cfg.timeout_s)
    store = dist.TCPStore(addr, port, world, is_master=rank == 0, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    _set_threads(cfg, local_world)
    return Runtime(rank, world, local_rank, local_world, launcher, backend, _device(backend, local_rank))


def init_runtime(cfg) -> Runtime:
    launcher = detect_launcher()
    if launcher == "single":
        raise ConfigError(
            "fedmpi needs at least 2 ranks (1 server + clients); start it with "
            "'fedmpi launch -n 3 CONFIG', mpirun -n 3, srun -n 3 or torchrun --nproc-per-node 3")
    rt = _init_mpi(cfg) if launcher == "mpi" else _init_env(cfg, launcher)
    if rt.world_size < 2:
        raise ConfigError(f"fedmpi needs at least 2 ranks (1 server + clients), got {rt.world_size}")
    return rt


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
