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

import math
import time
from collections import defaultdict
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from fedmpi.errors import ConfigError
from fedmpi.metering.ledger import DOWN, LOCAL, SERVER, UP, Ledger
from fedmpi.net.clock import RealtimeClock, VirtualClock
from fedmpi.net.codec import CodecKey, Identity, Transmitted, Transport
from fedmpi.net.fairshare import finish_times
from fedmpi.net.flat import payload_bytes
from fedmpi.net.profiles import LinkProfile
from fedmpi.runtime import Runtime

_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
           torch.uint8, torch.bool, torch.int8]
_HEADER = 13  # dtype, ndim, send time (us), encoded bytes, shape[<= 9]


class Link:
    def __init__(self, rt: Runtime, profiles: Sequence[LinkProfile], clock: VirtualClock | RealtimeClock,
                 speeds: Sequence[float], server_speed: float, transport: Transport | None = None,
                 seed: int = 0, ledger: Ledger | None = None, server_up_mbps: float | None = None,
                 server_down_mbps: float | None = None) -> None:
        self.rt = rt
        # The server's link (bit/s): downloads leave through its uplink, uploads land on its downlink.
        self.server_out = math.inf if server_up_mbps is None else server_up_mbps * 1e6
        self.server_in = math.inf if server_down_mbps is None else server_down_mbps * 1e6
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
        """One message alone on the links: latency + bytes·8 / min(client link, server link)."""
        p = self.profiles[client]
        server = self.server_in if direction == UP else self.server_out
        if math.isinf(server):
            return p.seconds(nbytes, direction)
        own = (p.up_mbps if direction == UP else p.down_mbps) * 1e6
        return p.latency_ms / 1e3 + nbytes * 8.0 / min(own, server)

    def shared_seconds(self, direction: str, transfers: dict[int, tuple[float, int]]) -> dict[int, float]:
        """client -> seconds of its message (latency + transfer) when all of `transfers`
        (client -> (start, bytes)) share the server's link (net/fairshare.py)."""
        server = self.server_in if direction == UP else self.server_out
        clients = list(transfers)
        caps = [(self.profiles[c].up_mbps if direction == UP else self.profiles[c].down_mbps) * 1e6 for c in clients]
        starts = [transfers[c][0] for c in clients]
        ends = finish_times(starts, [transfers[c][1] * 8.0 for c in clients], caps, server)
        return {c: self.profiles[c].latency_ms / 1e3 + (e - s) for c, s, e in zip(clients, starts, ends)}

    def charge(self, client: int, direction: str, kind: str, nbytes: int, raw_bytes: int | None = None,
               seconds: float | None = None) -> float:
        """One emulated message: the client's time, and a Ledger row on the server
        (with the message's size before its codec, when the codec changed it)."""
        secs = self.seconds(client, direction, nbytes) if seconds is None else seconds
        self._elapsed[client] += secs
        if self.ledger is not None:
            self.ledger.add(self.round, client, direction, kind, bytes=nbytes, seconds=secs, raw_bytes=raw_bytes)
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
        sent = codec.transmit(tensor, CodecKey(self.seed, self.round, client, kind), reference=reference,
                              state=state)
        sent.raw_bytes = payload_bytes(tensor)
        return sent

    def _check_device(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.rt.device:
            raise ConfigError(f"the Link takes tensors on {self.rt.device} (this rank's compute device); "
                              f"got one on {tensor.device}")

    # -- staging: callers hand the Link compute-device tensors; the backend moves
    # them on the transport device (the CPU under gloo with CPU staging) ------------
    def _to_wire(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.rt.transport_device) if self.rt.staged else tensor

    def _from_wire(self, wire: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """`wire`'s contents back in the compute-device `tensor` (in place)."""
        if wire is not tensor:
            tensor.copy_(wire)
        return tensor

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
        raw = payload_bytes(payload)
        wire = self._to_wire(payload)
        dist.broadcast(wire, src=0)
        if not self.rt.is_server:
            self._from_wire(wire, payload)
        if self._lossless(DOWN, kind):
            nbytes = payload_bytes(payload)
        else:  # the encoded size travels with the message, as a wire format's length field does
            nbytes = self.share(nbytes)
        self.charge_download(kind, {c: nbytes for c in clients}, raw)
        if self.ledger is not None:
            self.ledger.add_transport(raw * (self.rt.world_size - 1))
        self._hold(clients, DOWN, nbytes, since)
        return payload

    def broadcast_payload(self, payload: torch.Tensor) -> None:
        """Collective: the server's already-encoded-and-decoded tensor to every rank
        (charged apart, by `charge_download`)."""
        self._check_device(payload)
        dist.broadcast(payload, src=0)
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(payload) * (self.rt.world_size - 1))

    def charge_download(self, kind: str, per_client: dict[int, int], raw: int | None = None) -> None:
        """Every rank: each listed client's download (on the server, Ledger rows; on a client's
        rank, its running time)."""
        shared = None
        if not math.isinf(self.server_out) and per_client:  # every download leaves the server at once
            shared = self.shared_seconds(DOWN, {c: (0.0, n) for c, n in per_client.items()})
        mine = per_client if self.rt.is_server else {c: per_client[c] for c in self.rt.clients_here(list(per_client))}
        for c, nbytes in mine.items():
            self.charge(c, DOWN, kind, nbytes, raw, None if shared is None else shared[c])

    def _lossless(self, direction: str, kind: str) -> bool:
        return self.transport.codec(direction, kind).lossless

    def reduce(self, tensor: torch.Tensor, *, kind: str,
               uploads: dict[str, dict[int, int]] | Callable[[torch.Tensor], dict[str, dict[int, int]]],
               raw: dict[str, int] | None = None, transfer: dict[int, float] | None = None) -> torch.Tensor:
        """Every arrived client uploads its encoded bytes (`uploads`: kind -> {client: bytes});
        the cluster sums the ranks' partial sums onto the server (one collective per round).

        `uploads` may be a function of the reduced tensor, for when only the
        server learns who arrived (stragglers decided on their own rank)."""
        since = time.time()
        self.sum_to_server(tensor)
        if self.rt.is_server:
            self.charge_uploads(uploads(tensor) if callable(uploads) else uploads, raw, since, transfer)
            self.ledger.add_transport(payload_bytes(tensor) * (self.rt.world_size - 1))
        return tensor

    def charge_uploads(self, uploads: dict[str, dict[int, int]], raw: dict[str, int] | None = None,
                       since: float | None = None, transfer: dict[int, float] | None = None) -> None:
        """Server: charge each client's upload of each kind (in kind, then client order);
        `raw`: each kind's size before its codec; `transfer`: client -> seconds of its
        whole upload on a shared server link, split over its kinds by bytes."""
        per_client: dict[int, int] = defaultdict(int)
        for clients in uploads.values():
            for c, nbytes in clients.items():
                per_client[c] += nbytes
        for kind, clients in uploads.items():
            for c, nbytes in clients.items():
                secs = None
                if transfer is not None:
                    lat = self.profiles[c].latency_ms / 1e3
                    secs = lat + (transfer[c] - lat) * (nbytes / per_client[c] if per_client[c] else 0.0)
                self.charge(c, UP, kind, nbytes, (raw or {}).get(kind), secs)
        if self.clock.realtime and per_client and since is not None:
            self.clock.hold(max(self.seconds(c, UP, n) for c, n in per_client.items()), since)

    def sum_to_server(self, tensor: torch.Tensor) -> None:
        """The cluster's sum of every rank's `tensor`, in place on the server.
        A reduce, not an all_reduce: with gloo on 3 ranks all_reduce was 17%
        faster, but 19% slower on 5 ranks sharing 2 cores (bench/aggregation.py)."""
        wire = self._to_wire(tensor)
        dist.reduce(wire, dst=0, op=dist.ReduceOp.SUM)
        if self.rt.is_server:
            self._from_wire(wire, tensor)

    def collect(self, tensor: torch.Tensor) -> torch.Tensor:
        """Control plane (uncharged): sum a small tensor onto the server."""
        self.sum_to_server(tensor)
        return tensor

    def share(self, obj: Any) -> Any:
        """Control plane (uncharged): the server's small Python object to every rank."""
        box = [obj if self.rt.is_server else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device)
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
        tensor = self._to_wire(tensor)
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.rt.transport_device)
        header[0] = _DTYPES.index(tensor.dtype)
        header[1] = tensor.dim()
        header[2] = int(time.time() * 1e6)
        header[3] = nbytes
        header[4:4 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        dist.send(header, dst)
        dist.send(tensor, dst)

    def _recv(self, src: int) -> tuple[torch.Tensor, float, int]:
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.rt.transport_device)
        dist.recv(header, src)
        h = header.tolist()
        shape = h[4:4 + h[1]]
        out = torch.empty(shape, dtype=_DTYPES[h[0]], device=self.rt.transport_device)
        dist.recv(out, src)
        return out.to(self.rt.device), h[2] / 1e6, h[3]

    def to_server(self, tensor: torch.Tensor, *, client: int, kind: str) -> None:
        """Client side of an upload: encoded, charged to the client's time; the
        server records the row in `from_client`."""
        sent = self.encode(UP, kind, tensor, client)
        self._elapsed[client] += self.seconds(client, UP, sent.nbytes)
        self._send(sent.received, 0, sent.nbytes)

    def from_client(self, *, client: int, kind: str) -> torch.Tensor:
        out, sent, nbytes = self._recv(self.rt.rank_of_client(client))
        self.clock.hold(self.charge(client, UP, kind, nbytes, payload_bytes(out)), sent)
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(out))
        return out

    def to_client(self, tensor: torch.Tensor, *, client: int, kind: str) -> None:
        """Server side of a download: encoded and charged here, held at the receiver."""
        sent = self.encode(DOWN, kind, tensor, client)
        self.charge(client, DOWN, kind, sent.nbytes, sent.raw_bytes)
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
    def send_tensor(self, tensor: torch.Tensor, dst: int) -> None:
        """A tensor to rank `dst`, uncharged (e.g. an update a robust aggregator needs whole)."""
        self._send(tensor, dst, 0)

    def recv_tensor(self, src: int) -> torch.Tensor:
        out = self._recv(src)[0]
        if self.ledger is not None:
            self.ledger.add_transport(payload_bytes(out))
        return out

    def send_state(self, state: dict[str, torch.Tensor] | None, dst: int) -> None:
        """A client's named tensors to rank `dst`, uncharged: the names as a small pickle,
        each tensor as itself. Pickling a 90 MB residual costs ~0.7 s a hop here against
        ~0.05 s for the raw tensor (bench/NOTES.md), and full-FT error feedback moves
        two such hops per sampled client per round."""
        names = None if state is None else list(state)
        self.send_object(names, dst)
        for name in names or ():
            self._send(state[name], dst, 0)

    def recv_state(self, src: int) -> dict[str, torch.Tensor] | None:
        """The receiver's own fresh tensors (nothing aliases the sender's)."""
        names = self.recv_object(src)
        if names is None:
            return None
        return {name: self._recv(src)[0] for name in names}

    def send_object(self, obj: Any, dst: int) -> None:
        """A small picklable object (e.g. a client's state) to rank `dst`, uncharged."""
        dist.send_object_list([obj], dst=dst, device=self._object_device)

    def recv_object(self, src: int) -> Any:
        box = [None]
        dist.recv_object_list(box, src=src, device=self._object_device)
        return box[0]

    @property
    def _object_device(self) -> torch.device | None:
        """Pickled objects travel as tensors on the transport device under NCCL."""
        return self.rt.transport_device if self.rt.backend == "nccl" else None
