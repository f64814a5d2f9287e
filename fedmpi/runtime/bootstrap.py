"""Process-group bootstrap: MPI (mpi4py), Slurm or torchrun -> torch.distributed.

Rank 0 is the server; ranks 1..N-1 host the clients. The launcher is
detected from the environment; the rendezvous store is created here so that
a job started by ``mpirun`` needs no MASTER_ADDR/PORT from the user. Before
the process group exists, every rank reports its host and visible GPUs
through the store and rank 0 computes one placement for the whole job
(fedmpi.runtime.placement), so the backend is agreed and no two ranks are
put on one GPU under NCCL.

Everything that reads the environment is a pure function of an env mapping,
so multi-node layouts (Slurm's SLURM_* on 2 nodes x 4 GPUs, MPI local ranks)
are unit-tested without a cluster.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch
import torch.distributed as dist

from fedmpi.errors import ConfigError
from fedmpi.runtime.placement import Plan, Seat, plan
from fedmpi.runtime.runtime import Runtime

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
_PLAN_KEY = "fedmpi/placement"


def detect_launcher(env: Mapping[str, str] | None = None) -> str:
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


def expand_tasks_per_node(spec: str) -> list[int]:
    """Slurm's compressed tasks-per-node list, one count per node: "4(x2),3" -> [4, 4, 3]."""
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ConfigError(f"cannot read Slurm's tasks per node '{spec}'")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


@dataclass(frozen=True)
class Endpoint:
    """Where this rank sits in the job and where the rendezvous store is."""
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str
    host: str
    addr: str | None  # None: rank 0 picks it (MPI: announced over the communicator)
    port: int


def slurm_endpoint(env: Mapping[str, str]) -> Endpoint:
    rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    if world > 1 and "SLURM_STEP_ID" not in env:
        # The batch script itself carries SLURM_NTASKS but is one process:
        # it would wait forever for peers that srun never started.
        raise ConfigError("inside an sbatch script, start the ranks with "
                          "'srun python -m fedmpi run ...' (see slurm/run.sbatch)")
    local_rank = int(env.get("SLURM_LOCALID", 0))
    per_node = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
                                     or str(world))
    node = int(env.get("SLURM_NODEID", 0))
    local_world = per_node[node] if node < len(per_node) else per_node[-1]
    addr = env.get("MASTER_ADDR") or first_slurm_host(
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1")
    # One port per job step, so two steps of one allocation do not collide.
    port = int(env.get("MASTER_PORT") or 20000 + (int(env.get("SLURM_JOB_ID", 0)) * 7
                                                 + int(env.get("SLURM_STEP_ID", 0) or 0)) % 20000)
    host = env.get("SLURMD_NODENAME") or socket.gethostname()
    return Endpoint(rank, world, local_rank, local_world, "slurm", host, addr, port)


def torchrun_endpoint(env: Mapping[str, str]) -> Endpoint:
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    return Endpoint(rank, world, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", world)),
                    "torchrun", socket.gethostname(), env["MASTER_ADDR"], int(env.get("MASTER_PORT", 29500)))


def local_layout(hosts: list[str], rank: int) -> tuple[int, int]:
    """(local rank, ranks on this host) from every rank's host name, as MPI's
    shared-memory split numbers them: ranks in order, per host."""
    host = hosts[rank]
    return sum(1 for h in hosts[:rank] if h == host), sum(1 for h in hosts if h == host)


def visible_gpus() -> tuple[str, ...]:
    """Physical ids of the GPUs this process sees, in its cuda index order: two
    ranks that see the same GPU under different indices (or one each through
    CUDA_VISIBLE_DEVICES) are told apart correctly."""
    if not torch.cuda.is_available():
        return ()
    listed = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    out = []
    for i in range(torch.cuda.device_count()):
        try:
            out.append(f"GPU-{torch.cuda.get_device_properties(i).uuid}")
        except (AttributeError, RuntimeError):
            out.append(f"gpu{listed[i] if i < len(listed) else i}")
    return tuple(out)


def agree_on_plan(store: dist.Store, seat: Seat, world: int, backend: str, device: str) -> Plan:
    """Every rank's seat to rank 0 through the store, one plan back (2N store
    operations, not N^2). A request that cannot be honoured is the same
    ConfigError on every rank."""
    if seat.rank == 0:
        seats = [seat] + [Seat.from_json(json.loads(store.get(f"fedmpi/seat/{r}"))) for r in range(1, world)]
        try:
            result = {"plan": plan(seats, backend, device).to_json()}
        except ConfigError as exc:
            result = {"error": str(exc)}
        store.set(_PLAN_KEY, json.dumps(result))
    else:
        store.set(f"fedmpi/seat/{seat.rank}", json.dumps(seat.to_json()))
        result = json.loads(store.get(_PLAN_KEY))
    if "error" in result:
        raise ConfigError(result["error"])
    return Plan.from_json(result["plan"])


def _set_threads(cfg, local_world: int) -> None:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    torch.set_num_threads(cfg.threads or max(1, cores // max(1, local_world)))


def _start(cfg, ep: Endpoint, store: dist.Store, comm=None) -> Runtime:
    """Placement, then the process group, on the agreed backend and devices."""
    requested = getattr(cfg, "device", "auto")
    the_plan = agree_on_plan(store, Seat(ep.rank, ep.host, ep.local_rank, visible_gpus()), ep.world_size,
                             cfg.backend, requested)
    mine = the_plan.of(ep.rank)
    device, transport = torch.device(mine.device), torch.device(mine.transport)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if ep.rank == 0:
        print(the_plan.describe(), flush=True)
    timeout = timedelta(seconds=cfg.timeout_s)
    dist.init_process_group(the_plan.backend, store=store, rank=ep.rank, world_size=ep.world_size,
                            timeout=timeout)
    _set_threads(cfg, ep.local_world_size)
    return Runtime(ep.rank, ep.world_size, ep.local_rank, ep.local_world_size, ep.launcher, the_plan.backend,
                   device, comm, transport, the_plan, store)


def _init_mpi(cfg) -> Runtime:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    local_rank, local_world = local_layout(hosts, rank)
    timeout = timedelta(seconds=cfg.timeout_s)
    if rank == 0:
        addr = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else socket.getfqdn())
        store = dist.TCPStore(addr, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
        comm.bcast((addr, store.port), root=0)
    else:
        addr, port = comm.bcast(None, root=0)
        store = dist.TCPStore(addr, port, world, is_master=False, timeout=timeout)
    ep = Endpoint(rank, world, local_rank, local_world, "mpi", hosts[rank], addr, store.port)
    return _start(cfg, ep, store, comm)


def _init_env(cfg, launcher: str) -> Runtime:
    ep = slurm_endpoint(os.environ) if launcher == "slurm" else torchrun_endpoint(os.environ)
    timeout = timedelta(seconds=cfg.timeout_s)
    store = dist.TCPStore(ep.addr, ep.port, ep.world_size, is_master=ep.rank == 0, timeout=timeout)
    return _start(cfg, ep, store)


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
