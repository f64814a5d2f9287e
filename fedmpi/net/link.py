"""The Link: the one path for server<->client traffic.

It (1) moves tensors with torch.distributed, (2) charges each message to the
emulated uplink/downlink of the client it belongs to, and (3) records it in
the server's Ledger. Algorithms never call torch.distributed themselves.

Collective methods (`broadcast`, `reduce`, `barrier`, `share`) are called on
every rank; point-to-point methods pair a client-side and a server-side call.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from fedmpi.metering.ledger import DOWN, UP, Ledger
from fedmpi.net.clock import RealtimeClock, VirtualClock
from fedmpi.net.flat import payload_bytes
from fedmpi.net.profiles import LinkProfile
from fedmpi.runtime import Runtime

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.uint8, torch.bool, torch.int8]
_HEADER = 12  # dtype, ndim, send time (us), shape[<= 9]


class Link:
    def __init__(self, rt: Runtime, profiles: Sequence[LinkProfile], clock: VirtualClock | RealtimeClock,
                 ledger: Ledger | None = None) -> None:
        self.rt = rt
        self.profiles = list(profiles)
        self.clock = clock
        self.ledger = ledger if rt.is_server else None
        self.round = 0

    # -- accounting -------------------------------------------------------
    def seconds(self, client: int, direction: str, nbytes: int) -> float:
        return self.profiles[client].seconds(nbytes, direction)

    def charge(self, client: int, direction: str, kind: str, nbytes: int) -> float:
        """Record one emulated message on the server; returns its emulated seconds."""
        secs = self.seconds(client, direction, nbytes)
        if self.ledger is not None:
            self.ledger.add(self.round, client, direction, kind, bytes=nbytes, seconds=secs)
        return secs

    def _hold(self, clients: Sequence[int], direction: str, nbytes: int, since: float) -> None:
        if not self.clock.realtime or not clients:
            return
        mine = clients if self.rt.is_server else self.rt.clients_here(list(clients))
        if mine:
            self.clock.hold(max(self.seconds(c, direction, nbytes) for c in mine), since)

    # -- collectives ------------------------------------------------------
    def broadcast(self, tensor: torch.Tensor, *, kind: str, clients: Sequence[int]) -> torch.Tensor:
        """Server -> every listed client: one download of the payload each."""
        since = time.time()
        dist.broadcast(tensor, src=0)
        nbytes = payload_bytes(tensor)
        if self.rt.is_server:
            for c in clients:
                self.charge(c, DOWN, kind, nbytes)
            self.ledger.add_transport(nbytes * (self.rt.world_size - 1))
        self._hold(clients, DOWN, nbytes, since)
        return tensor

    def reduce(self, tensor: torch.Tensor, *, kind: str, bytes_per_client: int,
               clients: Sequence[int] | Callable[[torch.Tensor], Sequence[int]]) -> torch.Tensor:
        """Every listed client uploads `bytes_per_client`; the cluster sums the
        ranks' partial sums onto the server (one collective per round).

        `clients` may be a function of the reduced tensor, for when only the
        server learns who arrived (stragglers decided on their own rank)."""
        since = time.time()
        self.sum_to_server(tensor)
        if self.rt.is_server:
            arrived = list(clients(tensor) if callable(clients) else clients)
            for c in arrived:
                self.charge(c, UP, kind, bytes_per_client)
            self.ledger.add_transport(payload_bytes(tensor) * (self.rt.world_size - 1))
            self._hold(arrived, UP, bytes_per_client, since)
        return tensor

    def sum_to_server(self, tensor: torch.Tensor) -> None:
        """The cluster's sum of every rank's `tensor`, in place on the server.
        A reduce, not an all_reduce: with gloo on 3 ranks all_reduce was 17%
        faster, but 19% slower on 5 ranks sharing 2 cores (bench/aggregation.py)."""
        dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)

    def collect(self, tensor: torch.Tensor) -> torch.Tensor:
        """Control plane (uncharged): sum a small tensor onto the server."""
        dist.reduce(tensor, dst=0, op=dist.ReduceOp.SUM)
        return tensor

    def share(self, obj: Any) -> Any:
        """Control plane (uncharged): the server's small Python object to every rank."""
        box = [obj if self.rt.is_server else None]
        dist.broadcast_object_list(box, src=0, device=self.rt.device if self.rt.backend == "nccl" else None)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Control plane (uncharged): every rank's small object, on the server."""
        out = [None] * self.rt.world_size if self.rt.is_server else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        dist.barrier()

    # -- point to point (split learning) -----------------------------------
    def _send(self, tensor: torch.Tensor, dst: int) -> None:
        tensor = tensor.detach().contiguous().to(self.rt.device)
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.rt.device)
        header[0] = _DTYPES.index(tensor.dtype)
        header[1] = tensor.dim()
        header[2] = int(time.time() * 1e6)
        header[3:3 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        dist.send(header, dst)
        dist.send(tensor, dst)

    def _recv(self, src: int) -> tuple[torch.Tensor, float]:
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.rt.device)
        dist.recv(header, src)
        h = header.tolist()
        shape = h[3:3 + h[1]]
        out = torch.empty(shape, dtype=_DTYPES[h[0]], device=self.rt.device)
        dist.recv(out, src)
        return out, h[2] / 1e6

    def to_server(self, tensor: torch.Tensor, *, client: int, kind: str) -> None:
        """Client side of an upload; the server records it in `from_client`."""
        self._send(tensor, 0)

    def from_client(self, *, client: int, kind: str) -> torch.Tensor:
        out, sent = self._recv(self.rt.rank_of_client(client))
        nbytes = payload_bytes(out)
        self.clock.hold(self.charge(client, UP, kind, nbytes), sent)
        if self.ledger is not None:
            self.ledger.add_transport(nbytes)
        return out

    def to_client(self, tensor: torch.Tensor, *, client: int, kind: str) -> None:
        """Server side of a download: charged here, held at the receiver."""
        self.charge(client, DOWN, kind, payload_bytes(tensor))
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(tensor))
        self._send(tensor, self.rt.rank_of_client(client))

    def from_server(self, *, client: int, kind: str) -> torch.Tensor:
        out, sent = self._recv(0)
        self.clock.hold(self.seconds(client, DOWN, payload_bytes(out)), sent)
        return out
