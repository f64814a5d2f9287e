"""What a rank knows about the job once it has started: who it is, where it computes,
and where the tensors it sends travel from."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # mpi | slurm | torchrun
    backend: str
    # Compute: where the model, its batches and every tensor handed to the Link live.
    device: torch.device
    comm: Any = None  # mpi4py communicator when launched by MPI
    # Where the Link stages tensors for the backend: the GPU itself under NCCL, the
    # CPU under gloo (also when compute is on a GPU that several ranks share).
    transport_device: torch.device | None = None
    plan: Any = None  # the job's placement (fedmpi.runtime.placement.Plan), when computed
    store: Any = None  # the rendezvous store (torch.distributed.Store), for control messages

    def __post_init__(self) -> None:
        if self.transport_device is None:
            self.transport_device = self.device

    @property
    def is_server(self) -> bool:
        return self.rank == 0

    @property
    def num_client_ranks(self) -> int:
        return self.world_size - 1

    @property
    def staged(self) -> bool:
        """True when the Link copies tensors between compute and transport devices."""
        return self.transport_device != self.device

    def rank_of_client(self, client: int) -> int:
        """Clients are dealt round-robin over ranks 1..N-1."""
        return 1 + client % self.num_client_ranks

    def clients_here(self, clients: list[int]) -> list[int]:
        return [c for c in clients if self.rank_of_client(c) == self.rank]

    def any_rank(self, flag: bool) -> bool:
        """Collective: True on every rank when `flag` is True on any (control plane,
        uncharged), so every rank takes the same decision at the same point."""
        t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=self.transport_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def abort(self, code: int = 1) -> None:
        """Bring the whole job down now, from any rank, without waiting on peers."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            self.comm.Abort(code)
        os._exit(code)
