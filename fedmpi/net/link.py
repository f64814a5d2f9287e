"""The Link: the one path for server<->client traffic, and the one accountant.

It (1) encodes each message with the direction's codec and moves it with
torch.distributed, (2) charges the encoded bytes to the emulated uplink or
downlink of the client it belongs to, and (3) records it in the server's
Ledger. Local compute is charged here too (`charge_compute`, `charge_server`),
so every emulated second of a round comes from one formula, on whichever rank
computes it: the server's Ledger rows, and each client's running time on the
rank that hosts it (`elapsed`, used for deadlines and over-selection).

Collective methods (`broadcast`, `reduce`, `barrier`, `share`, `gather`) are
called on every rank; point-to-point methods pair a client-side and a
server-side call. Algorithms never call torch.distributed themselves.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from fedmpi.errors import ConfigError
from fedmpi.metering.ledger import DOWN, LOCAL, SERVER, UP, Ledger
from fedmpi.net.clock import RealtimeClock, VirtualClock
from fedmpi.net.codec import CodecKey, Identity, Transmitted, Transport
from fedmpi.net.flat import payload_bytes
from fedmpi.net.profiles import LinkProfile
from fedmpi.runtime import Runtime

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.uint8, torch.bool, torch.int8]
_HEADER = 13  # dtype, ndim, send time (us), encoded bytes, shape[<= 9]


class Link:
    def __init__(self, rt: Runtime, profiles: Sequence[LinkProfile], clock: VirtualClock | RealtimeClock,
                 speeds: Sequence[float], server_speed: float, transport: Transport | None = None,
                 seed: int = 0, ledger: Ledger | None = None) -> None:
        self.rt = rt
        self.profiles = list(profiles)
        self.speeds = list(speeds)  # client device FLOP/s
        self.server_speed = server_speed
        self.clock = clock
        self.transport = transport or Transport(Identity(), Identity())
        self.seed = seed
        self.ledger = ledger if rt.is_server else None
        self.round = 0
        self._elapsed: dict[int, float] = defaultdict(float)

    # -- accounting -------------------------------------------------------
    def begin_round(self, rnd: int) -> None:
        self.round = rnd
        self._elapsed.clear()

    def elapsed(self, client: int) -> float:
        """Emulated seconds `client` has spent this round so far (on its own rank)."""
        return self._elapsed[client]

    def seconds(self, client: int, direction: str, nbytes: int) -> float:
        return self.profiles[client].seconds(nbytes, direction)

    def charge(self, client: int, direction: str, kind: str, nbytes: int) -> float:
        """One emulated message: the client's time, and a Ledger row on the server."""
        secs = self.seconds(client, direction, nbytes)
        self._elapsed[client] += secs
        if self.ledger is not None:
            self.ledger.add(self.round, client, direction, kind, bytes=nbytes, seconds=secs)
        return secs

    def charge_compute(self, client: int, flops: int, kind: str = "compute") -> float:
        """A client's local compute on its emulated device (kind `init` for one-off set-up work)."""
        secs = flops / self.speeds[client]
        self._elapsed[client] += secs
        if self.ledger is not None and flops > 0:
            self.ledger.add(self.round, client, LOCAL, kind, flops=int(flops), seconds=secs)
        return secs

    def charge_server(self, kind: str, flops: int) -> float:
        """The server's own compute (aggregation, split-learning body, distillation)."""
        secs = flops / self.server_speed
        if self.ledger is not None:
            self.ledger.add(self.round, -1, SERVER, kind, flops=int(flops), seconds=secs)
        return secs

    def encode(self, direction: str, kind: str, tensor: torch.Tensor, client: int,
               reference: torch.Tensor | None = None, state: dict | None = None) -> Transmitted:
        """What the receiver decodes from `tensor`, and the encoded bytes."""
        self._check_device(tensor)
        codec = self.transport.codec(direction, kind)
        return codec.transmit(tensor, CodecKey(self.seed, self.round, client, kind), reference=reference,
                              state=state)

    def _check_device(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.rt.device:
            raise ConfigError(f"the Link carries tensors on {self.rt.device} (this rank's transport device); "
                              f"got one on {tensor.device}")

    def _hold(self, clients: Sequence[int], direction: str, nbytes: int, since: float) -> None:
        if not self.clock.realtime or not clients:
            return
        mine = clients if self.rt.is_server else self.rt.clients_here(list(clients))
        if mine:
            self.clock.hold(max(self.seconds(c, direction, nbytes) for c in mine), since)

    # -- collectives ------------------------------------------------------
    def broadcast(self, tensor: torch.Tensor, *, kind: str, clients: Sequence[int]) -> torch.Tensor:
        """Server -> every listed client: the download codec's bytes each; returns
        what the clients decode (on the server too, in a fresh tensor if lossy)."""
        since = time.time()
        if self.rt.is_server:
            sent = self.encode(DOWN, kind, tensor, -1)
            payload, nbytes = sent.received, sent.nbytes
        else:
            payload, nbytes = tensor, None
        dist.broadcast(payload, src=0)
        if self._lossless(DOWN, kind):
            nbytes = payload_bytes(payload)
        else:  # the encoded size travels with the message, as a wire format's length field does
            nbytes = self.share(nbytes)
        mine = clients if self.rt.is_server else self.rt.clients_here(list(clients))
        for c in mine:
            self.charge(c, DOWN, kind, nbytes)
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(payload) * (self.rt.world_size - 1))
        self._hold(clients, DOWN, nbytes, since)
        return payload

    def _lossless(self, direction: str, kind: str) -> bool:
        return self.transport.codec(direction, kind).lossless

    def reduce(self, tensor: torch.Tensor, *, kind: str,
               uploads: dict[int, int] | Callable[[torch.Tensor], dict[int, int]]) -> torch.Tensor:
        """Every arrived client uploads its encoded bytes (`uploads`: client -> bytes);
        the cluster sums the ranks' partial sums onto the server (one collective per round).

        `uploads` may be a function of the reduced tensor, for when only the
        server learns who arrived (stragglers decided on their own rank)."""
        since = time.time()
        self.sum_to_server(tensor)
        if self.rt.is_server:
            arrived = uploads(tensor) if callable(uploads) else uploads
            for c, nbytes in arrived.items():
                self.charge(c, UP, kind, nbytes)
            self.ledger.add_transport(payload_bytes(tensor) * (self.rt.world_size - 1))
            if self.clock.realtime and arrived:
                self.clock.hold(max(self.seconds(c, UP, n) for c, n in arrived.items()), since)
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

    # -- point to point (split learning, per-client messages) ----------------
    def _send(self, tensor: torch.Tensor, dst: int, nbytes: int) -> None:
        tensor = tensor.detach().contiguous()
        self._check_device(tensor)
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.rt.device)
        header[0] = _DTYPES.index(tensor.dtype)
        header[1] = tensor.dim()
        header[2] = int(time.time() * 1e6)
        header[3] = nbytes
        header[4:4 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        dist.send(header, dst)
        dist.send(tensor, dst)

    def _recv(self, src: int) -> tuple[torch.Tensor, float, int]:
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.rt.device)
        dist.recv(header, src)
        h = header.tolist()
        shape = h[4:4 + h[1]]
        out = torch.empty(shape, dtype=_DTYPES[h[0]], device=self.rt.device)
        dist.recv(out, src)
        return out, h[2] / 1e6, h[3]

    def to_server(self, tensor: torch.Tensor, *, client: int, kind: str) -> None:
        """Client side of an upload: encoded, charged to the client's time; the
        server records the row in `from_client`."""
        sent = self.encode(UP, kind, tensor, client)
        self._elapsed[client] += self.seconds(client, UP, sent.nbytes)
        self._send(sent.received, 0, sent.nbytes)

    def from_client(self, *, client: int, kind: str) -> torch.Tensor:
        out, sent, nbytes = self._recv(self.rt.rank_of_client(client))
        self.clock.hold(self.charge(client, UP, kind, nbytes), sent)
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(out))
        return out

    def to_client(self, tensor: torch.Tensor, *, client: int, kind: str) -> None:
        """Server side of a download: encoded and charged here, held at the receiver."""
        sent = self.encode(DOWN, kind, tensor, client)
        self.charge(client, DOWN, kind, sent.nbytes)
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(sent.received))
        self._send(sent.received, self.rt.rank_of_client(client), sent.nbytes)

    def from_server(self, *, client: int, kind: str) -> torch.Tensor:
        out, sent, nbytes = self._recv(0)
        secs = self.seconds(client, DOWN, nbytes)
        self._elapsed[client] += secs
        self.clock.hold(secs, sent)
        return out

    # -- control plane point to point (uncharged: the emulator's own traffic) --
    def send_object(self, obj: Any, dst: int) -> None:
        """A small picklable object (e.g. a client's state) to rank `dst`, uncharged."""
        dist.send_object_list([obj], dst=dst, device=self.rt.device if self.rt.backend == "nccl" else None)

    def recv_object(self, src: int) -> Any:
        box = [None]
        dist.recv_object_list(box, src=src, device=self.rt.device if self.rt.backend == "nccl" else None)
        return box[0]
